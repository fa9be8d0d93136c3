"""scGPT against its published code (optional: runs where the ``scgpt`` package is installed).

The published package cannot be imported as a whole on a current torch (``scgpt.tokenizer`` needs
torchtext), but its model, binning and collator modules only need torch, numpy and scanpy. Install it
without dependencies to run these tests::

    pip install --no-deps scgpt==0.2.4

The checkpoint is built with scGPT's own ``TransformerModel`` (random weights), saved as its
``state_dict`` next to an ``args.json`` and a ``vocab.json``; the reference embedding is what scGPT's
``get_batch_cell_embeddings`` computes (its dataset adds ``<cls>`` with ``pad_value`` before the
expressed genes, its ``DataCollator`` bins and pads, ``_encode``, the ``<cls>`` output, L2-normalized).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import sparse

import scsig as sg
from scsig.attribution import TargetModule
from scsig.attribution._tokens import token_attributions
from scsig.models._scgpt import expected_bins

N_GENES = 300


class _FlashMHA(torch.nn.Module):
    """Stand-in for flash-attn's ``FlashMHA`` as scGPT uses it: ``Wqkv`` packs q, k, v as (3, heads, d_head);
    ``key_padding_mask`` is True where a key is kept."""

    def __init__(self, embed_dim, num_heads, batch_first=True, attention_dropout=0.0, **kwargs):
        super().__init__()
        self.num_heads, self.batch_first = num_heads, batch_first
        self.Wqkv = torch.nn.Linear(embed_dim, 3 * embed_dim, **kwargs)
        self.out_proj = torch.nn.Linear(embed_dim, embed_dim, **kwargs)

    def forward(self, x, key_padding_mask=None, **kwargs):
        b, n, d = x.shape
        q, k, v = self.Wqkv(x).view(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), None


def _load_published(flash: bool) -> types.SimpleNamespace:
    """The published ``model``, ``preprocess`` and ``data_collator`` modules, without ``scgpt/__init__``.

    ``flash=True`` gives ``model.py`` a flash-attn to import (:class:`_FlashMHA`), so that its
    ``FlashTransformerEncoderLayer`` and the checkpoint layout it saves (``self_attn.Wqkv``) are used.
    """
    spec = importlib.util.find_spec("scgpt")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the published scgpt package is not installed (pip install --no-deps scgpt==0.2.4)")
    root = Path(spec.submodule_search_locations[0])
    names = ("scgpt", "flash_attn")
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in names}
    pkg = types.ModuleType("scgpt")
    pkg.__path__, pkg.logger = [str(root)], logging.getLogger("scGPT")
    sub = types.ModuleType("scgpt.model")
    sub.__path__ = [str(root / "model")]
    sys.modules.update({"scgpt": pkg, "scgpt.model": sub})
    if flash:
        fa, fa_attn = types.ModuleType("flash_attn"), types.ModuleType("flash_attn.flash_attention")
        fa_attn.FlashMHA = _FlashMHA
        sys.modules.update({"flash_attn": fa, "flash_attn.flash_attention": fa_attn})
    mods = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flash_attn is not installed"
            for name, rel in [
                ("scgpt.model.dsbn", "model/dsbn.py"),
                ("scgpt.model.grad_reverse", "model/grad_reverse.py"),
                ("scgpt.model.model", "model/model.py"),
                ("scgpt.preprocess", "preprocess.py"),
                ("scgpt.data_collator", "data_collator.py"),
            ]:
                mspec = importlib.util.spec_from_file_location(name, root / rel)
                module = importlib.util.module_from_spec(mspec)
                sys.modules[name] = module
                mspec.loader.exec_module(module)
                mods[name.rsplit(".", 1)[1]] = module
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in names]:
            del sys.modules[key]
        sys.modules.update(saved)
    assert mods["model"].flash_attn_available == flash
    return types.SimpleNamespace(**mods)


@pytest.fixture(scope="module")
def scgpt():
    """scGPT's published modules (torch's attention layers, as without flash-attn)."""
    return _load_published(flash=False)


@pytest.fixture(scope="module")
def scgpt_flash():
    """scGPT's published modules with a flash-attn to import (its ``FlashTransformerEncoderLayer``)."""
    return _load_published(flash=True)


