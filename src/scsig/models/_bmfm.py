r"""BMFM-RNA's cell-embedding path (the scBERT checkpoints), read from the published folder; no ``bmfm_targets`` needed.

A cell is ``[CLS]``, its expressed genes and ``[SEP]``; each token is the sum of two field
embeddings, its gene's (``genes_embeddings``) and its expression value's, then a LayerNorm and a
post-norm BERT encoder (no position embeddings in the published scBERT checkpoints: a cell is a set
of genes). The value embedding (``mlp_with_special_token_embedding``) is
:math:`W_2\,\sigma(\sigma(W_1 v + b_1)) + b_2` with :math:`\sigma` a LeakyReLU for a gene's value
:math:`v`, and :math:`W_2\,\sigma(e_s) + b_2` with a learned vector :math:`e_s` for ``[CLS]``,
``[SEP]``, padding and (``zero_as_special_token``) a value of exactly 0. The cell embedding is the
``[CLS]`` output (``pool="first_token"``), ``tanh`` of the pooler on it (``"pooling_layer"``) or the
mean over the other tokens (``"mean_pooling"``); by default the one the checkpoint's
``trainer_config.pooling_method`` names, as BMFM's own inference does (``"pooling_layer"`` when the
checkpoint does not say; the ``[CLS]`` output when it has no trained pooler).

Values: BMFM's ``log_normalize`` transform, :math:`v_g = \log(1 + 10^4 c_g / (N + 1))` with
:math:`N` the sum of all the cell's counts over the model's genes: BMFM's inference normalizes the
cell before its tokenizer cuts it to ``max_length`` (``max_mfi_data_len=None``).

How integrated gradients sees BMFM-RNA: each expressed gene's value :math:`v_g` is scaled from 0 to
its value with the token set and :math:`N` fixed. Every Gauss-Legendre point lies inside
:math:`(0, 1)`, so the path runs through the value MLP, the model's own continuous function of
:math:`v`; the baseline :math:`t(0)` of completeness is that function's limit at 0 (the MLP at
:math:`v = 0`), not the learned zero token the model would use for a value of exactly 0 (a jump no
path integral can see; the zero token only marks unexpressed genes in training).

Length: the published inference keeps the first ``max_length - 2`` genes in the order of
``adata.var``; scsig keeps the most expressed (ties: the earlier gene in the vocabulary order).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ._base import FoundationModel, Preprocessing
from ._tokens import TokenEncoder

if TYPE_CHECKING:
    from collections.abc import Sequence

    from scipy import sparse

__all__ = ["BMFM_TOKENIZERS", "BmfmEncoder", "load_bmfm"]

Pool = Literal["first_token", "pooling_layer", "mean_pooling"]
_POOLS = ("first_token", "pooling_layer", "mean_pooling")
_ACTIVATIONS = {
    "gelu": lambda h: F.gelu(h),
    "relu": F.relu,
    "silu": F.silu,
    "gelu_new": lambda h: F.gelu(h, approximate="tanh"),
}


class _ValueEncoder(nn.Module):
    """BMFM's ``ContinuousValueEncoderWithSpecialTokenEmbeddings`` (parameter names as published)."""

    def __init__(self, d_model: int, n_special: int, hidden: int = 128) -> None:
        super().__init__()
        self.dense_1, self.dense_2 = nn.Linear(1, hidden), nn.Linear(hidden, d_model)
        self.special_token_embeddings = nn.Embedding(n_special, hidden)

    def forward(self, values: torch.Tensor, special: torch.Tensor) -> torch.Tensor:
        """Embeddings of ``values`` (continuous) where ``special < 0``, of special row ``special`` elsewhere."""
        h = F.leaky_relu(self.dense_1(values.unsqueeze(-1)))
        rows = self.special_token_embeddings(special.clamp(min=0)).to(h.dtype)
        h = torch.where((special >= 0).unsqueeze(-1), rows, h)
        return self.dense_2(F.leaky_relu(h))


class _Embeddings(nn.Module):
    def __init__(self, n_tokens: int, d_model: int, n_special: int, eps: float) -> None:
        super().__init__()
        self.genes_embeddings = nn.Embedding(n_tokens, d_model)
        self.expressions_embeddings = _ValueEncoder(d_model, n_special)
        self.LayerNorm = nn.LayerNorm(d_model, eps=eps)


