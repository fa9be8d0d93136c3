"""Cross-species models: the ortholog conversion, its fold into the first layer, saving, matching, TRON."""

from __future__ import annotations

import hashlib
import json
from importlib import resources

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scsig as sg
from scsig.models import CrossSpeciesModel, SCimilarityEncoder
from scsig.models._conversion import _conversion_module
from scsig.models._orthologs import BUNDLED, DEFAULT_TABLE, relationships

from ..conftest import randomize_batchnorm

HUMAN = [f"HG{i}" for i in range(12)]
# 1:1 pairs for HG0..HG7; Mg8a/Mg8b -> HG8 (many:1); Mg9 -> HG9 and HG10 (1:many); HG11 has no ortholog
PAIRS = pd.DataFrame(
    {
        "mouse": [f"Mg{i}" for i in range(8)] + ["Mg8a", "Mg8b", "Mg9", "Mg9"],
        "human": HUMAN[:8] + ["HG8", "HG8", "HG9", "HG10"],
    }
)


def _human_model(seed: int = 0) -> sg.models.FoundationModel:
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(len(HUMAN), [16, 8], 4)
    randomize_batchnorm(enc, seed)
    return sg.models.FoundationModel(enc.eval(), HUMAN, name="tiny-human")


def _mouse_counts(genes: list[str], n: int = 30, seed: int = 1) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = rng.poisson(2.0, size=(n, len(genes))).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0
    x[:, 0] += 1  # no empty cells
    return ad.AnnData(
        sparse.csr_matrix(x), var=pd.DataFrame(index=genes), obs=pd.DataFrame(index=[f"c{i}" for i in range(n)])
    )


def _table_sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the bundled tables
# ---------------------------------------------------------------------------------------------


def test_bundled_files_match_pinned_checksums():
    folder = resources.files("scsig.models") / "_data" / "orthologs"
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".gz"))
    assert files == sorted(spec.file for spec in BUNDLED.values())
    for spec in BUNDLED.values():
        with resources.as_file(folder / spec.file) as path:
            assert _table_sha(path) == spec.sha256, spec.file
    readme = (folder / "README.md").read_text()
    assert all(spec.sha256 in readme and spec.file in readme for spec in BUNDLED.values())


@pytest.mark.parametrize(
    ("table", "n_pairs", "n_one2one"),
    [("mgi2024", 29597, 16984), ("hcop2024", 21810, 16331), ("ensembl105", 24857, 16757)],
)
def test_bundled_table_content(table, n_pairs, n_one2one):
    frame = sg.models.orthologs("human", "mouse", table=table)
    assert len(frame) == n_pairs
    assert (frame["relationship"] == "one2one").sum() == n_one2one
    assert frame.attrs == {"table": f"{table}-human-mouse", "checksum": BUNDLED[table].sha256[:16]}
    reverse = sg.models.orthologs("mouse", "human", table=table)
    assert (reverse["relationship"] == "one2one").sum() == n_one2one
    assert set(reverse["relationship"]) == {"one2one", "one2many", "many2one", "many2many"}
    # one2many one way is many2one the other
    assert (frame["relationship"] == "one2many").sum() == (reverse["relationship"] == "many2one").sum()
    lookup = frame.groupby("source")["target"].agg(list)
    assert lookup["CD19"] == ["Cd19"]
    assert "GNLY" not in lookup.index


def test_default_table_is_mgi():
    assert DEFAULT_TABLE == "mgi2024"
    assert sg.models.orthologs().attrs["table"] == "mgi2024-human-mouse"
    assert set(sg.get.orthologs(["CD19"])["table"]) == {"mgi2024-human-mouse"}
    x = sg.models.cross_species(sg.models.load("pbmc-demo"), species="mouse")
    assert x.table.name == "mgi2024-human-mouse"
    assert x.describe()["cross_species"]["table"]["checksum"] == BUNDLED["mgi2024"].sha256[:16]


