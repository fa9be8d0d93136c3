r"""Compiled kernel (numba) of the closed tail integrated between the activations' kinks.

For SCimilarity's shape (first map, PReLU, affine ``W2``, PReLU, affine ``W3``, optional L2 normalization) with
one first-layer bias for all cells, the encoder output at every path point is, with ``D2`` the second
activation's slopes at the point and ``D2_0`` those at alpha -> 0 (the same for all cells),

.. math::

    e_k = \alpha_k P_k + Q_k + c_3 + \sum_{h: D2_{k,h} \ne D2_{0,h}} (D2_{k,h} - D2_{0,h})\, p_{k,h} W_3[:, h]

with :math:`P_k = W_3 D2_0 a_k` and :math:`Q_k = W_3 D2_0 (b_k + c_2)` running sums of width ``d`` updated by one
column of :math:`M_0 = W_3 D2_0 W_2^\top` per first-layer event, and :math:`p_k = \alpha_k a_k + b_k + c_2` the
second pre-activation (running sums of width ``h2``, needed only for its signs). The backward pass is the same in
transpose: suffix sums :math:`Y_k = \sum_{s \ge k} y_s` of the target's weighted gradients (width ``d``) and
:math:`C_k = \sum_{s \ge k} (D2_s - D2_0) W_3^\top y_s`, non-zero only at the units whose slope differs from
``D2_0`` somewhere after ``k``. No product of width ``h2 x d`` per path point remains, and every sum is in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._kernels import _distance_row, _self_similarity_row

__all__ = ["cell_events", "events_closed"]


@njit(cache=True)
def cell_events(vc, c1, pos0, alphas, units, steps):  # pragma: no cover - numba
    """The units whose first pre-activation ``alphas[k] * vc + c1`` changes sign from ``pos0`` along the path.

    Writes them to ``units`` with the first step of the new sign in ``steps``, sorted by step; returns their count.
    """
    n_steps = alphas.size
    h1 = vc.size
    tmp_u = np.empty(h1, np.int32)
    tmp_s = np.empty(h1, np.int32)
    cnt = 0
    for i in range(h1):
        vi = vc[i]
        first = pos0[i]
        if first != (alphas[n_steps - 1] * vi + c1[i] > 0.0):
            lo = 0
            hi = n_steps - 1
            while lo < hi:  # first step whose sign differs from the reference state
                mid = (lo + hi) // 2
                if (alphas[mid] * vi + c1[i] > 0.0) != first:
                    hi = mid
                else:
                    lo = mid + 1
            tmp_u[cnt] = i
            tmp_s[cnt] = lo
            cnt += 1
    counts = np.zeros(n_steps + 1, np.int64)  # counting sort by step
    for e in range(cnt):
        counts[tmp_s[e] + 1] += 1
    for k in range(n_steps):
        counts[k + 1] += counts[k]
    for e in range(cnt):
        q = counts[tmp_s[e]]
        units[q] = tmp_u[e]
        steps[q] = tmp_s[e]
        counts[tmp_s[e]] = q + 1
    return cnt


@njit(cache=True)
def _slope_change(al, vi, ci, negi):  # pragma: no cover - numba
    """The slope after a first-layer unit's sign change minus the slope before it."""
    return (1.0 - negi) if al * vi + ci > 0.0 else (negi - 1.0)


