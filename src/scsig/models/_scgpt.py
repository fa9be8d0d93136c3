r"""scGPT's cell-embedding path, read from the published model folder (no scgpt package needed).

A cell is the ``<cls>`` token (value ``pad_value``) followed by its expressed genes; each token is
its gene embedding (``Embedding`` + ``LayerNorm``) plus its value's embedding, then a stack of
transformer encoder layers; the cell embedding is the ``<cls>`` token's output, L2-normalized as
scGPT's ``embed_data`` does.

Values (``input_style="binned"``, the published whole-human model): scGPT bins each cell's
expressed values into 50 quantile bins of that cell (its ``DataCollator`` calls ``binning`` with
``n_bins=51`` whatever ``args.json`` says, in pretraining and in ``embed_data`` alike) and breaks
ties at bin edges at random. scsig replaces the random draw by its expectation: a value that equals
bin edges ``right .. left - 1`` (``np.digitize`` with ``right=True`` / ``False``) gets
``(left + right + 1) / 2``, the mean of the bins ``right + 1 .. left`` it falls in with equal
probability; any other value gets its bin ``left``. This is deterministic and independent of the
order of the genes. The bins only depend on the ranks of a cell's values, so the recipe
(log1p of counts per 10,000) does not change them.

Layers: scGPT's ``embed_data`` builds the model with ``pre_norm=False`` (and without flash-attention
its layers are torch's post-norm layers whatever ``pre_norm`` says); the loader does the same.

Length: scGPT's ``embed_data`` samples ``max_seq_len - 1`` of a longer cell's genes at random; scsig
keeps the most expressed (highest expected bin; ties to the earlier gene in the vocabulary order).

How integrated gradients sees scGPT: the expected bin is the model's *continuous value input*;
integrated gradients scales it from 0 to its value, the token set (the cell's expressed genes) held
fixed. With ``input_emb_style="continuous"`` (the published model) the value encoder
``LayerNorm(W_2 ReLU(W_1 v + b_1) + b_2)`` takes that number as it is, so the path is the model's
own function of a real value. With ``"category"`` the value's embedding is the linear interpolation
between the embeddings of the two bins around it (the bin's own embedding at whole numbers); with
``"scaling"`` the gene embedding is multiplied by the value.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from .._utils._warn import user_stacklevel
from ._base import FoundationModel, Preprocessing
from ._tokens import TokenEncoder, block_forward

if TYPE_CHECKING:
    from scipy import sparse

__all__ = ["SCGPT_FILES", "ScGPTEncoder", "expected_bins", "load_scgpt"]

SCGPT_FILES = ("args.json", "vocab.json", "best_model.pt")
SPECIAL_TOKENS = ("<pad>", "<cls>", "<eoc>")
COLLATOR_BINS = 51
"""Bins of scGPT's ``DataCollator`` (it calls ``binning(..., n_bins=51)``)."""
_ARCH_FIELDS = {
    "embsize", "nheads", "nhead", "d_hid", "nlayers", "n_bins", "n_input_bins", "pad_token", "pad_value",
    "input_emb_style", "input_style", "max_seq_len", "pre_norm", "cell_emb_style",
}  # fmt: skip
_TRAINING_FIELDS = {
    "data_source", "save_dir", "load_model", "n_hvg", "valid_size_or_ratio", "dist_backend", "grad_accu_steps",
    "training_tasks", "dist_url", "mask_ratio", "trunc_by_sample", "vocab_path", "rank", "batch_size",
    "eval_batch_size", "epochs", "lr", "scheduler_interval", "scheduler_factor", "warmup_ratio_or_step", "no_cls",
    "no_cce", "fp16", "amp", "fast_transformer", "use_fast_transformer", "fast_transformer_backend", "dropout",
    "n_layers_cls", "nlayers_cls", "log_interval", "save_interval", "mask_value", "USE_CLS", "USE_CCE", "MVC",
    "USE_GENERATIVE_TRAINING", "world_size", "distributed", "local_rank", "gpu", "seed", "do_mvc", "do_dab",
    "use_batch_labels", "domain_spec_batchnorm", "explicit_zero_prob", "mvc_decoder_style", "ecs_threshold",
    "n_cls", "ntokens", "layer_size", "task", "use_mod", "include_zero_gene", "data_is_raw",
}  # fmt: skip
_STYLES = ("continuous", "category", "scaling")


