r"""The token engine: exact integrated gradients of token-transformer encoders.

For a cell, the token set (its expressed genes, cropped to the model's length, plus the model's
special tokens with their values) is taken from the cell's endpoint input and held fixed. Integrated
gradients then scales the continuous value input :math:`v_g` of every gene token from 0 to its value,

.. math:: a_g = v_g \sum_k w_k \, \partial_{v_g} t(\alpha_k v), \qquad t = \text{target},

with captum's Gauss-Legendre points :math:`\alpha_k` and weights :math:`w_k` on :math:`[0, 1]`;
this is captum's ``IntegratedGradients`` on a dense-input module that holds the token set fixed. The
target's reference is the cell's own embedding :math:`f(v)` (``self_similarity``) or the baseline's
:math:`f(0)` with the same tokens (``embedding_distance``), and completeness reads
:math:`\sum_g a_g \approx t(v) - t(0)`.

Cells are sorted by length and batched with their path points (cells x steps rows); a batch is
padded to its longest cell and padded keys are masked, so a cell's attributions do not depend on
the cells it is batched with (up to float rounding).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy import sparse

from .._settings import settings
from .._utils._warn import user_stacklevel
from ._targets import resolve_target

if TYPE_CHECKING:
    from ..models import FoundationModel
    from ..models._tokens import TokenEncoder
    from ._targets import TargetModule

__all__ = ["TokenResult", "gauss_legendre", "is_token_model", "token_attributions", "token_engine_applies"]


def is_token_model(model: FoundationModel) -> bool:
    """Whether the model's encoder is a token transformer (:class:`~scsig.models._tokens.TokenEncoder`)."""
    from ..models._tokens import TokenEncoder

    return isinstance(model.encoder, TokenEncoder)


def token_engine_applies(model: FoundationModel, engine: str) -> bool:
    """Whether ``engine`` (``"auto"`` or ``"tokens"``) resolves to the token engine; raise when it cannot apply.

    A token transformer is attributed by the token engine only: its dense ``forward`` is not
    differentiable in the raw input (tokens and binning are chosen from it), so captum and the fast
    path cannot integrate it.
    """
    token = is_token_model(model)
    if token and engine in ("auto", "tokens"):
        return True
    if token:
        msg = f"engine={engine!r} cannot attribute the token transformer {type(model.encoder).__name__}; use engine='auto' or 'tokens'."
        raise ValueError(msg)
    if engine == "tokens":
        msg = f"engine='tokens' needs a token-transformer model (scGPT, scFoundation, BMFM-RNA), not {type(model.encoder).__name__}."
        raise ValueError(msg)
    return False


