r"""Token-transformer encoders: a cell is its expressed genes as tokens plus the model's special tokens.

A :class:`TokenEncoder` splits a model into two halves that the token engine
(:mod:`scsig.attribution._tokens`) drives separately:

``token_values(x)``
    From the encoder's (preprocessed) input, each gene's *continuous value input* (0 where the gene
    is not expressed) and the values of the model's special tokens (e.g. scFoundation's depth
    tokens), computed once per cell at the endpoint and held fixed.
``embed_tokens(genes, values, pad, extras)``
    The embedding of padded token sequences: ``genes`` are model gene indices, ``values`` the
    continuous value inputs, ``pad`` marks padding. The output of a cell never depends on its
    padding.

``forward(x)`` chains the two for a dense batch (cells x model genes), so the encoder is also an
ordinary dense-input module (``FoundationModel.embed``, the captum path).

When a cell expresses more genes than the model takes, the ``max_genes`` with the largest values are
kept (ties: the earlier gene in the model's order), or with ``crop="first"`` the first ``max_genes``
expressed genes in the model's gene order (what some reference tools do).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["Crop", "TokenEncoder", "block_forward", "select_tokens"]

FORWARD_CELLS = 16
"""Cells per chunk of :meth:`TokenEncoder.forward` (its activations are cells x tokens x width per layer)."""

Crop = Literal["most_expressed", "first"]
"""Which expressed genes a too-long cell keeps."""


def _row(mat: sparse.csr_matrix, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Column indices (ascending) and values of row ``i`` of a CSR matrix."""
    lo, hi = mat.indptr[i], mat.indptr[i + 1]
    idx, data = mat.indices[lo:hi], mat.data[lo:hi]
    order = np.argsort(idx, kind="stable")
    return idx[order].astype(np.int64), data[order]


