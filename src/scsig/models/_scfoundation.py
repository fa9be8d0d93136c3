r"""scFoundation's cell-embedding path, read from the published ``models.ckpt`` (no scFoundation code needed).

A cell (raw counts over the model's 19,264 genes) becomes the tokens of its expressed genes with
value :math:`\log(1 + 10^4 c_g / N)` (:math:`N` the cell's total over the model's genes) plus two
depth tokens, T (the targeted resolution; ``resolution="t4"``: 4) and S (:math:`\log_{10} N`),
at positions 19,264 and 19,265. Each token is its value's auto-discretized embedding
(``softmax(alpha h + W_2 h) E`` with ``h = LeakyReLU(W_1 v + b_1)``) plus its position's (gene's)
embedding; a transformer encoder follows. The cell embedding is the concatenation of the S and T
tokens' outputs, the maximum and the mean over the gene tokens (``pool="all"``, 4 x 768 numbers),
or the maximum over all tokens (``pool="max"``).

How integrated gradients sees scFoundation: each expressed gene's value :math:`v_g` is scaled from 0
to its value with the token set and the depth tokens (T, S: the endpoint's) held fixed.

The depth tokens are always tokens: a cell of one count keeps S at :math:`\log_{10} 1 = 0` (the published
script drops every token of value 0 or less, then fails on such a cell). The encoder is post-norm whatever
the config's ``norm_first`` says, as in the published ``select_module``.

Length: the reference embeds every expressed gene. ``max_genes`` caps a cell's gene tokens; a longer
cell keeps its most expressed genes (``crop="most_expressed"``), or with ``crop="first_512"`` its
first 512 expressed genes in the model's gene-list order, as the SIGnature reference tool does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from .._utils._warn import user_stacklevel
from ._base import FoundationModel, Preprocessing
from ._tokens import TokenEncoder, block_forward

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["SCFOUNDATION_CKPT", "SCFOUNDATION_GENES", "ScFoundationEncoder", "load_scfoundation"]

SCFOUNDATION_CKPT = "models.ckpt"
SCFOUNDATION_GENES = "OS_scRNA_gene_index.19264.tsv"
# the encoder fields of the published checkpoints (``seq_len`` and ``norm_first`` are in the released model's config)
_ENCODER_FIELDS = {
    "hidden_dim", "depth", "heads", "dim_head", "module_type", "ff_dropout", "attn_dropout", "seq_len", "norm_first",
}  # fmt: skip
_USED = ("token_emb.", "pos_emb.", "encoder.")


class _AutoBin(nn.Module):
    """Auto-discretization embedding of a continuous value (parameter names as published)."""

    def __init__(self, dim: int, bin_num: int, bin_alpha: float) -> None:
        super().__init__()
        self.mlp, self.mlp2 = nn.Linear(1, bin_num), nn.Linear(bin_num, bin_num)
        self.emb, self.emb_mask, self.emb_pad = nn.Embedding(bin_num, dim), nn.Embedding(1, dim), nn.Embedding(1, dim)
        self.bin_alpha = bin_alpha

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        h = nn.functional.leaky_relu(self.mlp(v.unsqueeze(-1)), 0.1)
        return torch.softmax(self.bin_alpha * h + self.mlp2(h), dim=-1) @ self.emb.weight


class _Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        make = lambda: nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True)  # noqa: E731
        self.transformer_encoder = nn.ModuleList([make() for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)


class ScFoundationEncoder(TokenEncoder):
    r"""scFoundation's encoder up to the pooled cell embedding; parameter names as in ``models.ckpt``.

    Parameters
    ----------
    n_genes
        Genes of the model (19,264); the depth tokens take positions ``n_genes`` and ``n_genes + 1``.
    dim, depth, heads
        Encoder width, layers and heads.
    bin_num, bin_alpha
        The auto-discretization's bins and mixing weight.
    seq_len
        Rows of the position embedding minus one (``seq_len`` of the config).
    max_genes
        Most gene tokens per cell; ``None``: all genes.
    crop
        ``"most_expressed"`` or ``"first_512"`` (see the module docstring).
    resolution
        The T token: ``"t<v>"`` (value ``v``), ``"f<k>"`` (:math:`\log_{10}(k N)`), ``"a<k>"`` (:math:`\log_{10} N + k`).
    pool
        ``"all"`` or ``"max"``.
    """

    n_extras = 2

    def __init__(
        self,
        *,
        n_genes: int,
        dim: int,
        depth: int,
        heads: int,
        bin_num: int,
        bin_alpha: float,
        seq_len: int,
        max_genes: int | None = None,
        crop: Literal["most_expressed", "first_512"] = "most_expressed",
        resolution: str = "t4",
        pool: Literal["all", "max"] = "all",
    ) -> None:
        super().__init__()
        if seq_len < n_genes + 2:
            msg = f"seq_len={seq_len} has no positions for the two depth tokens after {n_genes} genes."
            raise ValueError(msg)
        if crop not in ("most_expressed", "first_512"):
            msg = f"crop={crop!r} is not known; use 'most_expressed' or 'first_512'."
            raise ValueError(msg)
        if resolution[:1] not in ("t", "f", "a") or not _is_number(resolution[1:]):
            msg = f"resolution={resolution!r} must be 't', 'f' or 'a' followed by a number (e.g. 't4')."
            raise ValueError(msg)
        if pool not in ("all", "max"):
            msg = f"pool={pool!r} is not known; use 'all' or 'max'."
            raise ValueError(msg)
        self.token_emb = _AutoBin(dim, bin_num, bin_alpha)
        self.pos_emb = nn.Embedding(seq_len + 1, dim)
        self.encoder = _Transformer(dim, depth, heads)
        self.n_genes, self.resolution, self.pool = n_genes, resolution, pool
        limit = n_genes if max_genes is None else int(max_genes)
        if crop == "first_512":
            limit = min(limit, 512)
        if limit < 1:
            msg = f"max_genes={max_genes} leaves no room for genes next to the two depth tokens."
            raise ValueError(msg)
        self.max_genes, self.crop = limit, "first" if crop == "first_512" else "most_expressed"
        self.d_model, self.n_layers, self.n_heads = dim, depth, heads

    def token_values(self, x: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
        """log1p of counts per 10,000 and the depth tokens (T, S) from the raw counts ``x``."""
        from scipy import sparse

        out = sparse.csr_matrix(x, dtype=np.float64, copy=True)
        totals = np.asarray(out.sum(axis=1)).ravel()
        scale = np.divide(1e4, totals, out=np.zeros_like(totals), where=totals > 0)
        out.data *= np.repeat(scale, np.diff(out.indptr))
        np.log1p(out.data, out=out.data)
        s = np.log10(np.maximum(totals, 1.0))
        kind, k = self.resolution[0], float(self.resolution[1:])
        t = np.full_like(s, k) if kind == "t" else (np.log10(np.maximum(totals, 1.0) * k) if kind == "f" else s + k)
        return out, np.stack([t, s], axis=1)

    def embed_tokens(
        self, genes: torch.Tensor, values: torch.Tensor, pad: torch.Tensor, extras: torch.Tensor
    ) -> torch.Tensor:
        """Pooled embedding of ``[T, S, genes...]`` (attention has no order: the reference's ``[genes..., T, S]``)."""
        n = genes.shape[0]
        depth_ids = torch.tensor([self.n_genes, self.n_genes + 1], device=genes.device).expand(n, 2)
        ids = torch.cat([depth_ids, genes.masked_fill(pad, self.n_genes + 1)], dim=1)
        vals = torch.cat([extras.to(values.dtype), values], dim=1)
        mask = torch.cat([torch.zeros((n, 2), dtype=torch.bool, device=pad.device), pad], dim=1)
        h = self.token_emb(vals) + self.pos_emb(ids)
        for layer in self.encoder.transformer_encoder:
            h = block_forward(layer, h, mask)
        h = self.encoder.norm(h)
        gene_h, keep = h[:, 2:], (~pad).unsqueeze(-1)
        if self.pool == "max":
            return h.masked_fill(mask.unsqueeze(-1), float("-inf")).amax(dim=1)
        count = keep.sum(dim=1).clamp(min=1)
        if gene_h.shape[1] == 0:  # no cell of the batch has genes
            top = torch.zeros_like(h[:, 0])
        else:
            top = gene_h.masked_fill(~keep, float("-inf")).amax(dim=1)
            top = torch.where(keep.any(dim=1), top, torch.zeros_like(top))  # a cell without genes
        mean = (gene_h * keep).sum(dim=1) / count
        return torch.cat([h[:, 1], h[:, 0], top, mean], dim=1)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _flatten_config(config: dict[str, Any]) -> dict[str, Any]:
    """The published nested config (``model_config[model]`` + ``dataset_config["rnaseq"]``) as one dict."""
    if "model_config" not in config:
        return dict(config)
    flat = dict(config["model_config"][config["model"]])
    flat.update(config.get("dataset_config", {}).get("rnaseq", {}))
    flat["model"] = config["model"]
    return flat


def _read_checkpoint(path: Path, key: str, *, allow_pickle: bool) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    if key in raw:
        raw = raw[key]
    elif "config" not in raw:
        msg = f"{path} holds neither a {key!r} model nor a config: its keys are {sorted(raw)[:5]}."
        raise KeyError(msg)
    state = raw.get("state_dict", raw.get("model_state_dict"))
    if state is None:
        msg = f"{path} [{key!r}] has no state_dict."
        raise KeyError(msg)
    # the published keys start with "model." (a Lightning module's attribute)
    state = {k.split("model.", 1)[1] if k.startswith("model.") else k: v for k, v in state.items()}
    return _flatten_config(raw["config"]), {k: v for k, v in state.items() if k.startswith(_USED)}


def _check_config(config: dict[str, Any], path: Path, *, strict: bool) -> None:
    if config.get("model") != "mae_autobin":
        msg = f"{path}: model {config.get('model')!r} is not scFoundation's 'mae_autobin'."
        raise ValueError(msg)
    enc = config.get("encoder", {})
    if enc.get("module_type", "transformer") != "transformer":
        msg = f"{path}: encoder module_type {enc.get('module_type')!r}; scsig reads the 'transformer' encoder."
        raise ValueError(msg)
    unknown = sorted(set(enc) - _ENCODER_FIELDS)
    if unknown and strict:
        msg = (
            f"{path}: encoder config field(s) scsig does not know: {unknown}; pass strict_config=False to ignore them."
        )
        raise ValueError(msg)
    if enc.get("norm_first", False):
        # scFoundation's select_module never passes norm_first on: its encoder is post-norm whatever the config says
        warnings.warn(
            f"{path}: the encoder config says norm_first=True, but scFoundation's published code builds a post-norm "
            "encoder whatever this field says; scsig does the same.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _genes(folder: Path, gene_list: str | Path | None) -> list[str]:
    import pandas as pd

    path = Path(gene_list) if gene_list is not None else folder / SCFOUNDATION_GENES
    if not path.is_file():
        msg = (
            f"scFoundation's gene list {str(path)!r} is missing: put {SCFOUNDATION_GENES} (from the scFoundation "
            "repository, column gene_name) next to models.ckpt or pass gene_list=."
        )
        raise FileNotFoundError(msg)
    return pd.read_csv(path, sep="\t")["gene_name"].astype(str).tolist()


def load_scfoundation(
    path: str | Path,
    *,
    name: str | None = None,
    key: str = "cell",
    gene_list: str | Path | None = None,
    max_genes: int | None = None,
    crop: Literal["most_expressed", "first_512"] = "most_expressed",
    resolution: str = "t4",
    pool: Literal["all", "max"] = "all",
    strict_config: bool = True,
    allow_pickle: bool = False,
) -> FoundationModel:
    """Load scFoundation from its published ``models.ckpt`` (a folder holding it, or the file).

    Parameters
    ----------
    path
        The folder with ``models.ckpt`` and ``OS_scRNA_gene_index.19264.tsv``, or the checkpoint file.
    name
        Identifier recorded in provenance.
    key
        Which of the checkpoint's models: ``"cell"`` (cell embeddings, the default), ``"rde"`` or ``"gene"``.
    gene_list
        The gene list (tab-separated, column ``gene_name``) when it is not next to the checkpoint.
    max_genes, crop, resolution, pool
        See ``ScFoundationEncoder``.
    strict_config
        Refuse encoder config fields scsig does not know.
    allow_pickle
        Permit a checkpoint that needs arbitrary unpickling (off: ``torch.load(..., weights_only=True)``).

    Returns
    -------
    A model on raw counts (its encoder normalizes them) that the token engine attributes.
    """
    path = Path(path)
    folder, ckpt = (path, path / SCFOUNDATION_CKPT) if path.is_dir() else (path.parent, path)
    if not ckpt.is_file():
        msg = f"{str(ckpt)!r} is missing: an scFoundation folder holds {SCFOUNDATION_CKPT} and {SCFOUNDATION_GENES}."
        raise FileNotFoundError(msg)
    config, state = _read_checkpoint(ckpt, key, allow_pickle=allow_pickle)
    _check_config(config, ckpt, strict=strict_config)
    genes = _genes(folder, gene_list)
    enc = config["encoder"]
    encoder = ScFoundationEncoder(
        n_genes=len(genes), dim=int(enc["hidden_dim"]), depth=int(enc["depth"]), heads=int(enc["heads"]),
        bin_num=int(config["bin_num"]), bin_alpha=float(config["bin_alpha"]), seq_len=int(config["seq_len"]),
        max_genes=max_genes, crop=crop, resolution=resolution, pool=pool,
    )  # fmt: skip
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        msg = f"{ckpt} does not fit its config: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}."
        raise ValueError(msg)
    if len(genes) + 2 != int(config["seq_len"]):
        warnings.warn(
            f"The gene list has {len(genes)} genes but the checkpoint's seq_len is {config['seq_len']} (genes + 2 depth tokens).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    recipe = Preprocessing(target_sum=None, log1p=False, requires_counts=True)
    return FoundationModel(encoder, genes, preprocessing=recipe, name=name or folder.name, source=str(ckpt))
