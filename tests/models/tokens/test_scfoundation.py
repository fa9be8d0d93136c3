"""scFoundation: the published checkpoint layout, depth tokens, pooling, crop, exactness and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import scsig as sg
from scsig.attribution import TargetModule
from scsig.attribution._tokens import token_attributions
from scsig.models._scfoundation import ScFoundationEncoder, load_scfoundation


def _counts(n_cells: int, n_genes: int, seed: int = 0, rate: float = 1.0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    return sparse.csr_matrix(rng.poisson(rng.gamma(0.6, rate, size=(n_cells, n_genes))).astype(np.float64))


def _reference_embedding(enc: ScFoundationEncoder, counts: np.ndarray) -> torch.Tensor:
    """One cell as the reference script builds it: [expressed genes..., T, S], torch's layers, pooled from the end."""
    total = counts.sum()
    x = np.r_[np.log1p(counts / total * 1e4), 4.0, np.log10(total)]
    keep = np.flatnonzero(x > 0)
    vals = torch.as_tensor(x[keep], dtype=torch.float64)[None]
    h = enc.token_emb(vals) + enc.pos_emb(torch.as_tensor(keep)[None])
    for layer in enc.encoder.transformer_encoder:
        h = layer(h)
    h = enc.encoder.norm(h)
    return torch.cat([h[:, -1], h[:, -2], h[:, :-2].amax(dim=1), h[:, :-2].mean(dim=1)], dim=1)[0]


def test_published_layout_and_reference_embedding(tmp_path, scfoundation_folder):
    genes = scfoundation_folder(tmp_path / "f", n_genes=30)
    model = sg.models.load(tmp_path / "f")
    assert isinstance(model.encoder, ScFoundationEncoder)
    assert model.gene_order == genes
    enc = model.encoder.double()
    counts = _counts(3, 30, seed=4, rate=3.0)
    ours = enc(torch.as_tensor(counts.toarray()))
    for i in range(3):
        torch.testing.assert_close(
            ours[i], _reference_embedding(enc, counts[i].toarray().ravel()), rtol=1e-9, atol=1e-10
        )


def test_the_released_config_loads_by_default(tmp_path, scfoundation_folder):
    """The released models.ckpt's encoder config has seq_len and norm_first; the default strict load takes them."""
    scfoundation_folder(tmp_path / "f", n_genes=12)
    raw = torch.load(tmp_path / "f" / "models.ckpt", weights_only=True)
    encoder = raw["cell"]["config"]["model_config"]["mae_autobin"]["encoder"]
    assert {"seq_len", "norm_first"} <= set(encoder)
    for key in ("cell", "rde", "gene"):
        assert isinstance(load_scfoundation(tmp_path / "f", key=key).encoder, ScFoundationEncoder)


def test_norm_first_is_ignored_as_published(tmp_path, scfoundation_folder):
    """scFoundation's select_module never passes norm_first on: a post-norm encoder either way, with a warning."""
    scfoundation_folder(tmp_path / "a", n_genes=12)
    scfoundation_folder(tmp_path / "b", n_genes=12, encoder_extra={"norm_first": True})
    x = torch.as_tensor(_counts(2, 12, seed=3, rate=4.0).toarray())
    post = load_scfoundation(tmp_path / "a").encoder.double()
    with pytest.warns(UserWarning, match="norm_first=True.*post-norm"):
        flagged = load_scfoundation(tmp_path / "b").encoder.double()
    torch.testing.assert_close(flagged(x), post(x), rtol=0, atol=0)


def test_a_cell_of_one_count(tmp_path, scfoundation_folder):
    """log10(1) = 0: the S token keeps the value 0 (the published script drops it and stops with an error)."""
    scfoundation_folder(tmp_path / "f", n_genes=10)
    enc = load_scfoundation(tmp_path / "f").encoder.double()
    one = sparse.csr_matrix(np.eye(1, 10, 4))
    _, extras = enc.token_values(one)
    np.testing.assert_array_equal(extras, [[4.0, 0.0]])
    assert torch.isfinite(enc(torch.as_tensor(one.toarray()))).all()


