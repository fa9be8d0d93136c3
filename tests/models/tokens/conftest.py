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


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setattr(sg.settings, "n_jobs", 1)
    torch.set_num_threads(1)


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
    n_bins: int = 11,
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
