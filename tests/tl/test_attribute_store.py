"""sg.tl.attribute(..., store=): the layer streamed to an .h5ad file, equal to the in-memory layer."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

import scsig as sg


@pytest.mark.parametrize("engine", ["fast", "captum"])
def test_store_equals_in_memory(toy, tmp_path, engine):
    adata, model = toy
    want = sg.tl.attribute(adata, model, engine=engine, batch_size=7, n_steps=10, copy=True)
    src = tmp_path / "counts.h5ad"
    adata.write_h5ad(src)
    backed = ad.read_h5ad(src, backed="r")
    out = tmp_path / "attr.h5ad"
    sg.tl.attribute(backed, model, engine=engine, batch_size=7, n_steps=10, store=out)
    layer = backed.layers["attr_ig"]
    assert not isinstance(layer, np.ndarray)  # read from the file, not held in memory
    got = layer[0 : adata.n_obs]
    assert (got != want.layers["attr_ig"]).nnz == 0
    assert backed.uns["scsig"]["layers"]["attr_ig"]["engine"] == engine
    stored = ad.read_h5ad(out)
    assert (stored.layers["attr_ig"] != want.layers["attr_ig"]).nnz == 0
    assert stored.obs_names.equals(adata.obs_names)
    assert stored.var_names.equals(adata.var_names)
    np.testing.assert_array_equal(stored.var["attr_ig_in_model"], want.var["attr_ig_in_model"])
    assert stored.uns["scsig"]["layers"]["attr_ig"]["method"] == "ig"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["attr.h5ad", "counts.h5ad"]
    # the stored file is an atlas input like any attributed AnnData
    atlas = sg.Atlas.create(tmp_path / "atlas", gene_order=model.gene_order)
    atlas.add(ad.read_h5ad(out, backed="r"), name="x")
    np.testing.assert_allclose(
        atlas.score(["g0", "g3"], mode="classic")["score"].to_numpy(),
        np.asarray(want.layers["attr_ig"][:, [0, 3]].mean(axis=1)).ravel(),
        rtol=1e-6,
    )


def test_store_interrupted_leaves_no_file(toy, tmp_path):
    adata, model = toy
    adata.X = adata.X.astype(np.float32)
    adata.X.data[-1] = 0.5  # the last batch is not counts: the run fails after writing earlier batches
    src = tmp_path / "counts.h5ad"
    adata.write_h5ad(src)
    backed = ad.read_h5ad(src, backed="r")
    with pytest.raises(ValueError, match="integer"):
        sg.tl.attribute(backed, model, batch_size=10, store=tmp_path / "attr.h5ad")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counts.h5ad"]
    assert "attr_ig" not in backed.layers


def test_store_bad_paths(toy, tmp_path):
    adata, model = toy
    (tmp_path / "exists.h5ad").touch()
    with pytest.raises(FileExistsError, match="already exists"):
        sg.tl.attribute(adata, model, store=tmp_path / "exists.h5ad")
    with pytest.raises(ValueError, match=r"ending in \.h5ad"):
        sg.tl.attribute(adata, model, store=tmp_path / "x.zarr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sg.tl.attribute(adata, model, store=tmp_path / "no" / "x.h5ad")
    assert "attr_ig" not in adata.layers