def test_relationships_match_the_files_type_columns():
    """Our per-pair relationship is the type MGI and HCOP give (HCOP: among the pairs with support >= 3)."""
    folder = resources.files("scsig.models") / "_data" / "orthologs"
    for spec, column, keep in ((BUNDLED["mgi2024"], "type", None), (BUNDLED["hcop2024"], "type_min3", 3)):
        with resources.as_file(folder / spec.file) as path:
            raw = pd.read_csv(path, dtype={"human_symbol": str, "mouse_symbol": str}, keep_default_na=False)
        if keep:
            raw = raw[raw["support_n"] >= keep]
        got = relationships(raw["human_symbol"], raw["mouse_symbol"])
        np.testing.assert_array_equal(got.to_numpy(), raw[column].to_numpy())


def test_relationships_hand_checked():
    # a-A one2one; b -> B1, B2 (one2many); c, d -> D (many2one); e -> E1, E2 and f -> E2 (mixed)
    source = pd.Series(["a", "b", "b", "c", "d", "e", "e", "f"])
    target = pd.Series(["A", "B1", "B2", "D", "D", "E1", "E2", "E2"])
    assert relationships(source, target).tolist() == [
        "one2one",
        "one2many",
        "one2many",
        "many2one",
        "many2one",
        "one2many",  # E1 has only e
        "many2many",  # e has two, E2 has two
        "many2one",  # f has only E2, which has two
    ]
    table = pd.DataFrame({"source": source, "target": target})
    m = sg.get.orthologs(["a", "b", "c", "e", "f", "z"], source="x", target="y", table=table)
    assert m["source"].tolist() == ["a", "b", "c", "e", "f", "z"]
    assert m["relationship"].tolist()[:5] == ["one2one", "one2many", "many2one", "many2many", "many2one"]
    assert pd.isna(m["relationship"].iloc[5])
    assert m["choice"].tolist() == ["only", "ambiguous", "only", "ambiguous", "only", "missing"]
    assert m["n_orthologs"].tolist() == [1, 2, 1, 2, 1, 0]
    assert m["target"].tolist()[:5:2] == ["A", "D", "E2"]
    assert m["target"].iloc[[1, 3, 5]].isna().all()
    assert set(m["table"]) == {"user"}


# ---------------------------------------------------------------------------------------------
# the conversion and its fold
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rule", ["mean", "split"])
def test_conversion_rules(rule):
    x = sg.models.cross_species(_human_model(), species="mouse", orthologs=PAIRS, rule=rule)
    assert x.gene_order == [f"Mg{i}" for i in range(8)] + ["Mg8a", "Mg8b", "Mg9"]
    c = x.conversion.toarray()
    expected = np.zeros((12, 11))
    expected[np.arange(8), np.arange(8)] = 1.0
    if rule == "mean":  # HG8 gets the mean of Mg8a and Mg8b; Mg9 feeds HG9 and HG10 in full
        expected[8, 8] = expected[8, 9] = 0.5
        expected[9, 10] = expected[10, 10] = 1.0
    else:  # Mg8a and Mg8b sum into HG8; Mg9 is split between HG9 and HG10
        expected[8, 8] = expected[8, 9] = 1.0
        expected[9, 10] = expected[10, 10] = 0.5
    np.testing.assert_array_equal(c, expected)
    kinds = x.pairs().set_index("source")["relationship"]
    assert kinds["Mg0"] == "one2one"
    assert kinds["Mg8a"] == "many2one"
    assert kinds.loc["Mg9"].tolist() == ["one2many", "one2many"]


@pytest.mark.parametrize("rule", ["mean", "split"])
def test_folded_encoder_equals_conversion_then_model(rule):
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS, rule=rule)
    assert isinstance(x.encoder, SCimilarityEncoder)
    assert x.encoder.network[0][1].weight.shape == (16, 11)
    inp = np.random.default_rng(0).random((20, 11)).astype(np.float32)
    converted = (x.conversion @ inp.T.astype(np.float64)).T.astype(np.float32)
    np.testing.assert_allclose(x.embed(inp), base.embed(converted), rtol=1e-5, atol=1e-6)
    # the pretrained model is untouched
    assert base.encoder.network[0][1].weight.shape == (16, 12)