def test_depth_tokens(tmp_path, scfoundation_folder):
    scfoundation_folder(tmp_path / "f", n_genes=10)
    counts = sparse.csr_matrix(np.array([[0, 10, 90, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float64))
    for resolution, t in (("t4", 4.0), ("f2", np.log10(200)), ("a0.5", 2.5)):
        enc = load_scfoundation(tmp_path / "f", resolution=resolution).encoder
        values, extras = enc.token_values(counts)
        np.testing.assert_allclose(extras, [[t, 2.0]])
        np.testing.assert_allclose(values.data, np.log1p([1000.0, 9000.0]))


@pytest.mark.parametrize("target", ["self_similarity", "embedding_distance"])
def test_equals_captum_on_a_dense_wrapper(tmp_path, scfoundation_folder, captum_ig, target):
    scfoundation_folder(tmp_path / "f", n_genes=30)
    model = sg.models.load(tmp_path / "f")
    model.encoder.double()
    x = _counts(5, 30, seed=5, rate=2.0)
    attr, t_in, t_base, _ = token_attributions(TargetModule(model.encoder, target), model, x, n_steps=16)
    ref = captum_ig(model, x, target, n_steps=16)
    assert np.abs(ref).sum() > 0
    rel = np.abs(attr.toarray() - ref).sum(axis=1) / np.abs(ref).sum(axis=1)
    assert rel.max() <= 1e-5


def test_batch_invariance(tmp_path, scfoundation_folder):
    scfoundation_folder(tmp_path / "f", n_genes=60)
    model = sg.models.load(tmp_path / "f")
    model.encoder.double()
    short = np.zeros((1, 60))
    short[0, [3, 50]] = [2, 5]
    x = sparse.vstack([_counts(3, 60, seed=6, rate=30.0), sparse.csr_matrix(short)]).tocsr()
    module = TargetModule(model.encoder)
    alone = token_attributions(module, model, x[3:], n_steps=8)[0].toarray()
    batched = token_attributions(module, model, x, n_steps=8)[0].toarray()[3:]
    assert np.diff(x.indptr).max() > 10 * 2
    np.testing.assert_allclose(batched, alone, rtol=1e-10, atol=1e-14)


def test_crop_first_512_reproduces_the_reference_tool(tmp_path, scfoundation_folder):
    scfoundation_folder(tmp_path / "f", n_genes=600, dim=8, depth=1)
    rng = np.random.default_rng(7)
    counts = np.zeros((1, 600))
    expressed = np.sort(rng.choice(600, size=550, replace=False))
    counts[0, expressed] = rng.integers(1, 50, size=550)
    x = sparse.csr_matrix(counts)
    first = load_scfoundation(tmp_path / "f", crop="first_512").encoder
    genes, _, _, dropped = first.tokenize(x)
    np.testing.assert_array_equal(genes[0], expressed[:512])
    assert dropped.tolist() == [38]
    default = load_scfoundation(tmp_path / "f", max_genes=512).encoder
    genes, _, _, _ = default.tokenize(x)
    kept = counts[0, genes[0]]
    assert kept.min() >= np.sort(counts[0, expressed])[::-1][511]  # the 512 most expressed
    assert load_scfoundation(tmp_path / "f").encoder.tokenize(x)[3].tolist() == [0]  # default: every gene


def test_attribute_end_to_end(tmp_path, scfoundation_folder):
    genes = scfoundation_folder(tmp_path / "f", n_genes=30)
    model = sg.models.load(tmp_path / "f")
    x = _counts(8, 30, seed=8, rate=3.0).astype(np.float32)
    adata = AnnData(X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(8)]), var=pd.DataFrame(index=genes[::-1]))
    adata.X = x[:, ::-1].tocsr()
    sg.tl.attribute(adata, model, n_steps=128, completeness_key="gap")
    layer = adata.layers["attr_ig"].toarray()
    np.testing.assert_allclose(layer.sum(axis=1), 1000.0, rtol=1e-5)
    assert (layer[adata.X.toarray() == 0] == 0).all()
    assert adata.uns["scsig"]["layers"]["attr_ig"]["engine"] == "tokens"
    assert np.nanmedian(adata.obs["gap"]) < 0.01
    perm = np.random.default_rng(2).permutation(30)
    shuffled = adata[:, perm].copy()
    sg.tl.attribute(shuffled, model, n_steps=128, key_added="again")
    np.testing.assert_allclose(shuffled.layers["again"].toarray(), layer[:, perm], rtol=1e-4, atol=1e-3)


def test_bad_input(tmp_path, scfoundation_folder):
    scfoundation_folder(tmp_path / "a", n_genes=5, gene_file=False)
    with pytest.raises(FileNotFoundError, match="gene list"):
        sg.models.load(tmp_path / "a")
    scfoundation_folder(tmp_path / "b", n_genes=5, encoder_extra={"rotary": True})
    with pytest.raises(ValueError, match=r"does not know: \['rotary'\]"):
        sg.models.load(tmp_path / "b")
    assert load_scfoundation(tmp_path / "b", strict_config=False).n_genes == 5
    with pytest.raises(ValueError, match="max_genes=0 leaves no room"):
        load_scfoundation(tmp_path / "b", strict_config=False, max_genes=0)
    with pytest.raises(ValueError, match="resolution='x4'"):
        load_scfoundation(tmp_path / "b", strict_config=False, resolution="x4")
    with pytest.raises(FileNotFoundError, match="models.ckpt"):
        load_scfoundation(tmp_path / "nothing")


def test_cells_without_genes(tmp_path, scfoundation_folder):
    genes = scfoundation_folder(tmp_path / "f", n_genes=20)
    model = sg.models.load(tmp_path / "f")
    assert model.embed(np.zeros((3, 20), dtype=np.float32)).shape == (3, 64)  # a batch without any gene token
    assert tuple(model.encoder(torch.zeros((0, 20))).shape) == (0, 64)
    x = _counts(4, 20, seed=9, rate=3.0).toarray()
    x[1] = 0
    adata = AnnData(X=sparse.csr_matrix(x.astype(np.float32)), var=pd.DataFrame(index=genes))
    with pytest.warns(UserWarning, match="1 cells have zero counts"):
        sg.tl.attribute(adata, model, n_steps=64, batch_size=1)
    sums = np.asarray(adata.layers["attr_ig"].sum(axis=1)).ravel()
    np.testing.assert_allclose(sums, [1000.0, 0.0, 1000.0, 1000.0], rtol=1e-5)
