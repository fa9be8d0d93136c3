"""Atlas.gene_importance and Atlas.gene_consensus against plain numpy / pandas on the datasets' layers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scsig as sg
from scsig.atlas import _atlas_importance, _store
from scsig.atlas._reader import ShardReader

from .conftest import synthetic_adata


@pytest.fixture(scope="module")
def sources():
    """Three datasets: d1 has cells without a label, d2 measures only the first 40 of the 50 genes."""
    genes = [f"G{i}" for i in range(50)]
    d0 = synthetic_adata(40, genes, seed=0, prefix="a")
    d1 = synthetic_adata(35, genes, seed=1, prefix="b")
    d1.obs.loc[d1.obs_names[:3], "cell_type"] = np.nan
    d2 = synthetic_adata(30, genes[:40], seed=2, prefix="c")
    return genes, {"d0": d0, "d1": d1, "d2": d2}


@pytest.fixture(scope="module")
def atlas(sources, tmp_path_factory):
    genes, adatas = sources
    atlas = sg.Atlas.create(tmp_path_factory.mktemp("imp") / "atlas", gene_order=genes)
    for name, adata in adatas.items():
        atlas.add(adata, name=name, progress=False)
    return atlas


def reference(adatas: dict, genes: list[str], *, mask=None) -> pd.DataFrame:
    """The table computed in memory: per dataset and group, over the measured genes."""
    rows = []
    for name, adata in adatas.items():
        x = np.zeros((adata.n_obs, len(genes)))
        x[:, [genes.index(g) for g in adata.var_names]] = adata.layers["attr_ig"].toarray()
        measured = np.flatnonzero((x != 0).any(axis=0))
        labels = adata.obs["cell_type"]
        keep = np.ones(adata.n_obs, bool) if mask is None else mask(adata.obs)
        for group in labels.cat.categories:
            cells = (labels == group).to_numpy() & keep
            if not cells.any():
                continue
            block = x[cells][:, measured]
            mean = block.mean(axis=0)
            order = np.lexsort((np.arange(measured.size), -mean))
            rank = np.empty(measured.size, np.int64)
            rank[order] = np.arange(1, measured.size + 1)
            for j, g in enumerate(measured):
                rows.append((name, group, genes[g], mean[j], (block[:, j] != 0).mean(), rank[j], int(cells.sum())))
    cols = ["dataset", "group", "gene", "mean_attribution", "frac_cells", "rank", "n_cells"]
    return pd.DataFrame(rows, columns=cols)


def compare(table: pd.DataFrame, want: pd.DataFrame) -> None:
    got = table.astype({"dataset": str, "group": str, "gene": str}).set_index(["dataset", "group", "gene"])
    want = want.set_index(["dataset", "group", "gene"])
    assert sorted(got.index) == sorted(want.index)
    got = got.loc[want.index]
    np.testing.assert_allclose(got["mean_attribution"], want["mean_attribution"], rtol=1e-6)
    np.testing.assert_allclose(got["frac_cells"], want["frac_cells"], rtol=0, atol=0)
    np.testing.assert_array_equal(got["rank"], want["rank"])
    np.testing.assert_array_equal(got["n_cells"], want["n_cells"])


def test_matches_numpy(atlas, sources):
    genes, adatas = sources
    with pytest.warns(UserWarning, match=r"Cells without a 'cell_type' label \(NaN\) are left out: 3 in 'd1'"):
        table = atlas.gene_importance("cell_type", progress=False)
    compare(table, reference(adatas, genes))
    # d2 does not measure G40..G49: no rows there (not ranked last), 40 genes ranked per group
    d2 = table[table["dataset"] == "d2"]
    assert set(d2["gene"].astype(str)) == set(genes[:40])
    assert table.attrs["scsig"]["measured"] == {"d0": 50, "d1": 50, "d2": 40}
    assert table.attrs["scsig"]["unlabelled"] == {"d0": 0, "d1": 3, "d2": 0}
    # sorted by dataset, group and rank
    key = table[["dataset", "group"]].apply(lambda c: c.cat.codes).to_numpy()
    assert (np.diff(key[:, 0]) >= 0).all()
    assert list(table["dataset"].cat.categories) == ["d0", "d1", "d2"]


def test_filter_groups_genes_and_tasks(atlas, sources, monkeypatch):
    genes, adatas = sources
    kw = {"obs_filter": "sample != 's1'", "progress": False}
    with pytest.warns(UserWarning, match="left out"):
        full = atlas.gene_importance("cell_type", **kw)
    compare(full, reference(adatas, genes, mask=lambda obs: (obs["sample"] != "s1").to_numpy()))
    # several gene-range tasks per dataset give the same table
    monkeypatch.setattr(_atlas_importance, "GENES_PER_TASK", 7)
    with pytest.warns(UserWarning, match="left out"):
        split = atlas.gene_importance("cell_type", **kw)
    pd.testing.assert_frame_equal(split, full)
    sub = atlas.gene_importance("cell_type", groups="T", genes=["G45", "G3", "G1"], datasets=["d0", "d2"], **kw)
    assert set(sub["group"].astype(str)) == {"T"}
    assert sub.groupby("dataset", observed=True).size().to_dict() == {"d0": 3, "d2": 2}  # d2 lacks G45
    merged = sub.merge(full, on=["dataset", "group", "gene"], suffixes=("", "_all"))
    np.testing.assert_allclose(merged["mean_attribution"], merged["mean_attribution_all"], rtol=1e-12)
    # ranks are among the genes read: the order of their means
    for _, part in sub.groupby("dataset", observed=True):
        assert part.sort_values("mean_attribution", ascending=False)["rank"].tolist() == list(range(1, len(part) + 1))
    top = atlas.gene_importance("cell_type", datasets="d0", n_genes=4, progress=False)
    assert top.groupby("group", observed=True)["rank"].apply(list).tolist() == [[1, 2, 3, 4]] * 3


def test_bad_inputs(atlas):
    with pytest.raises(KeyError, match=r"no cell metadata column 'celltype'"):
        atlas.gene_importance("celltype", progress=False)
    with pytest.raises(KeyError, match=r"\['nope'\] are not in the atlas"):
        atlas.gene_importance("cell_type", datasets=["d0", "nope"], progress=False)
    with pytest.raises(KeyError, match=r"genes \['CD3E'\] are not in the atlas gene order"):
        atlas.gene_importance("cell_type", genes=["G1", "CD3E"], datasets="d0", progress=False)
    with pytest.raises(KeyError, match=r"groups \['Mono'\] have no cells"):
        atlas.gene_importance("cell_type", groups=["T", "Mono"], datasets="d0", progress=False)
    with pytest.raises(KeyError, match="names a column that no queried dataset has"):
        atlas.gene_importance("cell_type", obs_filter={"donor": "x"}, datasets="d0", progress=False)
    with pytest.raises(ValueError, match="n_genes must be a positive integer"):
        atlas.gene_importance("cell_type", n_genes=0, datasets="d0", progress=False)
    table = atlas.gene_importance("cell_type", datasets="d0", progress=False)
    with pytest.raises(ValueError, match="n_top must be a positive integer"):
        sg.Atlas.gene_consensus(table, n_top=0)
    with pytest.raises(ValueError, match="missing must be one of"):
        sg.Atlas.gene_consensus(table, missing="last")
    with pytest.raises(KeyError, match="lacks"):
        sg.Atlas.gene_consensus(table.drop(columns="rank"))
    with pytest.raises(ValueError, match="filtered after"):
        sg.Atlas.gene_consensus(table[table["rank"] <= 10])
    top = atlas.gene_importance("cell_type", datasets="d0", n_genes=10, progress=False)
    with pytest.raises(ValueError, match="keeps only the top 10 genes"):
        sg.Atlas.gene_consensus(top)


def test_dataset_without_the_column(tmp_path, genes):
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    atlas.add(synthetic_adata(20, genes, seed=1), name="untyped", obs_columns=["sample"], progress=False)
    typed = synthetic_adata(20, genes, seed=0)
    typed.obs["cell_type"] = typed.obs["cell_type"].cat.reorder_categories(["T", "NK", "B"])
    atlas.add(typed, name="typed", progress=False)
    with pytest.warns(UserWarning, match=r"\['untyped'\] have no 'cell_type' column and are left out"):
        table = atlas.gene_importance("cell_type", progress=False)
    assert set(table["dataset"].astype(str)) == {"typed"}
    assert list(table["dataset"].cat.categories) == ["untyped", "typed"]
    assert table.attrs["scsig"]["left_out"] == ["untyped"]
    compare(table, reference({"typed": typed}, genes))
    assert table["group"].drop_duplicates().astype(str).tolist() == ["T", "NK", "B"]  # the column's order
    with pytest.raises(KeyError, match=r"\['untyped'\] have no cell metadata column 'cell_type'"):
        atlas.gene_importance("cell_type", datasets=["typed", "untyped"], progress=False)


def test_reads_are_bounded(tmp_path, genes, monkeypatch):
    """Every read hands out about GROUP_VALUES values (plus at most one gene's), never the dataset."""
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=genes)
    atlas.add(synthetic_adata(400, genes, seed=3), name="big", progress=False)
    nnz = int(atlas.summary().loc["big", "nnz"])
    sizes: list[int] = []
    finish = ShardReader._finish

    def spy(self, started):
        out = finish(self, started)
        sizes.append(out[0].size)
        return out

    monkeypatch.setattr(_store, "GROUP_VALUES", 500)
    monkeypatch.setattr(ShardReader, "_finish", spy)
    table = atlas.gene_importance("cell_type", progress=False)
    max_gene = 400  # a gene's values are read whole: at most one per cell
    assert sum(sizes) == nnz  # every value read once
    assert len(sizes) >= nnz // (500 + max_gene)
    assert max(sizes) <= 500 + max_gene < nnz / 5
    assert len(table) == 3 * 50