def test_attributions_equal_captum_on_conversion_in_front():
    """Fold + fast path == captum on the unfolded network (conversion module, then the pretrained encoder)."""
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    mouse = _mouse_counts(x.gene_order)
    unfolded = sg.models.from_module(
        torch.nn.Sequential(_conversion_module(x.conversion), base.encoder), x.gene_order, name="unfolded"
    )
    fast = sg.tl.attribute(mouse, x, engine="fast", copy=True)
    ref = sg.tl.attribute(mouse, unfolded, engine="captum", copy=True)
    assert fast.uns["scsig"]["layers"]["attr_ig"]["engine"] == "fast"
    np.testing.assert_allclose(fast.layers["attr_ig"].toarray(), ref.layers["attr_ig"].toarray(), rtol=1e-4, atol=1e-3)


def test_one_to_one_is_exactly_the_renaming_baseline():
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    genes_1to1 = [f"Mg{i}" for i in range(8)]
    mouse = _mouse_counts(genes_1to1 + ["Xist"])  # a gene without ortholog is left out
    renamed = mouse[:, genes_1to1].copy()
    renamed.var_names = HUMAN[:8]
    sg.tl.attribute(mouse, x, min_overlap=1)
    sg.tl.attribute(renamed, base, min_overlap=1)
    got = mouse[:, genes_1to1].layers["attr_ig"].toarray()
    np.testing.assert_allclose(got, renamed.layers["attr_ig"].toarray(), rtol=1e-5, atol=1e-5)
    assert mouse.var["attr_ig_in_model"].tolist() == [True] * 8 + [False]
    # scores: a plain numpy mean of the signature's columns, and the same as the baseline's
    sg.tl.score(mouse, ["Mg1", "Mg2", "Mg5"], mode="classic", key_added="s")
    sg.tl.score(renamed, ["HG1", "HG2", "HG5"], mode="classic", key_added="s")
    np.testing.assert_allclose(mouse.obs["s"], got[:, [1, 2, 5]].mean(axis=1), rtol=1e-6)
    np.testing.assert_allclose(mouse.obs["s"], renamed.obs["s"], rtol=1e-5, atol=1e-5)


def test_other_first_layer_gets_conversion_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(12, 4)

        def forward(self, x):
            return torch.tanh(self.lin(x))

    base = sg.models.from_module(Net(), HUMAN, name="net")
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    inp = np.random.default_rng(0).random((5, 11)).astype(np.float32)
    converted = (x.conversion @ inp.T).T.astype(np.float32)
    np.testing.assert_allclose(x.embed(inp), base.embed(converted), rtol=1e-5, atol=1e-6)
    mouse = _mouse_counts(x.gene_order, n=6)
    sg.tl.attribute(mouse, x)
    assert mouse.uns["scsig"]["layers"]["attr_ig"]["engine"] == "captum"


# ---------------------------------------------------------------------------------------------
# pseudo-mouse cells: the bundled human PBMCs with their genes renamed to 1:1 mouse orthologs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pseudo_mouse():
    human = sg.datasets.kang_ifnb()[:60].copy()
    table = sg.models.orthologs("human", "mouse")
    one = table[table["relationship"] == "one2one"].set_index("source")["target"]
    human = human[:, human.var_names.isin(one.index)].copy()
    mouse = human.copy()
    mouse.var_names = one.loc[human.var_names].to_numpy()
    return human, mouse