@njit(parallel=True, cache=True)
def events_closed(
    v, c1, neg1, pos0, alphas, weights, w2t, w2t_back, a0, b0, c2, neg2, pos2_0, w3t, m0t, p0, q0, c3,
    ref, per_cell, distance, normalize, g1, y_sum, c_sum,
):  # pragma: no cover - numba  # fmt: skip
    """Forward and backward of the closed tail for every cell, integrated between the kinks (module doc).

    ``v`` (n, h1), ``c1`` (h1,), ``neg1`` (h1,), ``pos0`` (h1,) bool: the first pre-activation
    ``alphas[k] * v + c1``, the first activation's negative slopes and signs at alpha -> 0. ``w2t`` (h1, h2),
    ``a0`` (n, h2), ``b0`` (h2,), ``c2`` (h2,): the second pre-activation's weight (transposed), its input and bias
    terms at alpha -> 0 and its bias; ``w2t_back`` the same weight (float32) for the backward pass. ``neg2``, ``pos2_0`` (h2,): the second activation's negative slopes and
    signs at alpha -> 0. ``w3t`` (h2, d): the last weight, transposed; ``m0t`` (h1, d) = ``W2^T D2_0 W3^T``,
    ``p0`` (n, d) = ``a0 D2_0 W3^T``, ``q0`` (d,) = ``(b0 + c2) D2_0 W3^T``, ``c3`` (d,) the last bias.
    ``ref`` (n or 1, d) the target's reference; ``distance``: the distance target, else self-similarity.
    Writes ``g1`` (n, h1) the events' corrections, ``y_sum`` (n, d) and ``c_sum`` (n, h2) the suffix sums at 0.
    """
    n, h1 = v.shape
    h2 = w2t.shape[1]
    d = w3t.shape[1]
    n_steps = alphas.size
    for c in prange(n):
        units = np.empty(h1, np.int32)
        steps = np.empty(h1, np.int32)
        cnt = cell_events(v[c], c1, pos0, alphas, units, steps)
        ev_slope = np.empty(cnt, np.float64)
        out = np.empty((n_steps, d), np.float64)
        start = np.zeros(n_steps + 1, np.int64)
        diff_unit, diff_val, diff_slope = _forward_steps(
            c,
            v,
            c1,
            neg1,
            alphas,
            w2t,
            a0,
            b0,
            c2,
            neg2,
            pos2_0,
            m0t,
            p0,
            q0,
            c3,
            units,
            steps,
            cnt,
            out,
            start,
            ev_slope,
        )
        nd = start[n_steps]
        order = _by_unit(diff_unit, nd, h2)
        _add_differences(order, diff_unit, diff_val, start, w3t, out)
        rr = ref[c] if per_cell else ref[0]
        ys = np.empty((n_steps, d), np.float64)
        for k in range(n_steps):
            if distance:
                _distance_row(out[k], rr, normalize, ys[k])
            else:
                _self_similarity_row(out[k], rr, normalize, ys[k])
            for j in range(d):
                ys[k, j] *= weights[k]
        _difference_terms(order, diff_unit, diff_slope, start, w3t, ys, diff_val)
        _closed_backward(c, w2t_back, m0t, units, steps, ev_slope, cnt, ys, diff_unit, diff_val, start, g1, y_sum,
                         c_sum)  # fmt: skip


@njit(fastmath=True, cache=True)
def _difference_terms(order, diff_unit, diff_slope, start, w3t, ys, diff_val):  # pragma: no cover - numba
    """The differences' terms of C, ``(D2_k - D2_0) W3^T y_k``, unit by unit (a row of ``w3t`` read once).

    Sums only (no sign is decided here), so in any order: ``fastmath`` vectorizes the dot products.
    """
    d = w3t.shape[1]
    for t in range(order.size):
        q = order[t]
        h = diff_unit[q]
        k = _step_of(start, q)
        acc = 0.0
        for j in range(d):
            acc += w3t[h, j] * ys[k, j]
        diff_val[q] = diff_slope[q] * acc


@njit(cache=True)
def _add_differences(order, diff_unit, diff_val, start, w3t, out):  # pragma: no cover - numba
    """``out[k] += (D2_k - D2_0) p_k W3^T`` over the differences, unit by unit (each row of ``w3t`` read once)."""
    d = w3t.shape[1]
    last = -1
    wr = w3t[0]
    for t in range(order.size):
        q = order[t]
        h = diff_unit[q]
        if h != last:
            wr = w3t[h]
            last = h
        ok = out[_step_of(start, q)]
        val = diff_val[q]
        for j in range(d):
            ok[j] += val * wr[j]


@njit(cache=True)
def _step_of(start, q):  # pragma: no cover - numba
    """The step whose slope differences hold entry ``q`` (``start`` their offsets per step)."""
    lo = 0
    hi = start.size - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if start[mid] <= q:
            lo = mid
        else:
            hi = mid - 1
    return lo


