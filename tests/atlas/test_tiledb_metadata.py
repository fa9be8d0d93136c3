"""Import of the reference's TileDB atlases: one dtype per metadata column, and the row-to-cell index."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import scsig as sg

from .test_interop import GENES, random_attributions, write_reference_folder

pytest.importorskip("tiledb")


def _mean(dense, rows, genes):
    return dense[np.ix_(rows, genes)].astype(np.float64).mean(axis=1)


def test_mixed_metadata_columns_get_one_dtype(tmp_path):
    n = 8
    dense = random_attributions(n, len(GENES), 0)
    sub = write_reference_folder(tmp_path / "pub", "T", dense)
    meta = pd.DataFrame(
        {
            "mix": [1, "a", 2, "b", 3, "c", 4, "d"],
            "count": list(range(n)),
            "with_gap": [1, 2, np.nan, 4, 5, 6, 7, 8],
            "frac": [0.5] * n,
            "flag": ["True", "False"] * 4,
        },
        index=pd.Index([f"T_{i}" for i in range(n)], name="cell"),
    )
    meta.to_csv(sub / "cell_metadata.csv.gz")
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES)
    obs = atlas.obs()
    assert isinstance(obs["mix"].dtype, pd.CategoricalDtype)
    assert obs["mix"].astype(str).tolist() == ["1", "a", "2", "b", "3", "c", "4", "d"]  # nothing became NaN
    assert obs["count"].dtype == np.int64
    assert obs["with_gap"].dtype == np.float64
    assert np.isnan(obs["with_gap"].iloc[2])
    assert obs["frac"].dtype == np.float64
    assert obs["flag"].dtype == bool
    assert obs["flag"].tolist() == [True, False] * 4
    frame = atlas.score(["G0", "G5"], obs_filter={"mix": ["a", "3"]}, progress=False)
    assert frame.index.tolist() == ["T_1", "T_4"]
    np.testing.assert_allclose(frame["score"], _mean(dense, [1, 4], [0, 5]), rtol=1e-6)


def test_large_metadata_with_mixed_column_scores(tmp_path):
    """300k rows: pandas' chunked type guessing mixes ints and strings in one column; the import must not."""
    n = 300_000
    rng = np.random.default_rng(0)
    sub = tmp_path / "pub" / "big"
    dense_cells = rng.choice(n, 2_000, replace=False)
    sparse_vals = rng.gamma(0.5, 1.0, size=(dense_cells.size, len(GENES))).astype(np.float32)
    tiledb = pytest.importorskip("tiledb")
    sub.mkdir(parents=True)
    dom = tiledb.Domain(
        tiledb.Dim(name="x", domain=(0, n - 1), dtype=np.uint32),
        tiledb.Dim(name="y", domain=(0, len(GENES) - 1), dtype=np.uint32),
    )
    schema = tiledb.ArraySchema(
        domain=dom, sparse=True, cell_order="col-major", tile_order="col-major", attrs=[tiledb.Attr("vals", np.float32)]
    )
    tiledb.SparseArray.create(str(sub / "attributions"), schema)
    x = np.repeat(dense_cells, len(GENES)).astype(np.uint32)
    y = np.tile(np.arange(len(GENES)), dense_cells.size).astype(np.uint32)
    with tiledb.open(str(sub / "attributions"), "w") as arr:
        arr[x, y] = sparse_vals.ravel()
    study = np.array([f"{i % 7}" for i in range(n)], dtype=object)
    study[n - 5 :] = "GSE1"  # words only at the end, after pandas' first chunk guessed integers
    pd.DataFrame({"study": study}, index=pd.Index([f"c{i}" for i in range(n)], name="cell")).to_csv(
        sub / "cell_metadata.csv.gz"
    )
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES, progress=False)
    frame = atlas.score(["G2", "G7"], mode="classic", progress=False)
    assert len(frame) == n
    assert isinstance(frame["study"].dtype, pd.CategoricalDtype)
    assert sorted(frame["study"].cat.categories) == sorted([*(str(i) for i in range(7)), "GSE1"])
    assert frame["study"].iloc[-1] == "GSE1"
    assert frame["study"].iloc[8] == "1"
    expected = np.zeros(n)
    expected[dense_cells] = sparse_vals[:, [2, 7]].astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(frame["score"].to_numpy(), expected, rtol=1e-6)


def test_row_to_cell_index_is_honoured(tmp_path):
    """A metadata table whose first column gives each row's cell position (rows not in array order)."""
    n = 9
    dense = random_attributions(n, len(GENES), 5)
    sub = write_reference_folder(tmp_path / "pub", "NK", dense)
    order = np.random.default_rng(1).permutation(n)
    meta = pd.DataFrame({"label": [f"cell at {p}" for p in order]}, index=pd.Index(order, name="x"))
    meta.to_csv(sub / "cell_metadata.csv.gz")
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES)
    frame = atlas.score(["G1", "G3", "G10"], mode="classic", progress=False)
    assert frame["label"].astype(str).tolist() == [f"cell at {p}" for p in order]
    np.testing.assert_allclose(frame["score"], _mean(dense, order, [1, 3, 10]), rtol=1e-6)
    back = atlas.to_anndata(progress=False)
    np.testing.assert_allclose(back.layers["attr_ig"].toarray(), dense[order])