def test_pseudo_mouse_equals_human_model(pseudo_mouse):
    human, mouse = pseudo_mouse
    base = sg.models.load("pbmc-demo")
    x = sg.models.cross_species(base, species="mouse")
    h = sg.tl.attribute(human, base, copy=True)
    m = sg.tl.attribute(mouse, x, copy=True)
    np.testing.assert_allclose(m.layers["attr_ig"].toarray(), h.layers["attr_ig"].toarray(), rtol=1e-5, atol=1e-5)
    record = m.uns["scsig"]["layers"]["attr_ig"]
    assert record["engine"] == "fast"
    cs = record["model"]["cross_species"]
    assert cs["species"] == "mouse"
    assert cs["table"]["name"] == "mgi2024-human-mouse"
    assert cs["table"]["checksum"] == BUNDLED["mgi2024"].sha256[:16]
    assert cs["base_model"]["name"] == "pbmc-demo"
    assert record["overlap"]["n_base_model_genes"] == 4692
    assert record["overlap"]["n_base_model_genes_reached"] == record["overlap"]["n_overlap"]
    # upper-case mouse symbols match too, with the same result
    upper = mouse.copy()
    upper.var_names = upper.var_names.str.upper()
    u = sg.tl.attribute(upper, x, copy=True)
    assert u.uns["scsig"]["layers"]["attr_ig"]["overlap"]["n_matched_ignoring_case"] > 3000
    np.testing.assert_allclose(u.layers["attr_ig"].toarray(), m.layers["attr_ig"].toarray(), rtol=0, atol=0)
    # human signatures translated into mouse score the same as on the human cells
    sig = {"B": ["MS4A1", "CD79A", "CD79B"], "NK": ["NKG7", "PRF1", "KLRD1"]}  # 1:1 orthologs
    sg.tl.score(m, sg.get.orthologs(sig, source="human", target="mouse", as_signature=True), key_added="sig")
    sg.tl.score(h, sig, key_added="sig")
    np.testing.assert_allclose(m.obsm["sig"].to_numpy(), h.obsm["sig"].to_numpy(), rtol=1e-5, atol=1e-5)


def test_human_cells_given_as_mouse_raise(pseudo_mouse):
    human, _ = pseudo_mouse
    x = sg.models.cross_species(sg.models.load("pbmc-demo"), species="mouse")
    full = sg.datasets.kang_ifnb()[:5].copy()
    with pytest.raises(ValueError, match=r"look like human genes.*model\.base"):
        sg.tl.attribute(full, x)


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS, rule="split")
    folder = x.save(tmp_path / "xm")
    assert (folder / "encoder.safetensors").is_file()
    assert not list(tmp_path.glob(".xm*"))  # no temporary folder left behind
    y = sg.models.load(folder)
    assert isinstance(y, CrossSpeciesModel)
    assert y.gene_order == x.gene_order
    assert y.base.gene_order == HUMAN
    assert y.base.name == "tiny-human"
    assert y.rule == "split"
    assert y.species == "mouse"
    np.testing.assert_array_equal(y.conversion.toarray(), x.conversion.toarray())
    dx, dy = x.describe(), y.describe()
    for d in (dx, dy):  # where it was loaded from differs
        d.pop("source")
        d["cross_species"]["base_model"].pop("source")
    assert dx == dy
    mouse = _mouse_counts(x.gene_order)
    a = sg.tl.attribute(mouse, x, copy=True)
    b = sg.tl.attribute(mouse, y, copy=True)
    np.testing.assert_array_equal(a.layers["attr_ig"].toarray(), b.layers["attr_ig"].toarray())
    # overwrite an existing folder; the provenance survives an h5ad round trip
    x.save(folder)
    b.write_h5ad(tmp_path / "b.h5ad")
    back = ad.read_h5ad(tmp_path / "b.h5ad")
    cs = back.uns["scsig"]["layers"]["attr_ig"]["model"]["cross_species"]
    assert cs["species"] == "mouse"
    assert cs["rule"] == "split"
    assert cs["table"]["name"] == "user"


IMMUNE = ["CD19", "MS4A1", "CD79A", "NKG7", "CCL5", "IFIT1", "S100A9", "LYZ", "GZMB", "CD3E", "CD14", "IL7R"]