def select_tokens(
    x: sparse.csr_matrix, values: sparse.csr_matrix, max_genes: int, crop: Crop = "most_expressed"
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Per cell, the model gene indices that become tokens (ascending), their values and the number dropped.

    ``x`` decides which genes are expressed (stored entries > 0); ``values`` holds their value inputs
    and ranks them for ``crop="most_expressed"`` (largest first, ties to the earlier gene in the model's order).
    """
    genes, vals, dropped = [], [], np.zeros(x.shape[0], dtype=np.int64)
    for i in range(x.shape[0]):
        idx, data = _row(x, i)
        idx = idx[data > 0]
        v_idx, v_data = _row(values, i)
        pos = np.minimum(np.searchsorted(v_idx, idx), max(v_idx.size - 1, 0))
        row = np.where(v_idx[pos] == idx, v_data[pos], 0.0) if v_idx.size else np.zeros(idx.size)
        if idx.size > max_genes:
            dropped[i] = idx.size - max_genes
            # "first": list order; else value descending, ties to the earlier gene
            keep = np.arange(max_genes) if crop == "first" else np.sort(np.lexsort((idx, -row))[:max_genes])
            idx, row = idx[keep], row[keep]
        genes.append(idx)
        vals.append(np.asarray(row, dtype=np.float64))
    return genes, vals, dropped


def block_forward(
    layer: nn.TransformerEncoderLayer,
    x: torch.Tensor,
    pad: torch.Tensor,
    *,
    norm: Literal["post", "pre", "pre_residual_normed"] = "post",
    first_only: bool = False,
) -> torch.Tensor:
    """One :class:`torch.nn.TransformerEncoderLayer` (eval mode), with padded keys masked explicitly.

    Computed from the layer's own parameters so that it is differentiable, runs in any dtype and
    never takes torch's nested-tensor fast path; a padded position never changes another's output.
    ``norm`` places the layer norms: ``"post"`` (torch's default), ``"pre"`` (torch's
    ``norm_first=True``) or ``"pre_residual_normed"`` (scGPT's flash-attention layer with
    ``norm_scheme="pre"``: each sublayer's input is normalized and the residual adds to that normalized input).
    ``first_only=True`` returns the first position's output alone, ``(n, 1, d)``: the keys and values
    of every position, the query, attention output and feed-forward of the first (a last layer under a
    ``<cls>`` embedding needs no more).
    """
    attn = layer.self_attn
    n_heads = attn.num_heads
    d = x.shape[-1]

    def self_attention(h: torch.Tensor) -> torch.Tensor:
        b, length, _ = h.shape
        queries = 1 if first_only else length
        w, bias = attn.in_proj_weight, attn.in_proj_bias
        q = F.linear(h[:, :queries], w[:d], None if bias is None else bias[:d])
        kv = F.linear(h, w[d:], None if bias is None else bias[d:])
        q = q.view(b, queries, n_heads, d // n_heads).transpose(1, 2)
        k, v = kv.view(b, length, 2, n_heads, d // n_heads).permute(2, 0, 3, 1, 4)
        # softmax(q k^T / sqrt(d_head)) v over the unpadded keys (torch's fused kernel; exact in float64 too)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        return attn.out_proj(out.transpose(1, 2).reshape(b, queries, d))

    def feed_forward(h: torch.Tensor) -> torch.Tensor:
        return layer.linear2(layer.activation(layer.linear1(h)))

    first = slice(0, 1) if first_only else slice(None)
    if norm == "pre":
        x = x[:, first] + self_attention(layer.norm1(x))
        return x + feed_forward(layer.norm2(x))
    if norm == "pre_residual_normed":
        h = layer.norm1(x)
        x = layer.norm2(h[:, first] + self_attention(h))
        return x + feed_forward(x)
    x = layer.norm1(x[:, first] + self_attention(x))
    return layer.norm2(x + feed_forward(x))


class TokenEncoder(nn.Module):
    """Base of token-transformer encoders; subclasses define ``token_values`` and ``embed_tokens``.

    Attributes
    ----------
    max_genes
        Most gene tokens per cell (the model's maximum length minus its special tokens).
    crop
        Which genes a longer cell keeps, see :data:`Crop`.
    n_extras
        Number of per-cell special-token values ``token_values`` returns.
    d_model, n_layers, n_heads
        Width, depth and heads of the transformer (the engine sizes its batches from them).
    """

    max_genes: int
    crop: Crop = "most_expressed"
    n_extras: int = 0
    d_model: int
    n_layers: int
    n_heads: int

    def token_values(self, x: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
        """Continuous value inputs (CSR, float64, the pattern of ``x``) and special-token values ``(n, n_extras)``."""
        raise NotImplementedError

    def embed_tokens(
        self, genes: torch.Tensor, values: torch.Tensor, pad: torch.Tensor, extras: torch.Tensor
    ) -> torch.Tensor:
        """Embeddings ``(n, d)`` of padded gene-token sequences ``(n, length)``."""
        raise NotImplementedError

    def tokenize(self, x: sparse.csr_matrix) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
        """Per cell: token genes, their values (float64); the special-token values and the number of genes dropped."""
        values, extras = self.token_values(x)
        genes, vals, dropped = select_tokens(x, values, self.max_genes, self.crop)
        return genes, vals, extras, dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed a dense batch (cells x model genes) of the encoder's input (not differentiable in ``x``)."""
        from scipy import sparse

        genes, vals, extras, _ = self.tokenize(sparse.csr_matrix(x.detach().cpu().double().numpy()))
        out = []
        for lo in range(0, len(genes), FORWARD_CELLS):  # padded to each chunk's longest cell
            hi = lo + FORWARD_CELLS
            g, v, pad = pad_tokens(genes[lo:hi], vals[lo:hi], device=x.device, dtype=x.dtype)
            out.append(self.embed_tokens(g, v, pad, torch.as_tensor(extras[lo:hi], dtype=x.dtype, device=x.device)))
        if not out:  # no cells: the embedding width from a cell without genes
            g, v, pad = pad_tokens([np.zeros(0, dtype=np.int64)], [np.zeros(0)], device=x.device, dtype=x.dtype)
            extras = torch.zeros((1, self.n_extras), dtype=x.dtype, device=x.device)
            return self.embed_tokens(g, v, pad, extras)[:0]
        return torch.cat(out)


def pad_tokens(
    genes: list[np.ndarray], values: list[np.ndarray], *, device: torch.device | None = None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad per-cell token lists to one length: (genes, values, pad mask)."""
    n = len(genes)
    length = max((len(g) for g in genes), default=0)
    g = np.zeros((n, length), dtype=np.int64)
    v = np.zeros((n, length), dtype=np.float64)
    pad = np.ones((n, length), dtype=bool)
    for i, (gi, vi) in enumerate(zip(genes, values, strict=True)):
        g[i, : len(gi)] = gi
        v[i, : len(vi)] = vi
        pad[i, : len(gi)] = False
    return (
        torch.as_tensor(g, device=device),
        torch.as_tensor(v, dtype=dtype, device=device),
        torch.as_tensor(pad, device=device),
    )