class _Dense(nn.Module):
    """``dense`` + ``LayerNorm`` blocks of BERT (names as published)."""

    def __init__(self, d_in: int, d_out: int, eps: float | None) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.query, self.key, self.value = (nn.Linear(d_model, d_model) for _ in range(3))


class _Attention(nn.Module):
    def __init__(self, d_model: int, eps: float) -> None:
        super().__init__()
        self.self = _SelfAttention(d_model)
        self.output = _Dense(d_model, d_model, eps)


class _Layer(nn.Module):
    def __init__(self, d_model: int, d_ff: int, eps: float) -> None:
        super().__init__()
        self.attention = _Attention(d_model, eps)
        self.intermediate = _Dense(d_model, d_ff, None)
        self.output = _Dense(d_ff, d_model, eps)


class _Encoder(nn.Module):
    def __init__(self, d_model: int, d_ff: int, n_layers: int, eps: float) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Layer(d_model, d_ff, eps) for _ in range(n_layers)])


class BmfmEncoder(TokenEncoder):
    """BMFM-RNA's scBERT encoder up to the cell embedding; parameter names as in the checkpoint (``scbert.``).

    Parameters
    ----------
    n_tokens
        Size of the genes vocabulary (rows of ``genes_embeddings``).
    gene_token_ids
        Vocabulary id of each model gene (the model's gene order).
    cls_id, sep_id, pad_id
        Ids of ``[CLS]``, ``[SEP]`` and ``[PAD]`` in the genes vocabulary.
    cls_row, sep_row, pad_row
        Their rows in the value encoder's special-token embedding (their ids in the expressions vocabulary).
    n_special
        Rows of the special-token embedding.
    d_model, n_heads, d_ff, n_layers
        Width, heads, feed-forward width and depth.
    layer_norm_eps
        The LayerNorms' epsilon.
    activation
        The feed-forward activation (``hidden_act``).
    max_length
        Most tokens per cell, ``[CLS]`` and ``[SEP]`` included (the published inference: 1,024).
    pool
        ``"first_token"``, ``"pooling_layer"`` or ``"mean_pooling"``.
    target_sum
        The normalization's total (10,000).
    """

    n_extras = 0

    def __init__(
        self,
        *,
        n_tokens: int,
        gene_token_ids: np.ndarray,
        cls_id: int,
        sep_id: int,
        pad_id: int,
        cls_row: int,
        sep_row: int,
        pad_row: int,
        n_special: int,
        d_model: int,
        n_heads: int,
        d_ff: int,
        n_layers: int,
        layer_norm_eps: float = 1e-12,
        activation: str = "gelu",
        max_length: int = 1024,
        pool: Pool = "first_token",
        target_sum: float = 1e4,
    ) -> None:
        super().__init__()
        if max_length < 3:
            msg = f"max_length={max_length} leaves no room for genes: BMFM-RNA's [CLS] and [SEP] take two positions."
            raise ValueError(msg)
        if pool not in _POOLS:
            msg = f"pool={pool!r} is not known; use 'first_token', 'pooling_layer' or 'mean_pooling'."
            raise ValueError(msg)
        if activation not in _ACTIVATIONS:
            msg = f"BMFM-RNA hidden_act={activation!r} is not known; scsig reads {sorted(_ACTIVATIONS)}."
            raise ValueError(msg)
        if d_model % n_heads:
            msg = f"hidden_size={d_model} is not a multiple of num_attention_heads={n_heads}."
            raise ValueError(msg)
        self.embeddings = _Embeddings(n_tokens, d_model, n_special, layer_norm_eps)
        self.encoder = _Encoder(d_model, d_ff, n_layers, layer_norm_eps)
        self.pooler = _Dense(d_model, d_model, None) if pool == "pooling_layer" else None
        self.register_buffer(
            "gene_token_ids", torch.as_tensor(np.asarray(gene_token_ids), dtype=torch.long), persistent=False
        )
        self.cls_id, self.sep_id, self.pad_id = int(cls_id), int(sep_id), int(pad_id)
        self.rows = (int(cls_row), int(sep_row), int(pad_row))
        self.activation, self.pool, self.target_sum = activation, pool, float(target_sum)
        self.max_genes, self.d_model, self.n_layers, self.n_heads = max_length - 2, d_model, n_layers, n_heads

    def token_values(self, x: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
        """``log1p(1e4 c / (N + 1))`` of every expressed gene, ``N`` the cell's total over all model genes (before the length cut)."""
        from scipy import sparse

        out = sparse.csr_matrix(x, dtype=np.float64, copy=True)
        out.data[out.data < 0] = 0
        totals = np.asarray(out.sum(axis=1)).ravel() + 1.0
        out.data = np.log1p(self.target_sum * out.data / np.repeat(totals, np.diff(out.indptr)))
        return out, np.zeros((x.shape[0], 0))

    def _layer(self, layer: _Layer, h: torch.Tensor, keep: torch.Tensor, *, first_only: bool = False) -> torch.Tensor:
        """One post-norm BERT layer (eval mode); padded keys masked; ``first_only``: the ``[CLS]`` output alone."""
        b, length, d = h.shape
        att = layer.attention.self
        queries = 1 if first_only else length
        q = att.query(h[:, :queries]).view(b, queries, self.n_heads, d // self.n_heads).transpose(1, 2)
        k, v = (m(h).view(b, length, self.n_heads, d // self.n_heads).transpose(1, 2) for m in (att.key, att.value))
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        ctx = ctx.transpose(1, 2).reshape(b, queries, d)
        out = layer.attention.output
        h = out.LayerNorm(out.dense(ctx) + h[:, :queries])
        ff = layer.output.dense(_ACTIVATIONS[self.activation](layer.intermediate.dense(h)))
        return layer.output.LayerNorm(ff + h)

    def embed_tokens(
        self, genes: torch.Tensor, values: torch.Tensor, pad: torch.Tensor, extras: torch.Tensor
    ) -> torch.Tensor:
        """Cell embedding of ``[CLS], [SEP], genes...`` (no position embeddings: the order of tokens is immaterial)."""
        n, dev = genes.shape[0], genes.device
        ids = self.gene_token_ids[genes].masked_fill(pad, self.pad_id)
        head = torch.tensor([self.cls_id, self.sep_id], device=dev).expand(n, 2)
        ids = torch.cat([head, ids], dim=1)
        rows = torch.full_like(genes, -1).masked_fill(pad, self.rows[2])
        rows = torch.cat([torch.tensor(self.rows[:2], device=dev).expand(n, 2), rows], dim=1)
        vals = torch.cat([torch.zeros((n, 2), dtype=values.dtype, device=dev), values.masked_fill(pad, 0.0)], dim=1)
        emb = self.embeddings
        h = emb.LayerNorm(emb.genes_embeddings(ids) + emb.expressions_embeddings(vals, rows))
        keep = torch.cat([torch.ones((n, 2), dtype=torch.bool, device=dev), ~pad], dim=1)
        cls_only = self.pool in ("first_token", "pooling_layer")  # then the last layer needs [CLS] alone
        for i, layer in enumerate(self.encoder.layer):
            h = self._layer(layer, h, keep, first_only=cls_only and i == len(self.encoder.layer) - 1)
        if self.pool == "first_token":
            return h[:, 0]
        if self.pool == "pooling_layer":
            return torch.tanh(self.pooler.dense(h[:, 0]))
        rest = keep[:, 1:].unsqueeze(-1).to(h.dtype)  # [SEP] and the genes, as BMFM's mean_pooling
        return (h[:, 1:] * rest).sum(dim=1) / rest.sum(dim=1)


BMFM_TOKENIZERS = "tokenizers"
_FIELDS = ("genes", "expressions")
_ENCODER_KIND = "mlp_with_special_token_embedding"


def _checkpoint_file(folder: Path) -> Path:
    ckpts = sorted(folder.glob("*.ckpt"))
    if len(ckpts) != 1:
        found = [p.name for p in ckpts]
        msg = f"{str(folder)!r} must hold exactly one BMFM-RNA checkpoint (*.ckpt), not {found}."
        raise FileNotFoundError(msg)
    missing = [f"{BMFM_TOKENIZERS}/{f}" for f in _FIELDS if not (folder / BMFM_TOKENIZERS / f).is_dir()]
    if missing:
        msg = (
            f"{str(folder)!r} is not a complete BMFM-RNA folder: {missing} missing (it needs the checkpoint "
            f"and the tokenizer folders {[f'{BMFM_TOKENIZERS}/{f}' for f in _FIELDS]}, as published on Hugging Face)."
        )
        raise FileNotFoundError(msg)
    return ckpts[0]


def _check_config(config: Any, path: Path) -> dict[str, Any]:
    """The architecture fields of the pickled ``SCBertConfig``; a config scsig does not read is refused, naming the field."""
    kind = getattr(config, "_class", type(config).__name__)
    if not str(kind).endswith("SCBertConfig"):
        msg = f"{path}: model_config is a {kind}; scsig reads BMFM-RNA's scBERT checkpoints (SCBertConfig) only."
        raise ValueError(msg)
    get = config.get if hasattr(config, "get") else lambda k, d=None: getattr(config, k, d)
    checks = {
        "position_embedding_type": (get("position_embedding_type"), (None,)),
        "attention": (get("attention"), (None, "torch")),
        "is_decoder": (bool(get("is_decoder", False)), (False,)),
    }
    for field, (value, known) in checks.items():
        if value not in known:
            msg = f"{path}: model_config.{field}={value!r} is not supported; scsig reads {list(known)}."
            raise ValueError(msg)
    inputs = [f for f in (get("fields") or []) if getattr(f, "is_input", True)]
    names = [getattr(f, "field_name", None) for f in inputs]
    if sorted(map(str, names)) != sorted(_FIELDS):
        msg = f"{path}: model_config.fields has the input fields {names}; scsig reads {list(_FIELDS)}."
        raise ValueError(msg)
    expr = inputs[names.index("expressions")]
    kwargs = dict(getattr(expr, "encoder_kwargs", None) or {})
    kind = kwargs.pop("kind", _ENCODER_KIND)
    if getattr(expr, "tokenization_strategy", None) != "continuous_value_encoder" or kind != _ENCODER_KIND:
        msg = (
            f"{path}: the expressions field is encoded with {getattr(expr, 'tokenization_strategy', None)!r} / "
            f"encoder_kwargs.kind={kind!r}; scsig reads 'continuous_value_encoder' with {_ENCODER_KIND!r}."
        )
        raise ValueError(msg)
    if getattr(inputs[names.index("genes")], "pretrained_embedding", None) is not None:
        msg = f"{path}: the genes field uses pretrained_embedding (a projected gene embedding), which scsig does not read."
        raise ValueError(msg)
    return {
        "n_heads": int(get("num_attention_heads", 12)),
        "layer_norm_eps": float(get("layer_norm_eps", 1e-12)),
        "activation": str(get("hidden_act", "gelu")),
    }


def _gene_order(vocab: dict[str, int], special: set[str], genes: Sequence[str] | None, folder: Path) -> list[str]:
    order = sorted((g for g in vocab if g not in special), key=vocab.__getitem__)
    if genes is None:
        return order
    known = set(order)
    unknown = [g for g in genes if g not in known]
    if unknown:
        msg = f"{len(unknown)} of the genes= are not in {folder / BMFM_TOKENIZERS / 'genes'}'s vocabulary (e.g. {unknown[:3]})."
        raise ValueError(msg)
    return list(dict.fromkeys(genes))


def _special_ids(vocab: dict[str, int], named: dict[str, str], what: Path) -> tuple[int, int, int]:
    out = []
    for key in ("cls_token", "sep_token", "pad_token"):
        if named[key] not in vocab:
            msg = f"{what} has no {named[key]!r} ({key}) token."
            raise ValueError(msg)
        out.append(vocab[named[key]])
    return out[0], out[1], out[2]


def _resolve_pool(pool: Pool | None, trainer_config: Any, state: dict[str, Any], path: Path) -> Pool:
    """``pool``, else the checkpoint's ``trainer_config.pooling_method`` (BMFM's default ``"pooling_layer"``).

    As in BMFM's inference, ``"pooling_layer"`` of a checkpoint without a trained pooler (an MLM model)
    is the ``[CLS]`` output; a position ``0`` is the ``[CLS]`` token.
    """
    if pool is None:
        get = trainer_config.get if hasattr(trainer_config, "get") else lambda k, d=None: getattr(trainer_config, k, d)
        pool = get("pooling_method", None) if trainer_config is not None else None
        pool = "pooling_layer" if pool is None else pool  # the default of BMFM's TrainerConfig
        if isinstance(pool, int) and not isinstance(pool, bool) and pool == 0:
            pool = "first_token"
        if pool not in _POOLS:
            msg = (
                f"{path}: trainer_config.pooling_method={pool!r} is not a cell embedding scsig reads; "
                f"pass pool= one of {list(_POOLS)}."
            )
            raise ValueError(msg)
    if pool == "pooling_layer" and not any(k.startswith("pooler.") for k in state):
        pool = "first_token"
    return pool


def load_bmfm(
    path: str | Path,
    *,
    name: str | None = None,
    genes: Sequence[str] | None = None,
    max_length: int = 1024,
    pool: Pool | None = None,
    allow_pickle: bool = False,
) -> FoundationModel:
    """Load a published BMFM-RNA scBERT folder (one ``*.ckpt`` and ``tokenizers/genes``, ``tokenizers/expressions``).

    Parameters
    ----------
    path
        The folder as downloaded from Hugging Face (e.g. ``biomed.rna.bert.110m.wced.multitask.v1``).
    name
        Identifier recorded in provenance; defaults to the folder name.
    genes
        Restrict the model's genes to these (vocabulary names), e.g. the protein-coding genes BMFM's own
        inference limits a cell to (``limit_genes="protein_coding"``); default: the whole vocabulary.
    max_length
        Most tokens per cell, ``[CLS]`` and ``[SEP]`` included (BMFM's inference default: 1,024).
    pool
        The cell embedding, see ``BmfmEncoder``; default: the checkpoint's ``trainer_config.pooling_method``
        (what ``bmfm_targets.inference`` returns), ``"pooling_layer"`` if it has none.
    allow_pickle
        Read a checkpoint that names globals outside scsig's allow-list (runs the file's pickled code).

    Returns
    -------
    A model on raw counts (its encoder normalizes them) that the token engine attributes.
    """
    from ._bmfm_files import read_checkpoint, read_vocab

    folder = Path(path)
    ckpt = _checkpoint_file(folder)
    state, config, trainer_config = read_checkpoint(ckpt, allow_pickle=allow_pickle)
    arch = _check_config(config, ckpt)
    gene_vocab, special, named = read_vocab(folder / BMFM_TOKENIZERS / "genes")
    expr_vocab, _, expr_named = read_vocab(folder / BMFM_TOKENIZERS / "expressions")
    order = _gene_order(gene_vocab, special, genes, folder)
    prefix = "scbert."
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    pool = _resolve_pool(pool, trainer_config, state, ckpt)
    if pool != "pooling_layer":
        state = {k: v for k, v in state.items() if not k.startswith("pooler.")}
    try:
        layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
        n_tokens, d_model = state["embeddings.genes_embeddings.weight"].shape
        n_special = state["embeddings.expressions_embeddings.special_token_embeddings.weight"].shape[0]
        d_ff = state["encoder.layer.0.intermediate.dense.weight"].shape[0]
    except (KeyError, ValueError) as err:
        msg = (
            f"{ckpt} lacks the scBERT weights scsig reads ({err}); its state_dict keys start with {sorted(state)[:3]}."
        )
        raise ValueError(msg) from err
    encoder = BmfmEncoder(
        n_tokens=n_tokens, gene_token_ids=np.array([gene_vocab[g] for g in order]),
        cls_id=gene_vocab[named["cls_token"]], sep_id=gene_vocab[named["sep_token"]], pad_id=gene_vocab[named["pad_token"]],
        **dict(zip(("cls_row", "sep_row", "pad_row"), _special_ids(expr_vocab, expr_named, ckpt), strict=True)),
        n_special=n_special, d_model=d_model, d_ff=d_ff, n_layers=layers, max_length=max_length, pool=pool, **arch,
    )  # fmt: skip
    result = encoder.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        msg = f"{ckpt} does not fit its config: missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}."
        raise ValueError(msg)
    recipe = Preprocessing(target_sum=None, log1p=False, requires_counts=True)
    return FoundationModel(encoder, order, preprocessing=recipe, name=name or folder.name, source=str(ckpt))