# what scsig wrote into cross_species.json, and the gene order, for this model with the Ensembl 105
# table before MGI became the default (commit d268e75)
OLD_ENSEMBL_RECORD = {
    "checksum": "741b301e9b101442",
    "n_pairs": 24857,
    "name": "ensembl105-human-mouse",
    "source_species": "mouse",
    "target_species": "human",
}
OLD_ENSEMBL_GENES = ["Cd19", "Ms4a1", "Cd79a", "Nkg7", "Gm5849", "9530003J23Rik", "Gzme", "Gzmf", "Gzmc", "Gzmd"]
OLD_ENSEMBL_GENES += ["Gzmb", "Gzmn", "Gzmg", "Cd3e", "Cd14", "Il7r"]


def _immune_model() -> sg.models.FoundationModel:
    torch.manual_seed(0)
    return sg.models.FoundationModel(SCimilarityEncoder(len(IMMUNE), [16, 8], 4).eval(), IMMUNE, name="tiny-immune")


@pytest.mark.parametrize("table", ["mgi2024", "hcop2024", "ensembl105"])
def test_bundled_table_provenance_roundtrip(tmp_path, table):
    x = sg.models.cross_species(_immune_model(), species="mouse", orthologs=table)
    record = x.describe()["cross_species"]["table"]
    assert record["name"] == f"{table}-human-mouse"
    assert record["checksum"] == BUNDLED[table].sha256[:16]
    y = sg.models.load(x.save(tmp_path / "xm"))
    assert y.describe()["cross_species"]["table"] == record
    saved = json.loads((tmp_path / "xm" / "cross_species.json").read_text())["table"]
    assert saved == record
    pd.testing.assert_frame_equal(y.table.pairs, x.table.pairs[["source", "target"]])
    assert y.gene_order == x.gene_order
    inp = np.random.default_rng(0).random((4, x.n_genes)).astype(np.float32)
    np.testing.assert_array_equal(y.embed(inp), x.embed(inp))
    # the recorded name selects the same table again
    again = sg.models.cross_species(_immune_model(), species="mouse", orthologs=record["name"])
    assert again.gene_order == x.gene_order
    if table == "ensembl105":  # byte for byte what the earlier default recorded
        assert saved == OLD_ENSEMBL_RECORD
        assert y.gene_order == OLD_ENSEMBL_GENES
    if table == "mgi2024":  # the orthologs immunologists expect reach the model
        assert {"Ccl5", "Ifit1", "S100a9", "Lyz1", "Lyz2"} <= set(x.gene_order)


# ---------------------------------------------------------------------------------------------
# learning the conversion (TRON)
# ---------------------------------------------------------------------------------------------