def gauss_legendre(n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Captum's Gauss-Legendre points and weights on [0, 1] (float64)."""
    nodes, weights = np.polynomial.legendre.leggauss(n_steps)
    return 0.5 * (1.0 + nodes), 0.5 * weights


class TokenResult(tuple):
    """``(attributions CSR, t(x), t(0), genes dropped per cell)`` of :func:`token_attributions`."""

    __slots__ = ()


def _tokens_per_pass(enc: TokenEncoder, length: int, itemsize: int, device: torch.device | None = None) -> int:
    """Token rows one forward/backward pass may hold within :attr:`scsig.settings.memory_budget_gb`.

    Per token and layer the backward keeps about 20 activations of width d (measured on a CPU: 12.5 for
    scGPT's shape, 18.6 for BMFM-RNA's with its 4d feed-forward). On a CPU torch's fused attention never
    holds the length x length scores (measured in float32 and float64); elsewhere they are counted (heads x
    length per token, three copies), since a device's fallback kernel may hold them.
    """
    scores = 0 if device is not None and device.type == "cpu" else 3 * enc.n_heads * max(length, 1)
    per_token = enc.n_layers * (20 * enc.d_model + scores) * itemsize + 8 * enc.d_model
    return max(1, int(settings.memory_budget_gb * 1e9 // per_token))


def _chunks(
    lengths: np.ndarray, n_points: int, enc: TokenEncoder, itemsize: int, device: torch.device | None = None
) -> list[np.ndarray]:
    """Cells sorted by length, grouped so that each group's cells x points x length fit the budget."""
    order = np.argsort(lengths, kind="stable")[::-1]  # longest first: the group's length is its first cell's
    groups, start = [], 0
    while start < order.size:
        length = max(int(lengths[order[start]]), 1)
        n_cells = max(1, _tokens_per_pass(enc, length, itemsize, device) // (n_points * length))
        groups.append(order[start : start + n_cells])
        start += n_cells
    return groups


def _pad(genes: list[np.ndarray], vals: list[np.ndarray], device: Any, dtype: torch.dtype) -> tuple:
    from ..models._tokens import pad_tokens

    return pad_tokens(genes, vals, device=device, dtype=dtype)


def _group(
    enc: TokenEncoder,
    fn: Any,
    target: Any,
    tokens: tuple,
    alphas: np.ndarray,
    weights: np.ndarray,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attributions ``(n, length)``, t(v) and t(0) of one padded group of cells."""
    g, v, pad, ext = tokens
    n, length = v.shape
    with torch.no_grad():
        emb_in = enc.embed_tokens(g, v, pad, ext)
        emb_base = enc.embed_tokens(g, torch.zeros_like(v), pad, ext)
        ref = emb_base if target == "embedding_distance" else emb_in
        t_in, t_base = fn(emb_in, ref), fn(emb_base, ref)
    a = torch.as_tensor(alphas, dtype=dtype, device=v.device)
    w = torch.as_tensor(weights, dtype=dtype, device=v.device)
    per_pass = max(1, _tokens_per_pass(enc, length, v.element_size(), v.device) // max(n * length, 1))
    total = torch.zeros_like(v)
    for lo in range(0, a.numel(), per_pass):
        ak, wk = a[lo : lo + per_pass], w[lo : lo + per_pass]
        p = ak.numel()
        path = (ak[None, :, None] * v[:, None, :]).reshape(n * p, length).requires_grad_(requires_grad=True)
        g_p, pad_p, ext_p, ref_p = (t.repeat_interleave(p, dim=0) for t in (g, pad, ext, ref))
        out = fn(enc.embed_tokens(g_p, path, pad_p, ext_p), ref_p)
        (grad,) = torch.autograd.grad(out.sum(), path)
        total += (grad.view(n, p, length) * wk[None, :, None]).sum(dim=1)
    return (total * v).masked_fill(pad, 0.0), t_in, t_base


def token_attributions(
    module: TargetModule,
    model: FoundationModel,
    x: sparse.csr_matrix,
    *,
    method: str = "ig",
    n_steps: int = 50,
    device: Any = None,
    warn: bool = True,
) -> TokenResult:
    """Raw signed attributions of a token-transformer model (cells x model genes, CSR, float64).

    Parameters
    ----------
    module
        The :class:`~scsig.attribution.TargetModule` (its target: a name or a callable).
    model
        A model whose encoder is a :class:`~scsig.models._tokens.TokenEncoder`.
    x
        The encoder's input (cells x model genes, preprocessed).
    method
        ``"ig"`` (integrated gradients, ``n_steps`` Gauss-Legendre points) or ``"ixg"`` (gradient at
        the input times the value input).
    n_steps
        Integration points.
    device
        Torch device; default :attr:`scsig.settings.device`.
    warn
        Warn when cells have more expressed genes than the model takes (callers that report the
        counts themselves, as :func:`scsig.tl.attribute` does once per run, pass ``False``).

    Returns
    -------
    A :class:`TokenResult` ``(attributions, t_in, t_base, dropped)``: the attributions over the
    model's genes (zero for genes that are not tokens), the target at the input and at the baseline
    (value inputs 0, same tokens), and per cell the number of expressed genes beyond the model's length.
    """
    if method not in ("ig", "ixg"):
        msg = f"The token engine computes method='ig' or 'ixg', not {method!r}: DeepLIFT has no rules for attention."
        raise ValueError(msg)
    enc = model.encoder
    device = torch.device(device if device is not None else settings.device)
    dtype = next(enc.parameters()).dtype
    x = sparse.csr_matrix(x)
    genes, vals, extras, dropped = enc.tokenize(x)
    if warn and dropped.any():
        warnings.warn(
            f"{int((dropped > 0).sum())} of {x.shape[0]} cells express more genes than the model takes "
            f"({enc.max_genes}); each keeps its {'first genes in the model order' if enc.crop == 'first' else 'most expressed genes'} "
            f"(up to {int(dropped.max())} genes dropped per cell; their attribution is 0).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    alphas, weights = gauss_legendre(n_steps) if method == "ig" else (np.ones(1), np.ones(1))
    fn, target = resolve_target(module.target), module.target
    lengths = np.array([g.size for g in genes], dtype=np.int64)
    rows = [np.zeros(0)] * x.shape[0]
    t_in, t_base = np.zeros(x.shape[0]), np.zeros(x.shape[0])
    itemsize = torch.empty(0, dtype=dtype).element_size()
    for idx in _chunks(lengths, alphas.size, enc, itemsize, device):
        g, v, pad = _pad([genes[i] for i in idx], [vals[i] for i in idx], device, dtype)
        ext = torch.as_tensor(extras[idx], dtype=dtype, device=device)
        attr, ti, tb = _group(enc, fn, target, (g, v, pad, ext), alphas, weights, dtype)
        attr = attr.detach().cpu().double().numpy()
        for j, i in enumerate(idx):
            rows[i] = attr[j, : lengths[i]]
        t_in[idx], t_base[idx] = ti.detach().cpu().double().numpy(), tb.detach().cpu().double().numpy()
    indptr = np.r_[0, np.cumsum(lengths)]
    data = np.concatenate(rows) if rows else np.zeros(0)
    indices = np.concatenate(genes) if genes else np.zeros(0, dtype=np.int64)
    out = sparse.csr_matrix((data, indices, indptr), shape=x.shape)
    return TokenResult((out, t_in, t_base, dropped))