@njit(cache=True)
def _by_unit(diff_unit, nd, h2):  # pragma: no cover - numba
    """The entries ``0..nd-1`` ordered by unit (stable counting sort)."""
    counts = np.zeros(h2 + 1, np.int64)
    for t in range(nd):
        counts[diff_unit[t] + 1] += 1
    for h in range(h2):
        counts[h + 1] += counts[h]
    order = np.empty(nd, np.int64)
    for t in range(nd):
        h = diff_unit[t]
        order[counts[h]] = t
        counts[h] += 1
    return order


@njit(cache=True)
def _forward_steps(
    c, v, c1, neg1, alphas, w2t, a0, b0, c2, neg2, pos2_0, m0t, p0, q0, c3, units, steps, cnt, out, start, ev_slope
):  # pragma: no cover - numba
    """One cell's forward pass without the slope differences' terms: ``out[k] = alpha_k P_k + Q_k + c3``.

    Writes each event's slope change to ``ev_slope``. Returns the differences (unit, ``(D2_k - D2_0) p_k``, ``D2_k - D2_0``) in step order, ``start`` their offsets.
    """
    h2 = w2t.shape[1]
    d = out.shape[1]
    a = a0[c].copy()
    b = b0.copy()
    p = p0[c].copy()
    q = q0.copy()
    diff_unit = np.empty(4 * h2, np.int32)
    diff_val = np.empty(4 * h2, np.float64)
    diff_slope = np.empty(4 * h2, np.float64)
    nd = 0
    e = 0
    for k in range(alphas.size):
        al = alphas[k]
        while e < cnt and steps[e] == k:
            i = units[e]
            dd = _slope_change(al, v[c, i], c1[i], neg1[i])
            ev_slope[e] = dd
            dv = dd * v[c, i]
            dc = dd * c1[i]
            row = w2t[i]  # row views: 2-d indexing here would not vectorize (possible aliasing)
            for h in range(h2):
                a[h] += dv * row[h]
                b[h] += dc * row[h]
            mrow = m0t[i]
            for j in range(d):
                p[j] += dv * mrow[j]
                q[j] += dc * mrow[j]
            e += 1
        for j in range(d):
            out[k, j] = al * p[j] + q[j] + c3[j]
        start[k] = nd
        if nd + h2 > diff_unit.size:  # room for this step's differences (growing inside the loop below is slow)
            diff_unit = np.concatenate((diff_unit, np.empty(diff_unit.size, np.int32)))
            diff_val = np.concatenate((diff_val, np.empty(diff_val.size, np.float64)))
            diff_slope = np.concatenate((diff_slope, np.empty(diff_slope.size, np.float64)))
        for h in range(h2):
            pre = al * a[h] + b[h] + c2[h]
            if (pre > 0.0) != pos2_0[h]:
                dsl = (1.0 - neg2[h]) if pre > 0.0 else (neg2[h] - 1.0)
                diff_unit[nd] = h
                diff_val[nd] = dsl * pre
                diff_slope[nd] = dsl
                nd += 1
    start[alphas.size] = nd
    return diff_unit, diff_val, diff_slope


@njit(fastmath=True, cache=True)
def _closed_backward(
    c, w2t_back, m0t, units, steps, ev_slope, cnt, ys, diff_unit, diff_val, start, g1, y_sum, c_sum
):  # pragma: no cover - numba
    """The backward pass of one cell of :func:`events_closed`: suffix sums, events' corrections.

    Sums only (the slopes were decided in the forward pass), so ``fastmath`` may reorder them.
    """
    n_steps, d = ys.shape
    h2 = w2t_back.shape[1]
    big_y = np.zeros(d, np.float64)
    big_c = np.zeros(h2, np.float64)
    e = cnt - 1
    for k in range(n_steps - 1, -1, -1):
        for j in range(d):
            big_y[j] += ys[k, j]
        for t in range(start[k], start[k + 1]):
            big_c[diff_unit[t]] += diff_val[t]
        while e >= 0 and steps[e] == k:
            i = units[e]
            acc = 0.0
            for j in range(d):
                acc += m0t[i, j] * big_y[j]
            if start[k] < start[n_steps]:  # C is not zero: a dense dot
                for h in range(h2):
                    acc += w2t_back[i, h] * big_c[h]
            g1[c, i] += ev_slope[e] * acc
            e -= 1
    for j in range(d):
        y_sum[c, j] = big_y[j]
    for h in range(h2):
        c_sum[c, h] = big_c[h]
