"""Synthesised checkpoints in the published layouts of token-transformer models (scGPT, scFoundation)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from torch import nn

import scsig as sg

if TYPE_CHECKING:
    from pathlib import Path

    from scipy import sparse


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setattr(sg.settings, "n_jobs", 1)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)  # later tests run with the threads they would have had


@pytest.fixture
def scgpt_folder():
    """The writer of scGPT folders, :func:`write_scgpt_folder`."""
    return write_scgpt_folder


def write_scgpt_folder(
    folder: Path,
    *,
    n_genes: int = 30,
    d: int = 16,
    heads: int = 2,
    layers: int = 2,
    n_bins: int = 51,
    max_seq_len: int = 64,
    style: str = "continuous",
    flash: bool = False,
    seed: int = 0,
    extra_args: dict | None = None,
) -> list[str]:
    """An scGPT folder (args.json, vocab.json, best_model.pt) with random weights; returns the gene names."""
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    genes = [f"G{i}" for i in range(n_genes)]
    # special tokens at the end and the genes shuffled in id space, as in the published vocabulary
    ids = np.random.default_rng(seed).permutation(n_genes)
    vocab = {g: int(i) for g, i in zip(genes, ids, strict=True)}
    vocab.update({"<pad>": n_genes, "<cls>": n_genes + 1, "<eoc>": n_genes + 2})
    args = {
        "embsize": d, "nheads": heads, "d_hid": 2 * d, "nlayers": layers, "n_bins": n_bins, "pad_token": "<pad>",
        "pad_value": -2, "mask_value": -1, "input_style": "binned", "input_emb_style": style,
        "max_seq_len": max_seq_len, "dropout": 0.2, "fast_transformer": flash, "lr": 1e-4, "MVC": True,
    }  # fmt: skip
    if style == "category":  # the <cls> value must then be a bin index
        args["pad_value"] = n_bins
    args.update(extra_args or {})
    rnd = lambda *shape: torch.randn(*shape, generator=gen) * 0.5  # noqa: E731
    state = {
        "encoder.embedding.weight": rnd(n_genes + 3, d),
        "encoder.enc_norm.weight": 1 + 0.1 * rnd(d),
        "encoder.enc_norm.bias": 0.1 * rnd(d),
        "decoder.fc.0.weight": rnd(d, d),  # a head that is not on the cell-embedding path
    }
    if style == "continuous":
        state.update({
            "value_encoder.linear1.weight": rnd(d, 1), "value_encoder.linear1.bias": rnd(d),
            "value_encoder.linear2.weight": rnd(d, d) / d**0.5, "value_encoder.linear2.bias": rnd(d),
            "value_encoder.norm.weight": 1 + 0.1 * rnd(d), "value_encoder.norm.bias": 0.1 * rnd(d),
        })  # fmt: skip
    elif style == "category":
        state.update({
            "value_encoder.embedding.weight": rnd(n_bins + 2, d),
            "value_encoder.enc_norm.weight": 1 + 0.1 * rnd(d), "value_encoder.enc_norm.bias": 0.1 * rnd(d),
        })  # fmt: skip
    for i in range(layers):
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True)
        for key, value in layer.state_dict().items():
            value = rnd(*value.shape) / max(value.shape[-1], 1) ** 0.5 + (
                1.0 if key.startswith("norm") and key.endswith("weight") else 0.0
            )
            if flash:
                key = key.replace("self_attn.in_proj_", "self_attn.Wqkv.")
            state[f"transformer_encoder.layers.{i}.{key}"] = value
    (folder / "args.json").write_text(json.dumps(args))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    torch.save(state, folder / "best_model.pt")
    return genes


def write_scfoundation_folder(
    folder: Path,
    *,
    n_genes: int = 30,
    dim: int = 16,
    heads: int = 2,
    depth: int = 2,
    bin_num: int = 10,
    seed: int = 0,
    encoder_extra: dict | None = None,
    gene_file: bool = True,
) -> list[str]:
    """An scFoundation folder as published: models.ckpt, the gene list; returns the genes.

    ``models.ckpt`` holds, per key (``gene``, ``cell``, ``rde``), the nested config that scFoundation's
    ``load.py`` (``convertconfig``) reads and a state dict with ``model.`` prefixes, decoder weights included.
    """
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen) * 0.5  # noqa: E731
    genes = [f"G{i}" for i in range(n_genes)]
    seq_len = n_genes + 2
    dec = 8  # the performer decoder's width: its weights are in the file but not on the cell-embedding path
    state = {
        "model.token_emb.mlp.weight": rnd(bin_num, 1), "model.token_emb.mlp.bias": rnd(bin_num),
        "model.token_emb.mlp2.weight": rnd(bin_num, bin_num), "model.token_emb.mlp2.bias": rnd(bin_num),
        "model.token_emb.emb.weight": rnd(bin_num, dim), "model.token_emb.emb_mask.weight": rnd(1, dim),
        "model.token_emb.emb_pad.weight": rnd(1, dim), "model.pos_emb.weight": rnd(seq_len + 1, dim),
        "model.encoder.norm.weight": 1 + 0.1 * rnd(dim), "model.encoder.norm.bias": 0.1 * rnd(dim),
        "model.decoder_embed.weight": rnd(dec, dim), "model.decoder_embed.bias": rnd(dec),
        "model.norm.weight": 1 + 0.1 * rnd(dec), "model.norm.bias": rnd(dec),  # MaeAutobin's decoder norm
        "model.to_final.weight": rnd(1, dec), "model.to_final.bias": rnd(1),
        "model.decoder.performer.net.layers.0.0.fn.to_q.weight": rnd(dec, dec),
        "model.decoder.performer.net.layers.0.0.fn.fast_attention.projection_matrix": rnd(11, 4),
        "model.decoder.performer.calls_since_last_redraw": torch.tensor(0),
        "model.decoder.norm.weight": 1 + 0.1 * rnd(dec), "model.decoder.norm.bias": rnd(dec),
    }  # fmt: skip
    for i in range(depth):
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)
        for key, value in layer.state_dict().items():
            scale = max(value.shape[-1], 1) ** 0.5
            offset = 1.0 if key.startswith("norm") and key.endswith("weight") else 0.0
            state[f"model.encoder.transformer_encoder.{i}.{key}"] = rnd(*value.shape) / scale + offset
    # the fields of the released checkpoint's config (as scFoundation's load.py prints it after convertconfig)
    encoder = {
        "hidden_dim": dim, "depth": depth, "heads": heads, "dim_head": dim // heads, "seq_len": seq_len,
        "module_type": "transformer", "norm_first": False,
    }  # fmt: skip
    encoder.update(encoder_extra or {})
    decoder = {
        "hidden_dim": dec, "depth": 1, "heads": 2, "dim_head": 4, "module_type": "performer", "seq_len": seq_len,
        "norm_first": False,
    }  # fmt: skip
    config = {
        "model": "mae_autobin",
        "model_config": {
            "mae_autobin": {
                "mask_gene_name": False,
                "gene_num": seq_len,
                "seq_len": seq_len,
                "encoder": encoder,
                "decoder": decoder,
                "n_class": 104,
                "pad_token_id": 103,
                "mask_token_id": 102,
                "bin_num": bin_num,
                "bin_alpha": 1.0,
                "rawcount": True,
                "model": "mae_autobin",
            }  # fmt: skip
        },
        "dataset_config": {
            "rnaseq": {"num_tokens": 13, "bin_type": "auto_bin", "mae_encoder_max_seq_len": 15000, "mask_prob": 0.3}
        },
    }
    ckpt = {key: {"config": config, "state_dict": state} for key in ("gene", "cell", "rde")}
    torch.save(ckpt, folder / "models.ckpt")
    if gene_file:
        pd.DataFrame({"index": range(n_genes), "gene_name": genes}).to_csv(
            folder / "OS_scRNA_gene_index.19264.tsv", sep="\t", index=False
        )
    return genes


@pytest.fixture
def scfoundation_folder():
    """The writer of scFoundation folders, :func:`write_scfoundation_folder`."""
    return write_scfoundation_folder


class _DenseValues(torch.nn.Module):
    """A dense-input module over all model genes whose token set (one cell's) is fixed."""

    def __init__(self, enc, genes: np.ndarray, extras: np.ndarray, target: str) -> None:
        super().__init__()
        self.enc, self.genes, self.target = enc, torch.as_tensor(genes), target
        self.extras = torch.as_tensor(extras, dtype=torch.float64)[None]

    def embed(self, dense: torch.Tensor) -> torch.Tensor:
        n = dense.shape[0]
        vals = dense[:, self.genes]
        pad = torch.zeros_like(vals, dtype=torch.bool)
        return self.enc.embed_tokens(self.genes.expand(n, -1), vals, pad, self.extras.expand(n, -1))

    def forward(self, dense: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        emb = self.embed(dense)
        if self.target == "embedding_distance":
            return torch.linalg.vector_norm(emb - ref, dim=1)
        return torch.sum(torch.abs(ref * emb), dim=1)


def captum_rows(model, x: sparse.csr_matrix, target: str, n_steps: int) -> np.ndarray:
    """Integrated gradients of each cell by captum on :class:`_DenseValues` (float64 model), cells x genes."""
    from captum.attr import IntegratedGradients

    enc = model.encoder
    genes, vals, extras, _ = enc.tokenize(x)
    out = np.zeros(x.shape, dtype=np.float64)
    for i, (g, v) in enumerate(zip(genes, vals, strict=True)):
        wrapper = _DenseValues(enc, g, extras[i], target)
        dense = torch.zeros((1, x.shape[1]), dtype=torch.float64)
        dense[0, g] = torch.as_tensor(v)
        with torch.no_grad():
            ref = wrapper.embed(dense if target == "self_similarity" else torch.zeros_like(dense))
        ig = IntegratedGradients(wrapper, multiply_by_inputs=True)
        attr = ig.attribute(
            dense, baselines=torch.zeros_like(dense), additional_forward_args=(ref,), n_steps=n_steps,
            method="gausslegendre",
        )  # fmt: skip
        out[i] = attr.detach().numpy()[0]
    return out


@pytest.fixture
def captum_ig():
    """:func:`captum_rows`: captum's integrated gradients on a dense wrapper with the token set fixed."""
    return captum_rows