def expected_bins(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-cell bins (scGPT) of the expressed ``values``, ties at bin edges replaced by their expectation (float64)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return values
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(values, edges)
    right = np.digitize(values, edges, right=True)
    return np.where(left == right, left, (left + right + 1) / 2.0).astype(np.float64)


class _ValueEncoder(nn.Module):
    """scGPT's value encoders; parameter names as published (``linear1``/``linear2``/``norm`` or ``embedding``/``enc_norm``)."""

    def __init__(self, style: str, d_model: int, n_input_bins: int, max_value: float = 512.0) -> None:
        super().__init__()
        self.style, self.max_value = style, max_value
        if style == "continuous":
            self.linear1, self.linear2, self.norm = (
                nn.Linear(1, d_model),
                nn.Linear(d_model, d_model),
                nn.LayerNorm(d_model),
            )
        elif style == "category":
            self.embedding, self.enc_norm = nn.Embedding(n_input_bins, d_model), nn.LayerNorm(d_model)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if self.style == "continuous":
            h = torch.relu(self.linear1(torch.clamp(v, max=self.max_value).unsqueeze(-1)))
            return self.norm(self.linear2(h))
        n = self.embedding.num_embeddings
        v = v.clamp(0, n - 1)
        lo = torch.floor(v).clamp(max=n - 2)
        frac = (v - lo).unsqueeze(-1)
        emb = self.embedding.weight
        lo = lo.long()
        return self.enc_norm(emb[lo] + frac * (emb[lo + 1] - emb[lo]))


class _GeneEncoder(nn.Module):
    def __init__(self, n_tokens: int, d_model: int) -> None:
        super().__init__()
        self.embedding, self.enc_norm = nn.Embedding(n_tokens, d_model), nn.LayerNorm(d_model)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.enc_norm(self.embedding(ids))


class _Layers(nn.Module):
    def __init__(self, d_model: int, n_heads: int, d_hid: int, n_layers: int) -> None:
        super().__init__()
        make = lambda: nn.TransformerEncoderLayer(d_model, n_heads, d_hid, dropout=0.0, batch_first=True)  # noqa: E731
        self.layers = nn.ModuleList([make() for _ in range(n_layers)])


class ScGPTEncoder(TokenEncoder):
    """scGPT's encoder up to the ``<cls>`` cell embedding; parameter names as in ``best_model.pt``.

    Parameters
    ----------
    n_tokens
        Vocabulary size.
    gene_token_ids
        Vocabulary id of each model gene (the model's gene order).
    cls_id, pad_id
        Ids of ``<cls>`` and ``<pad>``.
    d_model, n_heads, d_hid, n_layers
        Transformer sizes (``embsize``, ``nheads``, ``d_hid``, ``nlayers``).
    n_bins
        Bins of the value binning (51 in scGPT's collator); ``None`` when values are not binned.
    n_input_bins
        Rows of the ``"category"`` value embedding (``args.json``'s ``n_bins + 2``); default ``n_bins + 2``.
    input_emb_style
        ``"continuous"``, ``"category"`` or ``"scaling"``.
    pad_value
        Value of the ``<cls>`` token.
    max_seq_len
        Most tokens per cell, ``<cls>`` included.
    pre_norm
        scGPT's flash-attention layer with ``norm_scheme="pre"`` (each sublayer's input normalized,
        the residual added to it); ``False``: torch's post-norm layer, as ``embed_data`` runs it.
    normalize
        L2-normalize the cell embedding (scGPT's ``embed_data``).
    """

    n_extras = 0

    def __init__(
        self,
        *,
        n_tokens: int,
        gene_token_ids: np.ndarray,
        cls_id: int,
        pad_id: int,
        d_model: int,
        n_heads: int,
        d_hid: int,
        n_layers: int,
        n_bins: int | None = 51,
        n_input_bins: int | None = None,
        input_emb_style: str = "continuous",
        pad_value: float = -2.0,
        max_seq_len: int = 1200,
        pre_norm: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__()
        if input_emb_style not in _STYLES:
            msg = f"scGPT input_emb_style={input_emb_style!r} is not known; scsig reads {list(_STYLES)}."
            raise ValueError(msg)
        n_input_bins = (n_bins or 0) + 2 if n_input_bins is None else int(n_input_bins)
        if input_emb_style == "category" and not 0 <= pad_value < n_input_bins:
            msg = f"With input_emb_style='category' the <cls> value pad_value={pad_value} must be a bin index (0 to {n_input_bins - 1})."
            raise ValueError(msg)
        if max_seq_len < 2:
            msg = f"max_seq_len={max_seq_len} leaves no room for genes: scGPT's <cls> token takes one of the positions."
            raise ValueError(msg)
        self.encoder = _GeneEncoder(n_tokens, d_model)
        self.value_encoder = _ValueEncoder(input_emb_style, d_model, n_input_bins)
        self.transformer_encoder = _Layers(d_model, n_heads, d_hid, n_layers)
        self.register_buffer(
            "gene_token_ids", torch.as_tensor(np.asarray(gene_token_ids), dtype=torch.long), persistent=False
        )
        self.cls_id, self.pad_id, self.pad_value = int(cls_id), int(pad_id), float(pad_value)
        self.n_bins, self.style, self.pre_norm, self.normalize = n_bins, input_emb_style, pre_norm, normalize
        self.max_genes, self.d_model, self.n_layers, self.n_heads = max_seq_len - 1, d_model, n_layers, n_heads

    def token_values(self, x: sparse.csr_matrix) -> tuple[sparse.csr_matrix, np.ndarray]:
        """Expected bins of each cell's expressed values (or the values themselves when not binned)."""
        from scipy import sparse

        out = sparse.csr_matrix(x, dtype=np.float64, copy=True)
        if self.n_bins is not None:
            for i in range(out.shape[0]):
                lo, hi = out.indptr[i], out.indptr[i + 1]
                row = out.data[lo:hi]
                keep = row > 0
                row[keep] = expected_bins(row[keep], self.n_bins)
        return out, np.zeros((x.shape[0], 0))

    def embed_tokens(
        self, genes: torch.Tensor, values: torch.Tensor, pad: torch.Tensor, extras: torch.Tensor
    ) -> torch.Tensor:
        """``<cls>`` output of ``[<cls>, genes...]``; padding gets ``<pad>`` and is masked."""
        n = genes.shape[0]
        ids = self.gene_token_ids[genes].masked_fill(pad, self.pad_id)
        ids = torch.cat([torch.full((n, 1), self.cls_id, dtype=torch.long, device=ids.device), ids], dim=1)
        cls_value = torch.full((n, 1), self.pad_value, dtype=values.dtype, device=values.device)
        vals = torch.cat([cls_value, values.masked_fill(pad, self.pad_value)], dim=1)
        mask = torch.cat([torch.zeros((n, 1), dtype=torch.bool, device=pad.device), pad], dim=1)
        src = self.encoder(ids)
        h = src * vals.unsqueeze(-1) if self.style == "scaling" else src + self.value_encoder(vals)
        layers, norm = self.transformer_encoder.layers, "pre_residual_normed" if self.pre_norm else "post"
        for i, layer in enumerate(layers):  # the last layer only for <cls>, the embedding
            h = block_forward(layer, h, mask, norm=norm, first_only=i == len(layers) - 1)
        z = h[:, 0]
        return z / torch.linalg.vector_norm(z, dim=1, keepdim=True) if self.normalize else z


def _read_args(path: Path, *, strict: bool) -> dict[str, Any]:
    args = json.loads(path.read_text())
    unknown = sorted(set(args) - _ARCH_FIELDS - _TRAINING_FIELDS)
    missing = [f for f in ("embsize", "d_hid", "nlayers") if f not in args]
    if missing:
        msg = f"{path} lacks the architecture field(s) {missing}; an scGPT args.json names embsize, nheads, d_hid and nlayers."
        raise ValueError(msg)
    if unknown and strict:
        msg = (
            f"{path} has config field(s) scsig does not know: {unknown}. They may change the architecture; "
            "pass strict_config=False to load anyway (unknown fields ignored)."
        )
        raise ValueError(msg)
    return args


def _check_folder(folder: Path) -> None:
    missing = [f for f in SCGPT_FILES if not (folder / f).is_file()]
    if missing:
        msg = f"{str(folder)!r} is not a complete scGPT model folder: {missing} missing (it needs {list(SCGPT_FILES)})."
        raise FileNotFoundError(msg)
    extra = sorted(p.name for p in folder.iterdir() if p.name not in SCGPT_FILES and not p.name.startswith("."))
    if extra:
        warnings.warn(
            f"{str(folder)!r} holds files an scGPT folder does not: {extra[:5]}; they are ignored.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _state_dict(path: Path, *, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The encoder's weights from ``best_model.pt``; flash-attention ``Wqkv`` renamed to ``in_proj``."""
    raw = torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    raw = raw.get("model_state_dict", raw) if isinstance(raw, dict) else raw
    out = {}
    for key, value in raw.items():
        if not key.startswith(("encoder.", "value_encoder.", "transformer_encoder.")):
            continue  # decoders, classifier heads, batch encoders: not on the cell-embedding path
        out[key.replace("self_attn.Wqkv.", "self_attn.in_proj_")] = value
    batch_norm = sorted({k.split(".")[0] for k in raw if k.startswith(("dsbn.", "bn."))})
    if batch_norm:
        warnings.warn(
            f"{path} has batch-norm layers on the embedding path ({batch_norm}); scGPT's embed_data builds the "
            "model without them (domain_spec_batchnorm=False), and scsig embeds as embed_data does.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return out


def _encoder(
    args: dict[str, Any],
    vocab: dict[str, int],
    genes: list[str],
    state: dict[str, torch.Tensor],
    *,
    normalize: bool,
    where: Path,
    bins: int | None = None,
) -> ScGPTEncoder:
    """The encoder ``args.json`` describes, with the checkpoint's weights (as scGPT's ``embed_data`` builds it)."""
    binned = args.get("input_style", "binned") == "binned"
    style = args.get("input_emb_style", "continuous")
    n_bins = int(args.get("n_bins", args.get("n_input_bins", 51)))
    if binned and style == "continuous" and n_bins != COLLATOR_BINS and bins is None:
        warnings.warn(
            f"{where / 'args.json'} says n_bins={n_bins}, but scGPT's collator bins values into "
            f"{COLLATOR_BINS} bins whatever n_bins says (in pretraining and in embed_data); scsig bins as the collator does. "
            f"Pass load_scgpt(..., n_bins={n_bins}) for a model whose cells were binned into {n_bins} bins.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    if args.get("pre_norm"):
        warnings.warn(
            f"{where / 'args.json'} says pre_norm=true; scGPT's embed_data builds the model with pre_norm=False "
            "(and without flash-attention its layers are post-norm anyway); scsig embeds as embed_data does.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    emb = state.get("encoder.embedding.weight")
    n_tokens = (
        int(emb.shape[0]) if emb is not None else max(vocab.values()) + 1
    )  # scGPT: len(vocab) + appended specials
    if max(vocab.values()) >= n_tokens:
        msg = f"{where / 'vocab.json'} has token ids up to {max(vocab.values())}, but best_model.pt embeds only {n_tokens} tokens."
        raise ValueError(msg)
    enc = ScGPTEncoder(
        n_tokens=n_tokens,
        gene_token_ids=np.array([vocab[g] for g in genes]),
        cls_id=vocab["<cls>"],
        pad_id=vocab[args.get("pad_token", "<pad>")],
        d_model=int(args["embsize"]),
        n_heads=int(args.get("nheads", args.get("nhead", 8))),
        d_hid=int(args["d_hid"]),
        n_layers=int(args["nlayers"]),
        n_bins=(COLLATOR_BINS if bins is None else int(bins)) if binned else None,
        n_input_bins=n_bins + 2,
        input_emb_style=style,
        pad_value=float(args.get("pad_value", -2)),
        max_seq_len=int(args.get("max_seq_len", 1200)),
        normalize=normalize,
    )
    try:
        result = enc.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        msg = f"{where / 'best_model.pt'} does not fit args.json ({str(err).splitlines()[-1].strip()})."
        raise ValueError(msg) from None
    if result.missing_keys or result.unexpected_keys:
        msg = (
            f"{where / 'best_model.pt'} does not fit args.json: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}."
        )
        raise ValueError(msg)
    return enc


def load_scgpt(
    folder: str | Path,
    *,
    name: str | None = None,
    normalize: bool = True,
    n_bins: int | None = None,
    strict_config: bool = True,
    allow_pickle: bool = False,
) -> FoundationModel:
    """Load a published scGPT model folder (``args.json``, ``vocab.json``, ``best_model.pt``).

    Parameters
    ----------
    folder
        The model folder, e.g. ``scGPT_human``.
    name
        Identifier recorded in provenance; defaults to the folder name.
    normalize
        L2-normalize the cell embedding, as scGPT's ``embed_data`` does.
    n_bins
        Bins of the per-cell value binning. Default: 51, what scGPT's ``DataCollator`` uses in pretraining
        and in ``embed_data`` whatever ``args.json`` says; pass ``args.json``'s value for a model whose
        cells were binned with it (scGPT's ``Preprocessor(binning=n_bins)``, as its fine-tuning tutorials do).
    strict_config
        Refuse ``args.json`` fields scsig does not know (they might change the architecture).
    allow_pickle
        Permit a checkpoint that needs arbitrary unpickling (off: ``torch.load(..., weights_only=True)``).

    Returns
    -------
    A model whose encoder is a ``ScGPTEncoder``; its gene order is the vocabulary without
    ``<pad>``, ``<cls>``, ``<eoc>``, in vocabulary-id order; the token engine attributes it.
    """
    folder = Path(folder)
    _check_folder(folder)
    args = _read_args(folder / "args.json", strict=strict_config)
    vocab = {str(k): int(v) for k, v in json.loads((folder / "vocab.json").read_text()).items()}
    for tok in ("<cls>", args.get("pad_token", "<pad>")):
        if tok not in vocab:
            msg = f"{folder / 'vocab.json'} has no {tok!r} token."
            raise ValueError(msg)
    genes = sorted((g for g in vocab if g not in SPECIAL_TOKENS and g != args.get("pad_token")), key=vocab.__getitem__)
    state = _state_dict(folder / "best_model.pt", allow_pickle=allow_pickle)
    enc = _encoder(args, vocab, genes, state, normalize=normalize, where=folder, bins=n_bins)
    log1p = args.get("input_style", "binned") != "normed_raw"  # scGPT's Preprocessor: counts per 10,000, then log1p
    recipe = Preprocessing(target_sum=1e4, log1p=log1p, requires_counts=True)
    return FoundationModel(enc, genes, preprocessing=recipe, name=name or folder.name, source=str(folder))
