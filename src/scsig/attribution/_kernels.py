"""Compiled kernels (numba) of the fast attribution engine.

Imported only when the fast engine runs (:mod:`scsig.attribution._fast` imports this module inside
its functions), so that ``import scsig`` does not load numba. Each kernel is a plain function of
arrays; none knows which encoder or target it serves. The first-layer bias is given per cell or once
for all cells: ``bias`` has ``n`` rows or one row, and row ``c * bias_step`` belongs to cell ``c``.

The three target kernels compute the gradient of a named target with respect to the encoder's
output before its optional L2 normalization; row ``i`` of ``out`` belongs to cell ``i // n_points``
(``ref`` has one row per cell when ``per_cell``, else one row for all).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = [
    "distance_grad",
    "events_backward",
    "events_forward",
    "sampled_rows_dot",
    "self_similarity_grad",
    "self_similarity_grad_exact",
    "sparse_times_dense",
]


@njit(parallel=True, fastmath={"contract"}, cache=True)
def sparse_times_dense(indptr, indices, data, wt, out, chunk, gene_block):  # pragma: no cover - numba
    """``X @ wt`` with X (n_rows, n_cols) in CSR (sorted indices); wt (n_cols, h) C-contiguous.

    Threads own column chunks of the output, so no two threads write the same memory. Within a chunk,
    genes are taken in blocks of ``gene_block`` (a few MB of ``wt``, which stay in cache) and, per
    block, each cell's genes four at a time into its output row: one read and write of the row per four
    weight rows, where gene after gene across all cells the rows (4 MB for 500 cells) came from far
    caches once per weight row. Sums are float64, each cell's genes in ascending order, one multiply-add
    per gene (``contract`` only: no reassociation), so the result is the same to the bit whatever the
    chunks and blocks: the signs of the first pre-activation along the path (which decide the activation's
    slope) do not depend on how the batch is split. Unsorted indices are summed too, in their order.
    """
    n_cols, h = wt.shape
    n = out.shape[0]
    n_chunks = (h + chunk - 1) // chunk
    for b in prange(n_chunks):
        lo = b * chunk
        hi = min(h, lo + chunk)
        m = hi - lo
        cur = indptr[:-1].copy()
        for r in range(n):
            out[r, lo:hi] = 0.0
        for g0 in range(0, n_cols, gene_block):
            g1 = n_cols if g0 + gene_block >= n_cols else g0 + gene_block
            for r in range(n):
                p = cur[r]
                pe = indptr[r + 1]
                o = out[r, lo:hi]
                while p + 3 < pe and indices[p + 3] < g1:
                    w1 = wt[indices[p], lo:hi]
                    w2 = wt[indices[p + 1], lo:hi]
                    w3 = wt[indices[p + 2], lo:hi]
                    w4 = wt[indices[p + 3], lo:hi]
                    v1 = np.float64(data[p])
                    v2 = np.float64(data[p + 1])
                    v3 = np.float64(data[p + 2])
                    v4 = np.float64(data[p + 3])
                    for k in range(m):
                        o[k] = (((o[k] + v1 * w1[k]) + v2 * w2[k]) + v3 * w3[k]) + v4 * w4[k]
                    p += 4
                while p < pe and indices[p] < g1:  # the last block takes the rest (g1 = n_cols)
                    w1 = wt[indices[p], lo:hi]
                    v1 = np.float64(data[p])
                    for k in range(m):
                        o[k] += v1 * w1[k]
                    p += 1
                cur[r] = p


@njit(parallel=True, fastmath=True, cache=True)
def sampled_rows_dot(indptr, indices, data, wt, g, gene_block, n_groups, out):  # pragma: no cover - numba
    """``out[p] = data[p] * (wt[j] . g[r])`` for every stored entry ``p = (r, j)`` of a CSR matrix.

    ``n_groups`` groups of cells run in parallel. Like :func:`sparse_times_dense`, each group goes
    through blocks of ``gene_block`` genes (the block of ``wt`` stays in cache) and each cell's genes
    two at a time, so one read of ``g[r]`` serves two dot products. The dot products are float32 sums
    in vectorized (reordered) partial sums, each over four quarters of the units: 8 lanes times four
    accumulators, so each partial sum has tens of terms, as many as a single vectorized dot product's.
    """
    n_cols, h = wt.shape
    n = g.shape[0]
    q = h // 4
    for t in prange(n_groups):
        r0 = t * n // n_groups
        r1 = (t + 1) * n // n_groups
        cur = indptr[r0:r1].copy()
        for g0 in range(0, n_cols, gene_block):
            g1 = n_cols if g0 + gene_block >= n_cols else g0 + gene_block
            for r in range(r0, r1):
                p = cur[r - r0]
                pe = indptr[r + 1]
                while p + 1 < pe and indices[p + 1] < g1:
                    i, j = indices[p], indices[p + 1]
                    a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = np.float32(0.0)
                    for k in range(q):  # 2-d indexing: no row views (reference counting) per entry
                        x0, x1, x2, x3 = g[r, k], g[r, k + q], g[r, k + 2 * q], g[r, k + 3 * q]
                        a0 += wt[i, k] * x0
                        a1 += wt[i, k + q] * x1
                        a2 += wt[i, k + 2 * q] * x2
                        a3 += wt[i, k + 3 * q] * x3
                        b0 += wt[j, k] * x0
                        b1 += wt[j, k + q] * x1
                        b2 += wt[j, k + 2 * q] * x2
                        b3 += wt[j, k + 3 * q] * x3
                    a = (a0 + a1) + (a2 + a3)
                    b = (b0 + b1) + (b2 + b3)
                    for k in range(4 * q, h):
                        a += wt[i, k] * g[r, k]
                        b += wt[j, k] * g[r, k]
                    out[p] = data[p] * a
                    out[p + 1] = data[p + 1] * b
                    p += 2
                while p < pe and indices[p] < g1:  # the last block takes the rest (g1 = n_cols)
                    i = indices[p]
                    a = np.float32(0.0)
                    for k in range(h):
                        a += wt[i, k] * g[r, k]
                    out[p] = data[p] * a
                    p += 1
                cur[r - r0] = p


@njit(parallel=True, cache=True)
def events_forward(
    v, bias, neg, alphas, w2t, pos0, a0, b0, c2, act, neg2, out, mask, ev_unit, ev_step, ev_count
):  # pragma: no cover
    """Second-layer pre-activation at every path point, from running sums updated per sign change.

    ``v`` (n, h1) the first layer's input term, ``bias`` (n or 1, h1) its bias; the first
    pre-activation at point k is ``alphas[k] * v + bias``. ``pos0`` (n or 1, h1) is a reference sign
    state of the first pre-activation, monotone-reachable along the path (its sign at alpha -> 0, or
    at the first point), ``a0`` (n, h2) and ``b0`` (n or 1, h2) the second layer applied to
    ``slope_ref * v`` and ``slope_ref * bias`` with the activation's slopes in that state. An event
    is the first point whose sign differs from the reference state.
    Writes ``out`` (n, S, h2): the pre-activation, or with ``act`` the piecewise-linear activation
    of it (negative slopes ``neg2``) and ``mask`` whether it was positive; and each cell's events
    (unit, step) sorted by step.
    """
    n, h1 = v.shape
    h2 = w2t.shape[1]
    n_steps = alphas.size
    pos_step = np.int64(1) if pos0.shape[0] > 1 else np.int64(0)
    b_step = np.int64(1) if b0.shape[0] > 1 else np.int64(0)
    c_step = np.int64(1) if bias.shape[0] > 1 else np.int64(0)
    for c in prange(n):
        c1 = bias[c * c_step]
        units = np.empty(h1, np.int32)
        steps = np.empty(h1, np.int32)
        cnt = 0
        for i in range(h1):
            vi = v[c, i]
            first = pos0[c * pos_step, i]
            last = alphas[n_steps - 1] * vi + c1[i] > 0.0
            if first != last:
                lo = 0
                hi = n_steps - 1
                while lo < hi:  # first step whose sign differs from the first point's
                    mid = (lo + hi) // 2
                    if (alphas[mid] * vi + c1[i] > 0.0) != first:
                        hi = mid
                    else:
                        lo = mid + 1
                units[cnt] = i
                steps[cnt] = lo
                cnt += 1
        # counting sort of the events by step
        counts = np.zeros(n_steps + 1, np.int64)
        for e in range(cnt):
            counts[steps[e] + 1] += 1
        for k in range(n_steps):
            counts[k + 1] += counts[k]
        for e in range(cnt):
            q = counts[steps[e]]
            ev_unit[c, q] = units[e]
            ev_step[c, q] = steps[e]
            counts[steps[e]] = q + 1
        ev_count[c] = cnt
        a = np.empty(h2, np.float64)
        b = np.empty(h2, np.float64)
        for h in range(h2):
            a[h] = a0[c, h]
            b[h] = b0[c * b_step, h]
        e = 0
        for k in range(n_steps):
            while e < cnt and ev_step[c, e] == k:
                i = ev_unit[c, e]
                vi = v[c, i]
                d = (1.0 - neg[i]) if alphas[k] * vi + c1[i] > 0.0 else (neg[i] - 1.0)
                dv = d * vi
                dc = d * c1[i]
                row = w2t[i]
                for h in range(h2):
                    a[h] += dv * row[h]
                    b[h] += dc * row[h]
                e += 1
            al = alphas[k]
            o = out[c, k]
            if act:
                m = mask[c, k]
                for h in range(h2):
                    p = np.float32(al * a[h] + b[h] + c2[h])
                    pos = p > 0
                    m[h] = pos
                    o[h] = p if pos else p * neg2[h]
            else:
                for h in range(h2):
                    o[h] = al * a[h] + b[h] + c2[h]


@njit(parallel=True, fastmath=True, cache=True)
def events_backward(
    g2, act, neg2, mask, weights, v, bias, neg, alphas, w2t, ev_unit, ev_step, ev_count, g1, r_out
):  # pragma: no cover
    """Backward through the second layer with suffix sums of the weighted gradients.

    ``g2`` (n, S, h2) is the gradient at the second pre-activation, or with ``act`` at the
    activation's output (``mask``/``neg2`` as written by :func:`events_forward`). Writes ``r_out``
    (n, h2), the weighted sum over points, and adds each event's correction to ``g1`` (n, h1).
    """
    n, n_steps, h2 = g2.shape
    c_step = np.int64(1) if bias.shape[0] > 1 else np.int64(0)
    for c in prange(n):
        c1 = bias[c * c_step]
        r = np.zeros(h2, np.float64)
        e = ev_count[c] - 1
        for k in range(n_steps - 1, -1, -1):
            wk = weights[k]
            gk = g2[c, k]
            if act:
                m = mask[c, k]
                for h in range(h2):
                    slope = np.float32(1.0) if m[h] else neg2[h]
                    r[h] += wk * (gk[h] * slope)
            else:
                for h in range(h2):
                    r[h] += wk * gk[h]
            while e >= 0 and ev_step[c, e] == k:
                i = ev_unit[c, e]
                vi = v[c, i]
                d = (1.0 - neg[i]) if alphas[k] * vi + c1[i] > 0.0 else (neg[i] - 1.0)
                row = w2t[i]
                acc = 0.0
                for h in range(h2):
                    acc += row[h] * r[h]
                g1[c, i] += d * acc
                e -= 1
        for h in range(h2):
            r_out[c, h] = r[h]


# ---- targets -------------------------------------------------------------------------------


@njit(cache=True)
def _norm(o, normalize):  # pragma: no cover - numba
    """The L2 norm of ``o`` (at least 1e-12) when ``normalize``, else 1."""
    if not normalize:
        return 1.0
    sq = 0.0
    for k in range(o.shape[0]):
        sq += o[k] * o[k]
    return max(np.sqrt(sq), 1e-12)


@njit(cache=True)
def _through_normalization(o, norm, gy, normalize, grad_row):  # pragma: no cover - numba
    """``grad_row``: the gradient ``gy`` at the normalized output taken back through the L2 normalization."""
    d = o.shape[0]
    if normalize and norm > 1e-12:
        dot = 0.0
        for k in range(d):
            dot += (o[k] / norm) * gy[k]
        for k in range(d):
            grad_row[k] = (gy[k] - (o[k] / norm) * dot) / norm
    elif normalize:
        for k in range(d):
            grad_row[k] = gy[k] / 1e-12
    else:
        for k in range(d):
            grad_row[k] = gy[k]


@njit(cache=True)
def _self_similarity_row(o, rr, normalize, grad_row):  # pragma: no cover - numba
    """Gradient of ``sum_k |rr_k y_k|`` (``y`` the possibly normalized ``o``) with respect to ``o``."""
    d = o.shape[0]
    norm = _norm(o, normalize)
    gy = np.empty(d, np.float64)
    for k in range(d):
        prod = rr[k] * (o[k] / norm)
        gy[k] = rr[k] if prod > 0 else (-rr[k] if prod < 0 else 0.0)
    _through_normalization(o, norm, gy, normalize, grad_row)


@njit(parallel=True, cache=True)
def self_similarity_grad(out, ref, per_cell, n_points, normalize, grad):  # pragma: no cover - numba
    """Gradient of the self-similarity target ``sum_k |ref_k y_k|`` for every row of ``out``."""
    n_rows, d = out.shape
    for i in prange(n_rows):
        rr = ref[i // n_points] if per_cell else ref[0]
        o = np.empty(d, np.float64)
        for k in range(d):
            o[k] = out[i, k]
        _self_similarity_row(o, rr, normalize, grad[i])


@njit(parallel=True, cache=True)
def self_similarity_grad_exact(
    out, ref, per_cell, n_points, normalize, grad, hidden, w, c, w_norm, tol
):  # pragma: no cover - numba
    """As :func:`self_similarity_grad` for ``out = hidden @ w.T + c`` computed in float32, with exact signs.

    Every entry of ``out`` within the float32 product's error bound of zero
    (``tol * (|c_k| + ||w_k|| ||hidden_i||)``) is recomputed in float64 (``w``, ``c`` float64) first.
    """
    n_rows, d = out.shape
    for i in prange(n_rows):
        rr = ref[i // n_points] if per_cell else ref[0]
        o = np.empty(d, np.float64)
        for k in range(d):
            o[k] = out[i, k]
        hrow = hidden[i]
        hn = 0.0
        for j in range(hrow.shape[0]):
            hn += np.float64(hrow[j]) * hrow[j]
        hn = np.sqrt(hn)
        for k in range(d):
            if abs(o[k]) <= tol * (abs(c[k]) + w_norm[k] * hn):
                acc = c[k]
                for j in range(hrow.shape[0]):
                    acc += hrow[j] * w[k, j]
                o[k] = acc
        _self_similarity_row(o, rr, normalize, grad[i])


@njit(parallel=True, cache=True)
def distance_grad(out, ref, per_cell, n_points, normalize, grad):  # pragma: no cover - numba
    """Gradient of the distance target ``||y - ref||`` for every row of ``out``."""
    n_rows, d = out.shape
    for i in prange(n_rows):
        rr = ref[i // n_points] if per_cell else ref[0]
        o = np.empty(d, np.float64)
        for k in range(d):
            o[k] = out[i, k]
        _distance_row(o, rr, normalize, grad[i])


@njit(cache=True)
def _distance_row(o, rr, normalize, grad_row):  # pragma: no cover - numba
    """Gradient of ``||y - rr||`` (``y`` the possibly normalized ``o``) with respect to ``o``."""
    d = o.shape[0]
    norm = _norm(o, normalize)
    gy = np.empty(d, np.float64)
    dist = 0.0
    for k in range(d):
        diff = o[k] / norm - rr[k]
        gy[k] = diff
        dist += diff * diff
    dist = np.sqrt(dist)
    for k in range(d):
        gy[k] = gy[k] / dist if dist > 0 else 0.0
    _through_normalization(o, norm, gy, normalize, grad_row)