def test_row_to_cell_index_subset_and_gaps(tmp_path):
    n = 10
    dense = random_attributions(n, len(GENES), 6)
    dense[[2, 7]] = 0  # cells without values may lack metadata
    sub = write_reference_folder(tmp_path / "pub", "B", dense)
    kept = np.array([9, 0, 5, 1, 3, 4, 6, 8])
    pd.DataFrame({"k": kept}, index=pd.Index(kept, name="x")).to_csv(sub / "cell_metadata.csv.gz")
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES)
    frame = atlas.score(["G0", "G11"], mode="classic", progress=False)
    np.testing.assert_allclose(frame["score"], _mean(dense, kept, [0, 11]), rtol=1e-6)
    dense[2, 4] = 1.0  # now a cell with values has no metadata row: refused, nothing half-made
    sub2 = write_reference_folder(tmp_path / "pub2", "B", dense)
    pd.DataFrame({"k": kept}, index=pd.Index(kept, name="x")).to_csv(sub2 / "cell_metadata.csv.gz")
    with pytest.raises(ValueError, match="no row of cell_metadata.csv.gz describes"):
        sg.Atlas.from_signature(tmp_path / "pub2", tmp_path / "atlas2", gene_order=GENES)
    assert not (tmp_path / "atlas2").exists()


def _same_value(got, text):
    """A metadata value as imported equals the CSV's text: missing stays missing, numbers by value."""
    if text == "":
        return pd.isna(got)
    if pd.isna(got):
        return False
    if str(got) == text:
        return True
    try:
        return float(got) == float(text)
    except (TypeError, ValueError):
        return False


def test_small_mixed_columns_keep_every_value(tmp_path):
    """Small tables: int/str, float/str and partly empty columns, typed differently in two cell types."""
    tables = {
        "T": pd.DataFrame(
            {
                "int_str": [1, "a", 2, "b", 3, "c"],
                "float_str": [0.5, "x", 1.25, "y", None, 2.0],
                "with_none": [None, "p", None, "q", None, "r"],
                "all_none": [None] * 6,
                "num": [1, 2, 3, 4, 5, 6],
                "flag": ["True", None, "False", "True", "False", "True"],
            },
            index=pd.Index([f"T_{i}" for i in range(6)], name="cell"),
        ),
        "B": pd.DataFrame(
            {
                "int_str": [7, 8, 9, 10, 11],  # numbers only here: int64 in this cell type, text in T
                "float_str": [0.1, 0.2, None, 0.4, 0.5],
                "with_none": [None, None, None, None, "s"],
                "all_none": [None] * 5,
                "num": ["u", "v", "w", "x", "y"],
                "flag": ["True"] * 5,
            },
            index=pd.Index([f"B_{i}" for i in range(5)], name="cell"),
        ),
    }
    dense = {}
    for k, (ct, meta) in enumerate(tables.items()):
        dense[ct] = random_attributions(len(meta), len(GENES), 10 + k)
        sub = write_reference_folder(tmp_path / "pub", ct, dense[ct])
        meta.to_csv(sub / "cell_metadata.csv.gz")
    atlas = sg.Atlas.from_signature(tmp_path / "pub", tmp_path / "atlas", gene_order=GENES, progress=False)
    # the text each value has in the CSV files, as written
    text = {ct: pd.read_csv(tmp_path / "pub" / ct / "cell_metadata.csv.gz", dtype=str, keep_default_na=False, index_col=0)
            for ct in tables}  # fmt: skip
    for ct in tables:  # per cell type: one dtype per column, every value kept
        obs = atlas.obs(datasets=ct)
        for col in tables[ct].columns:
            assert not (obs[col].dtype == object and obs[col].map(type).nunique() > 1), (ct, col)
            bad = [
                (c, g, t) for c, g, t in zip(obs.index, obs[col], text[ct][col], strict=True) if not _same_value(g, t)
            ]
            assert bad == [], (ct, col, obs[col].dtype)
    assert isinstance(atlas.obs(datasets="T")["int_str"].dtype, pd.CategoricalDtype)
    assert atlas.obs(datasets="B")["int_str"].dtype == np.int64
    assert atlas.obs(datasets="T")["all_none"].isna().all()
    frame = atlas.score(["G1", "G4"], mode="classic", progress=False)  # both cell types in one frame
    want = pd.concat([text["B"], text["T"]])  # datasets in name order
    assert frame.index.tolist() == want.index.tolist()
    for col in tables["T"].columns:
        bad = [(c, g, t) for c, g, t in zip(frame.index, frame[col], want[col], strict=True) if not _same_value(g, t)]
        assert bad == [], (col, frame[col].dtype)
    picked = atlas.score(["G1", "G4"], obs_filter={"float_str": ["x", "1.25"]}, mode="classic", progress=False)
    assert picked.index.tolist() == ["T_1", "T_2"]
    np.testing.assert_allclose(picked["score"], _mean(dense["T"], [1, 2], [1, 4]), rtol=1e-6)