def _published_model(scgpt, vocab: dict[str, int], seed: int = 0, *, flash: bool = False) -> torch.nn.Module:
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = scgpt.model.TransformerModel(
            ntoken=len(vocab), d_model=32, nhead=4, d_hid=48, nlayers=3, nlayers_cls=3, n_cls=1, vocab=vocab,
            dropout=0.2, pad_token="<pad>", pad_value=-2, do_mvc=True, do_dab=False, use_batch_labels=False,
            domain_spec_batchnorm=False, explicit_zero_prob=False, use_fast_transformer=flash, pre_norm=False,
        )  # fmt: skip
    with torch.no_grad():  # random weights of a trained-looking scale (layer norms near 1)
        for name, p in model.named_parameters():
            scale = 1.0 / max(p.shape[-1], 1) ** 0.5
            p.copy_(torch.randn_like(p) * scale + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    return model.eval()


def _folder(
    scgpt, tmp_path: Path, n_bins: int = 51, *, flash: bool = False
) -> tuple[Path, torch.nn.Module, dict[str, int], list[str]]:
    genes = [f"G{i}" for i in range(N_GENES)]
    ids = np.random.default_rng(1).permutation(N_GENES)  # gene ids not in the data's gene order
    vocab = {g: int(i) for g, i in zip(genes, ids, strict=True)}
    vocab.update({"<pad>": N_GENES, "<cls>": N_GENES + 1, "<eoc>": N_GENES + 2})
    model = _published_model(scgpt, vocab, flash=flash)
    folder = tmp_path / "scgpt_random"
    folder.mkdir()
    args = {
        "embsize": 32, "nheads": 4, "d_hid": 48, "nlayers": 3, "n_layers_cls": 3, "dropout": 0.2,
        "pad_token": "<pad>", "pad_value": -2, "mask_value": -1, "input_style": "binned",
        "input_emb_style": "continuous", "n_bins": n_bins, "max_seq_len": 1200, "fast_transformer": True,
        "MVC": True, "lr": 0.0001, "batch_size": 32,
    }  # fmt: skip
    (folder / "args.json").write_text(json.dumps(args, indent=2))
    (folder / "vocab.json").write_text(json.dumps(vocab, indent=2))
    torch.save(model.state_dict(), folder / "best_model.pt")
    return folder, model, vocab, genes


def _counts(lengths: list[int], seed: int = 2) -> np.ndarray:
    """Raw counts over the genes; each cell's counts are distinct, so scGPT's binning draws no random tie-break."""
    rng = np.random.default_rng(seed)
    x = np.zeros((len(lengths), N_GENES))
    for row, k in zip(x, lengths, strict=True):
        row[rng.choice(N_GENES, size=k, replace=False)] = rng.choice(np.arange(1, 4 * k + 1), size=k, replace=False)
    return x


def _published_embedding(scgpt, model: torch.nn.Module, vocab: dict[str, int], genes: list[str], x: np.ndarray):
    """What scGPT's ``get_batch_cell_embeddings`` computes, with its own collator and ``_encode``."""
    gene_ids = np.array([vocab[g] for g in genes])
    examples = []
    for row in x:
        nz = np.nonzero(row)[0]
        g = np.insert(gene_ids[nz], 0, vocab["<cls>"])
        v = np.insert(row[nz], 0, -2)
        examples.append({"genes": torch.from_numpy(g).long(), "expressions": torch.from_numpy(v).float()})
    collator = scgpt.data_collator.DataCollator(
        do_padding=True, pad_token_id=vocab["<pad>"], pad_value=-2, do_mlm=False, do_binning=True,
        max_length=1200, sampling=True, keep_first_n_tokens=1,
    )  # fmt: skip
    batch = collator(examples)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        out = model._encode(
            batch["gene"], batch["expr"].to(dtype), src_key_padding_mask=batch["gene"].eq(vocab["<pad>"])
        )
    emb = out[:, 0, :].numpy()
    return emb / np.linalg.norm(emb, axis=1, keepdims=True), batch


def _ours(folder: Path, genes: list[str], x: np.ndarray, *, double: bool = False):
    model = sg.models.load(folder)
    order = [genes.index(g) for g in model.gene_order]
    prepared = model.preprocessing.apply(sparse.csr_matrix(x[:, order]))
    if double:
        model.encoder.double()
    return model, prepared, order


@pytest.mark.parametrize("n_bins", [51, 11])
def test_embedding_equals_the_published_pipeline(scgpt, tmp_path, n_bins):
    """Also when args.json's n_bins is not 51: the published collator bins into 51 bins regardless."""
    folder, published, vocab, genes = _folder(scgpt, tmp_path, n_bins)
    x = _counts([3, 40, 250, 17, 120])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # n_bins=11 is named in a warning
        model, prepared, _ = _ours(folder, genes, x, double=True)
        model32, prepared32, _ = _ours(folder, genes, x)
    published.double()
    expected, _ = _published_embedding(scgpt, published, vocab, genes, x)
    with torch.no_grad():
        ours = model.encoder(torch.as_tensor(prepared.toarray(), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-10)
    # and in float32, as users run it
    np.testing.assert_allclose(model32.embed(prepared32), expected, atol=2e-5)


def test_expected_bins_are_the_mean_of_the_published_binning(scgpt):
    rng = np.random.default_rng(5)
    counts = (rng.poisson(rng.gamma(0.4, 4.0, size=150)) + 1).astype(np.float32)  # many tied counts
    np.random.seed(0)  # noqa: NPY002 (the published tie-break draws from numpy's global generator)
    draws = np.array([scgpt.preprocess.binning(counts.copy(), n_bins=51) for _ in range(4000)])
    expected = expected_bins(np.log1p(counts.astype(np.float64)), 51)  # the recipe's log1p keeps the ranks
    assert not np.allclose(expected, np.round(expected))  # some draws were random
    # within 5 standard errors of the draws' mean, gene by gene (0 where a gene's bin is never random)
    tol = 5 * draws.std(axis=0) / np.sqrt(draws.shape[0]) + 1e-9
    assert np.all(np.abs(expected - draws.mean(axis=0)) <= tol)


def test_attributions_equal_captum_on_the_published_module(scgpt, tmp_path):
    from captum.attr import IntegratedGradients

    folder, published, vocab, genes = _folder(scgpt, tmp_path)
    x = _counts([4, 60, 180])
    model, prepared, order = _ours(folder, genes, x, double=True)
    published.double()
    ours = token_attributions(TargetModule(model.encoder), model, prepared, n_steps=24)[0].toarray()
    _, batch = _published_embedding(scgpt, published, vocab, genes, x)
    id_to_col = {vocab[g]: j for j, g in enumerate(model.gene_order)}
    for i in range(x.shape[0]):
        keep = batch["gene"][i] != vocab["<pad>"]
        g, v = batch["gene"][i][keep][None], batch["expr"][i][keep][None].double()

        def target(vals, g=g, v=v, ref=None):
            full = torch.cat([v[:, :1].expand(vals.shape[0], 1), vals], dim=1)
            mask = torch.zeros_like(full, dtype=torch.bool)
            emb = published._encode(g.expand(vals.shape[0], -1), full, src_key_padding_mask=mask)[:, 0]
            emb = emb / torch.linalg.vector_norm(emb, dim=1, keepdim=True)
            return emb if ref is None else (ref * emb).abs().sum(dim=1)

        with torch.no_grad():
            ref = target(v[:, 1:])
        attr = IntegratedGradients(lambda vals, ref=ref, t=target: t(vals, ref=ref)).attribute(
            v[:, 1:], baselines=torch.zeros_like(v[:, 1:]), n_steps=24, method="gausslegendre"
        )
        expected = np.zeros(len(genes))
        expected[[id_to_col[int(t)] for t in g[0, 1:]]] = attr[0].detach().numpy()
        rel = np.abs(ours[i] - expected).sum() / np.abs(expected).sum()
        assert rel < 1e-5, (i, rel)


def test_a_short_cell_is_the_same_alone_or_with_a_long_one(scgpt, tmp_path):
    folder, _, _, genes = _folder(scgpt, tmp_path)
    x = _counts([3, 280])
    model, prepared, _ = _ours(folder, genes, x, double=True)
    both = token_attributions(TargetModule(model.encoder), model, prepared, n_steps=16)[0].toarray()
    alone = token_attributions(TargetModule(model.encoder), model, prepared[:1], n_steps=16)[0].toarray()
    np.testing.assert_allclose(both[:1], alone, rtol=1e-10, atol=1e-14)


def test_flash_attention_layout_equals_the_published_pipeline(scgpt_flash, tmp_path):
    """A checkpoint saved from scGPT's flash-attention layers (``self_attn.Wqkv``), embedded as they compute."""
    folder, published, vocab, genes = _folder(scgpt_flash, tmp_path, flash=True)
    saved = torch.load(folder / "best_model.pt", weights_only=True)
    assert "transformer_encoder.layers.0.self_attn.Wqkv.weight" in saved
    x = _counts([3, 40, 250, 17])
    model, prepared, _ = _ours(folder, genes, x, double=True)
    published.double()
    expected, _ = _published_embedding(scgpt_flash, published, vocab, genes, x)
    with torch.no_grad():
        ours = model.encoder(torch.as_tensor(prepared.toarray(), dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_pre_norm_is_the_published_flash_layers_pre_scheme(scgpt_flash):
    """``ScGPTEncoder(pre_norm=True)``'s layer equals scGPT's ``FlashTransformerEncoderLayer(norm_scheme="pre")``."""
    from scsig.models._tokens import block_forward

    torch.manual_seed(3)
    layer = scgpt_flash.model.FlashTransformerEncoderLayer(16, 4, 24, 0.0, batch_first=True, norm_scheme="pre")
    with torch.no_grad():
        for name, p in layer.named_parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
    layer = layer.double().eval()
    ours = torch.nn.TransformerEncoderLayer(16, 4, 24, dropout=0.0, batch_first=True).double().eval()
    state = {k.replace("self_attn.Wqkv.", "self_attn.in_proj_"): v for k, v in layer.state_dict().items()}
    ours.load_state_dict(state)
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    pad = torch.zeros((2, 7), dtype=torch.bool)
    pad[1, 4:] = True
    with torch.no_grad():
        expected = layer(x, src_key_padding_mask=pad)
        got = block_forward(ours, x, pad, norm="pre_residual_normed")
    torch.testing.assert_close(got[~pad], expected[~pad], rtol=1e-10, atol=1e-12)