def test_fit_conversion_learns_masked_weights_only(tmp_path):
    base = _human_model()
    before = {k: v.clone() for k, v in base.encoder.state_dict().items()}
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    mouse = _mouse_counts(x.gene_order, n=60)
    mouse.obs["label"] = pd.Categorical(np.where(mouse.X[:, 1].toarray().ravel() > 1, "hi", "lo"))
    learned, pairs = sg.models.fit_conversion(x, mouse, labels="label", epochs=5, lr=0.05)
    # the pretrained encoder is frozen and untouched
    for k, v in base.encoder.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    # only the ortholog pairs carry weights, and they moved
    assert (learned.conversion != 0).sum() <= x.conversion.nnz
    np.testing.assert_array_equal(learned.initial.toarray(), x.conversion.toarray())
    assert set(pairs.columns) >= {"source", "target", "relationship", "initial", "weight", "change"}
    assert len(pairs) == x.conversion.nnz
    assert pairs["change"].abs().max() > 0.01
    # the learned model is the pretrained encoder after the learned conversion
    inp = np.random.default_rng(2).random((5, learned.n_genes)).astype(np.float32)
    conv = (learned.conversion @ inp.T.astype(np.float64)).T.astype(np.float32)
    np.testing.assert_allclose(learned.embed(inp), base.embed(conv), rtol=1e-5, atol=1e-6)
    assert learned.describe()["cross_species"]["learned"] is True
    assert len(pairs.attrs["loss_history"]) == 5
    # its provenance survives an h5ad round trip
    sg.tl.attribute(mouse, learned)
    mouse.write_h5ad(tmp_path / "fit.h5ad")
    fit = ad.read_h5ad(tmp_path / "fit.h5ad").uns["scsig"]["layers"]["attr_ig"]["model"]["cross_species"]["fit"]
    assert fit["labels"] == "label"
    assert list(fit["classes"]) == ["hi", "lo"]
    # a strong pull toward the orthology keeps the weights there
    held, pairs2 = sg.models.fit_conversion(x, mouse, labels="label", epochs=2, lr=0.05, l2=1e6)
    assert pairs2["change"].abs().max() < pairs["change"].abs().max()


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input():
    base = _human_model()
    with pytest.raises(ValueError, match=r"No ortholog table is bundled.*Pass a DataFrame"):
        sg.models.cross_species(base, species="zebrafish")
    with pytest.raises(
        ValueError, match=r"table='mgi' is not a bundled.*'mgi2024' \(default\), 'hcop2024', 'ensembl105'"
    ):
        sg.models.cross_species(base, species="mouse", orthologs="mgi")
    with pytest.raises(TypeError, match="name of a bundled table"):
        sg.models.cross_species(base, species="mouse", orthologs=3)
    with pytest.raises(ValueError, match=r"needs 'source'.*Rename"):
        sg.models.cross_species(base, species="mouse", orthologs=pd.DataFrame({"a": ["x"], "b": ["y"]}))
    with pytest.raises(ValueError, match=r"None of the model's 12 genes"):
        sg.models.cross_species(base, species="mouse", orthologs=pd.DataFrame({"source": ["Cd3e"], "target": ["CD3E"]}))
    with pytest.raises(ValueError, match="rule must be one of"):
        sg.models.cross_species(base, species="mouse", orthologs=PAIRS, rule="max")
    with pytest.raises(ValueError, match="model's own species"):
        sg.models.cross_species(base, species="human")
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    with pytest.raises(TypeError, match="model.base"):
        sg.models.cross_species(x, species="mouse", orthologs=PAIRS)
    with pytest.raises(TypeError, match="cross-species model"):
        sg.models.fit_conversion(base, _mouse_counts(HUMAN), labels="x")
    with pytest.raises(KeyError, match="not a column of adata.obs"):
        sg.models.fit_conversion(x, _mouse_counts(x.gene_order), labels="x")
    # data with no gene reachable through the orthologs
    with pytest.raises(ValueError, match="Only 0 of the model's"):
        sg.tl.attribute(_mouse_counts(["Foo1", "Bar2"]), x)


def test_low_reach_warns():
    base = _human_model()
    few = pd.DataFrame({"source": ["Mg0", "Mg1"], "target": ["HG0", "HG1"]})
    with pytest.warns(UserWarning, match="Only 2 of the model's 12 genes have a mouse ortholog"):
        sg.models.cross_species(base, species="mouse", orthologs=few)


def test_ensembl_ids_need_gene_symbols():
    base = _human_model()
    x = sg.models.cross_species(base, species="mouse", orthologs=PAIRS)
    mouse = _mouse_counts(x.gene_order)
    mouse.var["symbol"] = mouse.var_names
    mouse.var_names = [f"ENSMUSG{i:011d}" for i in range(mouse.n_vars)]
    with pytest.raises(ValueError, match=r"look like Ensembl IDs.*gene_symbols=.*'symbol'"):
        sg.tl.attribute(mouse, x)
    sg.tl.attribute(mouse, x, gene_symbols="symbol")
    assert mouse.var["attr_ig_in_model"].all()