def test_on_local_cluster(atlas):
    distributed = pytest.importorskip("distributed")
    with pytest.warns(UserWarning, match="left out"):
        local = atlas.gene_importance("cell_type", progress=False)
    with (
        distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
        pytest.warns(UserWarning, match="left out"),
    ):
        remote = atlas.gene_importance("cell_type", client=client, progress=True)
    pd.testing.assert_frame_equal(remote, local)
    assert remote.attrs == local.attrs


def test_consensus_by_hand():
    """Two datasets rank genes of group T; dataset e does not measure C, and only d has group B."""
    table = pd.DataFrame(
        [
            ("d", "T", "A", 3.0, 1),
            ("d", "T", "B", 2.0, 2),
            ("d", "T", "C", 1.0, 3),
            ("d", "B", "A", 0.0, 2),
            ("d", "B", "B", 0.0, 3),
            ("d", "B", "C", 5.0, 1),
            ("e", "T", "B", 4.0, 1),
            ("e", "T", "A", 1.0, 2),
        ],
        columns=["dataset", "group", "gene", "mean_attribution", "rank"],
    )
    got = sg.Atlas.gene_consensus(table, n_top=1).set_index(["group", "gene"])
    # percentiles: d/T A 1, B .5, C 0; e/T B 1, A 0; d/B C 1, A and B tie at .25
    want_score = {("T", "A"): 0.5, ("T", "B"): 0.75, ("T", "C"): (0 + 0.5) / 2, ("B", "C"): 1, ("B", "A"): 0.25}
    for key, value in want_score.items():
        assert got.loc[key, "consensus_score"] == pytest.approx(value)
    assert got.loc[("T", "C"), "n_measured"] == 1
    assert got.loc[("T", "C"), "n_datasets"] == 2
    assert got.loc[("B", "A"), "n_datasets"] == 1
    assert got.loc[("T", "A"), "n_in_top"] == 1
    assert got.loc[("T", "B"), "n_in_top"] == 1
    assert got.loc[("T", "A"), "mean_attribution"] == pytest.approx(2.0)
    ranks = got["consensus_rank"].to_dict()
    assert [ranks[("T", g)] for g in "BAC"] == [1, 2, 3]
    assert [ranks[("B", g)] for g in "CAB"] == [1, 2, 3]  # A and B tie: gene order decides
    ignore = sg.Atlas.gene_consensus(table, n_top=1, missing="ignore").set_index(["group", "gene"])
    assert ignore.loc[("T", "C"), "consensus_score"] == pytest.approx(0.0)
    assert ignore.loc[("T", "A"), "consensus_score"] == pytest.approx(0.5)


