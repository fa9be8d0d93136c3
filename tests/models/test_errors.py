"""sg.models on bad input: clear errors; views and backed data."""

from __future__ import annotations

import anndata as ad
import pytest
import torch

import scsig as sg


def test_from_module_gene_order_as_a_string():
    with pytest.raises(TypeError, match="list of gene names"):
        sg.models.from_module(torch.nn.Linear(2, 3), "g0")


def test_train_unknown_gene_symbols(toy):
    adata, _ = toy
    with pytest.raises(KeyError, match="gene_symbols='symbol' is not a column"):
        sg.models.train_encoder(adata, gene_symbols="symbol", n_top_genes=10, epochs=1, progress=False)


def test_train_leaves_a_view_alone(toy):
    adata, _ = toy
    view = adata[adata.obs["group"] == "a"]
    sg.models.train_encoder(view, n_top_genes=None, epochs=1, progress=False)
    assert view.is_view


def test_train_backed(toy, tmp_path):
    adata, _ = toy
    path = tmp_path / "toy.h5ad"
    adata.write_h5ad(path)
    model = sg.models.train_encoder(ad.read_h5ad(path, backed="r"), n_top_genes=20, epochs=1, progress=False)
    assert model.n_genes == 20


def test_from_module_width_differs_from_gene_order():
    with pytest.raises(ValueError, match="cannot embed cells of 3 genes"):
        sg.models.from_module(torch.nn.Linear(2, 4), ["g0", "g1", "g2"])


def test_from_module_output_not_one_row_per_cell():
    with pytest.raises(ValueError, match="one embedding row per cell"):
        sg.models.from_module(torch.nn.Flatten(0), ["g0", "g1"])


def _saved(tmp_path):
    _, model = sg.datasets.toy()
    folder = tmp_path / "model"
    model.save(folder)
    return model, folder


def test_gene_order_with_a_byte_order_mark(tmp_path):
    model, folder = _saved(tmp_path)
    path = folder / "gene_order.tsv"
    path.write_text("\ufeff" + path.read_text(encoding="utf-8"), encoding="utf-8")
    assert sg.models.load(folder).gene_order == model.gene_order  # the first gene keeps its name


def test_invalid_layer_sizes_json_names_the_file(tmp_path):
    _, folder = _saved(tmp_path)
    (folder / "layer_sizes.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"layer_sizes.json is not valid JSON.*delete it"):
        sg.models.load(folder)
    (folder / "layer_sizes.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a mapping"):
        sg.models.load(folder)


def test_nan_weights_are_refused(tmp_path):

    model, _ = _saved(tmp_path)
    with torch.no_grad():
        next(model.encoder.parameters())[0, 0] = float("nan")
    model.save(tmp_path / "broken")
    with pytest.raises(ValueError, match="NaN or infinite values"):
        sg.models.load(tmp_path / "broken")


@pytest.mark.parametrize("bad", [None, 5, 2.5, ["pbmc-demo"]])
def test_load_names_what_it_takes(bad):
    with pytest.raises(TypeError, match="takes a model folder or a bundled model's name"):
        sg.models.load(bad)


def test_from_module_wants_a_float32_module():

    genes = [f"g{i}" for i in range(6)]
    with pytest.raises(TypeError, match=r"float64.*\.float\(\)"):
        sg.models.from_module(torch.nn.Linear(6, 3).double(), genes)
    with pytest.raises(TypeError, match="must be a torch.nn.Module, got function"):
        sg.models.from_module(lambda x: x, genes)
