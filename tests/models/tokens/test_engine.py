"""The token engine on an scGPT-layout model: equal to captum, complete, padding- and order-invariant."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import scsig as sg
from scsig.attribution import TargetModule
from scsig.attribution._tokens import token_attributions
from scsig.models._scgpt import load_scgpt

if TYPE_CHECKING:
    from pathlib import Path


def _counts(n_cells: int, n_genes: int, seed: int = 0, rate: float = 1.0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    lam = rng.gamma(0.6, rate, size=(n_cells, n_genes))
    return sparse.csr_matrix(rng.poisson(lam).astype(np.float64))


def _model(tmp_path: Path, write, **kwargs):
    write(tmp_path / "scgpt", **kwargs)
    model = load_scgpt(tmp_path / "scgpt")
    model.encoder.double()
    return model


def _rel_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b).sum(axis=1) / np.maximum(np.abs(b).sum(axis=1), 1e-300)


@pytest.mark.parametrize(
    ("target", "style", "flash"),
    [
        ("self_similarity", "continuous", False),
        ("embedding_distance", "continuous", True),
        ("self_similarity", "category", False),
    ],
)
def test_equals_captum_on_a_dense_wrapper(tmp_path, scgpt_folder, captum_ig, target, style, flash):
    model = _model(tmp_path, scgpt_folder, style=style, flash=flash)
    x = model.preprocessing.apply(_counts(6, model.n_genes)).astype(np.float64)
    attr, t_in, t_base, dropped = token_attributions(TargetModule(model.encoder, target), model, x, n_steps=16)
    ref = captum_ig(model, x, target, n_steps=16)
    assert not dropped.any()
    assert np.abs(ref).sum() > 0
    assert _rel_l1(attr.toarray(), ref).max() <= 1e-5


def test_completeness_converges_with_steps(tmp_path, scgpt_folder):
    model = _model(tmp_path, scgpt_folder)
    x = model.preprocessing.apply(_counts(2, model.n_genes, seed=1)).astype(np.float64)
    module = TargetModule(model.encoder, "embedding_distance")
    gaps = []
    for steps in (4, 32, 1024):
        attr, t_in, t_base, _ = token_attributions(module, model, x, n_steps=steps)
        gaps.append(np.max(np.abs(np.asarray(attr.sum(axis=1)).ravel() - (t_in - t_base)) / np.abs(t_in - t_base)))
    # the value encoder's ReLU kinks slow Gauss-Legendre down, but the gap still shrinks towards 0
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 1e-3


def test_batch_invariance_with_cells_of_very_different_lengths(tmp_path, scgpt_folder, monkeypatch):
    model = _model(tmp_path, scgpt_folder, n_genes=60, max_seq_len=100)
    short = np.zeros((1, 60))
    short[0, [5, 17, 40]] = [1.0, 4.0, 2.0]
    short = sparse.csr_matrix(short)
    long = _counts(5, 60, seed=3, rate=20.0)
    module = TargetModule(model.encoder, "self_similarity")
    x_short = model.preprocessing.apply(sparse.csr_matrix(short)).astype(np.float64)
    x_all = model.preprocessing.apply(sparse.vstack([long[:2], short, long[2:]]).tocsr()).astype(np.float64)
    alone = token_attributions(module, model, x_short, n_steps=8)[0].toarray()[0]
    lengths = np.diff(x_all.indptr)
    assert lengths.max() > 10 * lengths[2]
    batched = token_attributions(module, model, x_all, n_steps=8)[0].toarray()[2]
    np.testing.assert_allclose(batched, alone, rtol=1e-10, atol=1e-14)
    # a budget that splits the path points into several passes changes nothing either
    monkeypatch.setattr(sg.settings, "memory_budget_gb", 2e-3)
    split = token_attributions(module, model, x_all, n_steps=8)[0].toarray()[2]
    np.testing.assert_allclose(split, alone, rtol=1e-10, atol=1e-14)


def test_too_long_cells_keep_their_most_expressed_genes(tmp_path, scgpt_folder):
    model = _model(tmp_path, scgpt_folder, n_genes=20, max_seq_len=6)
    counts = np.zeros((2, 20))
    counts[0, [1, 3, 5, 7, 9, 11, 13, 15]] = [1, 9, 2, 8, 3, 7, 4, 6]  # 8 genes, 5 fit
    counts[1, [2, 4]] = [1, 1]
    x = model.preprocessing.apply(sparse.csr_matrix(counts)).astype(np.float64)
    with pytest.warns(UserWarning, match=r"1 of 2 cells express more genes than the model takes \(5\)"):
        attr, *_, dropped = token_attributions(TargetModule(model.encoder), model, x, n_steps=4)
    assert dropped.tolist() == [3, 0]
    assert sorted(np.flatnonzero(attr.toarray()[0])) == [3, 7, 11, 13, 15]


def _adata(n_genes: int, genes: list[str], seed: int = 0) -> AnnData:
    return AnnData(
        X=_counts(12, n_genes, seed=seed, rate=2.0).astype(np.float32),
        obs=pd.DataFrame(index=[f"c{i}" for i in range(12)]),
        var=pd.DataFrame(index=genes),
    )


def test_attribute_end_to_end_and_independent_of_var_order(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "scgpt", n_genes=30)
    model = sg.models.load(tmp_path / "scgpt")
    adata = _adata(30, model.gene_order)
    sg.tl.attribute(adata, model, n_steps=40, completeness_key="gap")
    layer = adata.layers["attr_ig"]
    record = adata.uns["scsig"]["layers"]["attr_ig"]
    assert record["engine"] == "tokens"
    np.testing.assert_allclose(np.asarray(layer.sum(axis=1)).ravel(), 1000.0, rtol=1e-5)
    assert (layer.toarray()[adata.X.toarray() == 0] == 0).all()
    assert np.nanmedian(adata.obs["gap"]) < 0.01
    perm = np.random.default_rng(1).permutation(30)
    shuffled = adata[:, perm].copy()
    del shuffled.layers["attr_ig"]
    sg.tl.attribute(shuffled, model, n_steps=40)
    np.testing.assert_allclose(shuffled.layers["attr_ig"].toarray(), layer.toarray()[:, perm], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("n_steps", [8, "auto"])
def test_attribute_records_the_genes_dropped_per_cell(tmp_path, scgpt_folder, n_steps):
    scgpt_folder(tmp_path / "scgpt", n_genes=30, max_seq_len=16)  # 15 genes fit beside <cls>
    model = sg.models.load(tmp_path / "scgpt")
    adata = _adata(30, model.gene_order)
    expressed = np.asarray((adata.X > 0).sum(axis=1)).ravel()
    want = np.maximum(expressed - 15, 0)
    assert want.any()
    assert not want.all()
    with pytest.warns(UserWarning, match=rf"{int((want > 0).sum())} of 12 cells express more") as record:
        sg.tl.attribute(adata, model, n_steps=n_steps)
    # one warning per run, not per batch nor from the cells n_steps="auto" tries
    assert sum("express more" in str(w.message) for w in record) == 1
    np.testing.assert_array_equal(adata.obs["attr_ig_n_genes_dropped"], want)
    dropped = adata.uns["scsig"]["layers"]["attr_ig"]["genes_dropped"]
    assert (dropped["n_cells"], dropped["total"], dropped["max"]) == (
        int((want > 0).sum()),
        int(want.sum()),
        int(want.max()),
    )
    assert (np.diff(adata.layers["attr_ig"].indptr) <= 15).all()


def test_other_engines_refuse_token_models(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "scgpt", n_genes=10)
    model = sg.models.load(tmp_path / "scgpt")
    adata = _adata(10, model.gene_order)
    with pytest.raises(ValueError, match="cannot attribute the token transformer ScGPTEncoder"):
        sg.tl.attribute(adata, model, engine="captum")
    with pytest.raises(ValueError, match="DeepLIFT has no rules for attention"):
        sg.tl.attribute(adata, model, method="dl", target="embedding_distance")


def test_input_x_gradient(tmp_path, scgpt_folder):
    model = _model(tmp_path, scgpt_folder)
    x = model.preprocessing.apply(_counts(3, model.n_genes, seed=4)).astype(np.float64)
    module = TargetModule(model.encoder, "embedding_distance")
    attr = token_attributions(module, model, x, method="ixg")[0]
    genes, vals, extras, _ = model.encoder.tokenize(x)
    g, v = torch.as_tensor(genes[0])[None], torch.as_tensor(vals[0])[None].requires_grad_(requires_grad=True)
    pad, ext = torch.zeros_like(g, dtype=torch.bool), torch.zeros((1, 0), dtype=torch.float64)
    with torch.no_grad():
        base = model.encoder.embed_tokens(g, torch.zeros_like(v), pad, ext)
    dist = torch.linalg.vector_norm(model.encoder.embed_tokens(g, v, pad, ext) - base)
    (grad,) = torch.autograd.grad(dist, v)
    np.testing.assert_allclose(attr[0].toarray().ravel()[genes[0]], (grad * v).detach().numpy()[0], rtol=1e-10)


def test_auto_steps_with_the_token_engine(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "scgpt", n_genes=20)
    model = sg.models.load(tmp_path / "scgpt")
    adata = _adata(20, model.gene_order, seed=5)
    sg.tl.attribute(adata, model, n_steps="auto")
    record = adata.uns["scsig"]["layers"]["attr_ig"]
    assert record["n_steps_auto"]
    assert record["n_steps"] in (20, 50, 100, 200, 400, 800)
    assert record["auto_median_gaps"][-1] <= 0.01
    assert record["completeness_gap"]["median"] <= 0.011


def test_crop_ties_go_to_the_earlier_gene_whatever_the_stored_order():
    from scsig.models._tokens import select_tokens

    # one cell, genes 9, 2, 5, 7 stored in that (unsorted) order; values 1, 3, 3, 3: three tied for two places
    x = sparse.csr_matrix((np.array([1.0, 3.0, 3.0, 3.0]), np.array([9, 2, 5, 7]), np.array([0, 4])), shape=(1, 10))
    genes, vals, dropped = select_tokens(x, x, max_genes=2)
    assert genes[0].tolist() == [2, 5]
    assert vals[0].tolist() == [3.0, 3.0]
    assert dropped.tolist() == [2]
    genes, vals, _ = select_tokens(x, x, max_genes=2, crop="first")
    assert genes[0].tolist() == [2, 5]
    genes, vals, _ = select_tokens(x, x * 0 + sparse.csr_matrix(([5.0], ([0], [9])), shape=(1, 10)), max_genes=1)
    assert genes[0].tolist() == [9]  # ranked by the value input, not by x


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("write", ["scgpt_folder", "scfoundation_folder"])
def test_attribute_on_cuda_equals_cpu(tmp_path, write, request):
    """``sg.settings.device = "cuda"`` runs the token engine on the GPU with the CPU's numbers."""
    request.getfixturevalue(write)(tmp_path / "m", n_genes=30)
    model = sg.models.load(tmp_path / "m")
    adata = _adata(30, model.gene_order)
    sg.tl.attribute(adata, model, n_steps=20)
    before = sg.settings.device
    try:
        sg.settings.device = "cuda"
        sg.tl.attribute(adata, model, n_steps=20, key_added="attr_cuda")
    finally:
        sg.settings.device = before
    assert adata.uns["scsig"]["layers"]["attr_cuda"]["engine"] == "tokens"
    np.testing.assert_allclose(
        adata.layers["attr_cuda"].toarray(), adata.layers["attr_ig"].toarray(), rtol=1e-3, atol=1e-3
    )