def test_consensus_signature_scores(atlas):
    """A group's top consensus genes -> mean attribution is a signature Atlas.score takes, as sg.get.signature's."""
    with pytest.warns(UserWarning, match="left out"):
        table = atlas.gene_importance("cell_type", progress=False)
    consensus = sg.Atlas.gene_consensus(table, n_top=10)
    assert consensus.groupby("group", observed=True)["consensus_rank"].min().tolist() == [1, 1, 1]
    # G40..G49: measured in 2 of 3 datasets with the group
    late = consensus[consensus["gene"].astype(str).isin([f"G{i}" for i in range(40, 50)])]
    assert set(late["n_measured"]) == {2}
    assert set(late["n_datasets"]) == {3}
    # G45 in T: its percentiles in d0 and d1, and the neutral 0.5 for d2, which does not measure it
    pcts = []
    for _, part in table[table["group"] == "T"].groupby("dataset", observed=True):
        pct = (part["mean_attribution"].rank(method="average") - 1) / (len(part) - 1)
        pcts.append(float(pct[part["gene"] == "G45"].iloc[0]) if (part["gene"] == "G45").any() else 0.5)
    row = consensus[(consensus["group"] == "T") & (consensus["gene"] == "G45")].iloc[0]
    assert row["consensus_score"] == pytest.approx(np.mean(pcts))
    assert pcts[2] == 0.5
    top = consensus[consensus["group"] == "T"].head(8)
    signature = top.set_index("gene")["mean_attribution"]
    scores = atlas.score(signature, progress=False)
    plain = atlas.score({str(g): float(w) for g, w in signature.items()}, progress=False)
    pd.testing.assert_frame_equal(scores, plain)
    (record,) = scores.attrs["scsig"]["signatures"].values()
    assert record["missing"] == []
    assert record["genes"] == [str(g) for g in signature.index]
