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
