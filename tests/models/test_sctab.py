"""scTab-SSL model folders (sc-signature's SSLWrapper layout): loading, attributions equal to captum, bad input."""

from __future__ import annotations

import pickle
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch

import scsig as sg

SIZES = (64, 64, 32, 32, 16)  # the published model: 19,331 -> 512 -> 512 -> 256 -> 256 -> 64


def write_sctab_folder(folder, genes, *, seed=0, filename="classifier", lightning=False, extra_first=False):
    """A random-weight checkpoint in the layout sc-signature's SSLWrapper reads (written without scsig)."""
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"feature_name": genes, "soma_joinid": np.arange(len(genes))}).to_parquet(folder / "var.parquet")
    gen = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    if extra_first:  # e.g. a normalization layer stored ahead of the encoder
        state["norm.weight"] = torch.ones(len(genes))
    width = len(genes)
    for i, out in enumerate(SIZES):
        state[f"encoder.layers.{i}.weight"] = torch.randn(out, width, generator=gen) / np.sqrt(width)
        state[f"encoder.layers.{i}.bias"] = torch.randn(out, generator=gen) * 0.1
        width = out
    # the self-supervised head after the encoder: not part of the attributed model
    state["decoder.0.weight"] = torch.randn(32, width, generator=gen)
    state["decoder.0.bias"] = torch.zeros(32)
    obj = {"state_dict": state, "epoch": 3, "global_step": 100} if lightning else state
    torch.save(obj, folder / filename)
    return folder


@pytest.fixture(scope="module")
def data():
    adata = sg.datasets.kang_muscat()
    return adata[:120].copy()


@pytest.fixture
def genes(data):
    return [*data.var_names[:300], "NOT_A_GENE1", "NOT_A_GENE2"]


def _mlp_from_file(path):
    state = torch.load(path, weights_only=True)
    state = state.get("state_dict", state)
    layers = []
    for i in range(len(SIZES)):
        w, b = state[f"encoder.layers.{i}.weight"], state[f"encoder.layers.{i}.bias"]
        lin = torch.nn.Linear(w.shape[1], w.shape[0])
        lin.weight.data, lin.bias.data = w.clone(), b.clone()
        layers.append(lin)
        if i < len(SIZES) - 1:
            layers.append(torch.nn.SELU())
    return torch.nn.Sequential(*layers).eval()


def _captum_reference(adata, genes, mlp):
    from captum.attr import IntegratedGradients

    counts = pd.DataFrame(adata.X.toarray(), columns=adata.var_names).reindex(columns=genes, fill_value=0).to_numpy()
    totals = counts.sum(axis=1, keepdims=True)
    x = torch.as_tensor(np.log1p(counts / np.where(totals > 0, totals, 1) * 1e4), dtype=torch.float32)
    with torch.no_grad():
        z = mlp(x)

    def target(inp, z):
        return (z * mlp(inp)).abs().sum(1)

    attr = IntegratedGradients(target).attribute(x, baselines=torch.zeros_like(x), additional_forward_args=(z,))
    attr = attr.abs().double().numpy()
    attr = attr / attr.sum(axis=1, keepdims=True) * 1000
    frame = pd.DataFrame(attr, columns=genes)
    return frame.reindex(columns=adata.var_names, fill_value=0).to_numpy()


def test_load_sctab_folder(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes)
    model = sg.models.load(folder)
    assert type(model).__name__ == "SSLModel"
    assert model.gene_order == genes
    assert model.preprocessing.target_sum == 1e4
    assert model.preprocessing.log1p
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == list(SIZES)
    assert sum(isinstance(m, torch.nn.SELU) for m in model.encoder) == 4
    ref = _mlp_from_file(folder / "classifier")
    x = torch.rand(4, len(genes))
    torch.testing.assert_close(model.encoder(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize("engine", ["auto", "fast", "captum"])
def test_attributions_match_captum(tmp_path, genes, data, engine):
    folder = write_sctab_folder(tmp_path / "ssl", genes)
    adata = data.copy()
    sg.tl.attribute(adata, folder, engine=engine, key_added="attr")
    record = adata.uns["scsig"]["layers"]["attr"]
    assert record["engine"] == ("fast" if engine == "auto" else engine)  # auto takes the fast engine for SELU MLPs
    ref = _captum_reference(adata, genes, _mlp_from_file(folder / "classifier"))
    l1 = np.abs(adata.layers["attr"].toarray() - ref).sum(axis=1)
    assert l1.max() <= 1e-2, l1.max()  # 1e-5 of each row's sum (1,000)


def test_lightning_ckpt_layout(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes, filename="last.ckpt", lightning=True)
    model = sg.models.load(folder)
    ref = _mlp_from_file(folder / "last.ckpt")
    x = torch.rand(3, len(genes))
    torch.testing.assert_close(model.encoder(x), ref(x), rtol=0, atol=0)


def test_extra_tensor_before_the_encoder_is_an_error(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes, extra_first=True)
    with pytest.raises(ValueError, match=r"'norm.weight' \(layer 1 of 5\) has shape \(302,\), expected \(out, 302\)"):
        sg.models.load(folder)


def test_missing_tensors_is_an_error(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes)
    state = torch.load(folder / "classifier", weights_only=True)
    keep = OrderedDict((k, v) for k, v in state.items() if k.startswith("encoder.layers.0"))
    torch.save(keep, folder / "classifier")
    with pytest.raises(ValueError, match=r"has 1 '\*.weight' tensors, fewer than the encoder's n_layers=5"):
        sg.models.load(folder)


def test_genes_not_matching_the_checkpoint(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes)
    pd.DataFrame({"feature_name": genes[:-5]}).to_parquet(folder / "var.parquet")
    with pytest.raises(ValueError, match="does not match var.parquet"):
        sg.models.load(folder)


def test_no_checkpoint_is_an_error(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes)
    (folder / "classifier").unlink()
    with pytest.raises(FileNotFoundError, match="no single checkpoint"):
        sg.models.load(folder)


def test_var_without_feature_name(tmp_path, genes):
    folder = write_sctab_folder(tmp_path / "ssl", genes)
    pd.DataFrame({"gene": genes}).to_parquet(folder / "var.parquet")
    with pytest.raises(ValueError, match="no 'feature_name' column"):
        sg.models.load(folder)


def test_pickled_checkpoint_needs_opt_in(tmp_path, genes):
    import argparse

    folder = write_sctab_folder(tmp_path / "ssl", genes, filename="model.ckpt", lightning=True)
    ckpt = torch.load(folder / "model.ckpt", weights_only=True)
    ckpt["hyper_parameters"] = argparse.Namespace(lr=1e-3)
    torch.save(ckpt, folder / "model.ckpt")
    with pytest.raises(pickle.UnpicklingError, match="allow_pickle=True"):
        sg.models.load(folder)
    assert sg.models.load(folder, allow_pickle=True).n_genes == len(genes)


def test_folder_of_neither_format(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model.pt \(a saved scvi-tools model\) or var.parquet \(scTab-SSL"):
        sg.models.load(tmp_path / "empty")
