"""Where the fast engine's time goes at SCimilarity's shape, and the machine's limit for it.

Builds the encoder of ``benchmarks/attribution.py`` (28,231 -> 1024 -> 1024 -> 128, random weights with
non-trivial BatchNorm statistics and PReLU slopes, seed 0) and its synthetic counts (about 2,100 expressed
genes per cell), prepares them once, and in this one process with ``--threads`` threads (torch, numba and
BLAS through ``threadpoolctl``):

- times ``attributions_from_plan`` (IG, 50 steps, self-similarity target) on ``--cells`` cells in batches of
  ``--batch`` cells, ``--repeats`` times, as wall time and process CPU time per cell, with every stage
  (the engine's kernels, the torch products, the target's gradient) wrapped by a timer; what no stage
  accounts for is Python overhead;
- counts the floating-point operations per cell of the exact computation at this shape (the event counts are
  measured on the cells);
- measures the machine's float32 matrix-multiply rate with numpy and torch at the engine's product sizes;
- prints which BLAS numpy and torch use (``threadpoolctl``) and ``OPENBLAS_CORETYPE``.

    python benchmarks/engine_profile.py --cells 500 --threads 1
    OPENBLAS_CORETYPE= python benchmarks/engine_profile.py --threads 1   # the same without the override
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _counts import N_GENES, synthetic_counts
from attribution import HIDDEN, LATENT

STAGES = defaultdict(lambda: [0.0, 0.0])
"""Stage name -> [wall seconds, process CPU seconds] over the timed runs."""


def timed(name, f):
    def g(*a, **k):
        t, c = time.perf_counter(), time.process_time()
        try:
            return f(*a, **k)
        finally:
            STAGES[name][0] += time.perf_counter() - t
            STAGES[name][1] += time.process_time() - c

    return g


def instrument() -> None:
    """Wrap the engine's stages (module attributes looked up at call time) with timers."""
    import scsig.attribution._fast as fast
    import scsig.attribution._fast_grad as fg
    import scsig.attribution._fast_targets as ft
    import scsig.attribution._kernels as kernels
    import scsig.attribution._kernels_closed as closed

    for name in kernels.__all__:
        setattr(kernels, name, timed("kernel " + name, getattr(kernels, name)))
    closed.events_closed = timed("  kernel events_closed (forward, targets, backward)", closed.events_closed)
    fg._closed_between_kinks = timed("  tail between the kinks (kernel + 3 products)", fg._closed_between_kinks)
    fast._first_layer_input = timed("first map (sparse x W, float64)", fast._first_layer_input)
    fast._targets_at_ends = timed("targets at input and baseline", fast._targets_at_ends)
    fg._reference_state = timed("reference state (a0 = slope0 v W2^T, float64)", fg._reference_state)
    fg._grad_at_hidden = timed("  per-point tail: W3, target grad, W3^T", fg._grad_at_hidden)
    for cls in (ft.SelfSimilarityTarget, ft.DistanceTarget):
        cls.gradient = timed("  of which target gradient", cls.gradient)
    fg.first_layer_grad_events = timed("events and tail, total", fg.first_layer_grad_events)
    fast.first_layer_grad_events = fg.first_layer_grad_events


def build(n_cells: int):
    import anndata as ad
    import pandas as pd
    import torch

    import scsig as sg
    from scsig.datasets._toy import randomize_batchnorm
    from scsig.models import FoundationModel, SCimilarityEncoder

    genes = [f"GENE{i:05d}" for i in range(N_GENES)]
    torch.manual_seed(0)
    enc = SCimilarityEncoder(N_GENES, HIDDEN, LATENT)
    randomize_batchnorm(enc, prelu=True)
    model = FoundationModel(enc.eval(), genes, name="bench", labels={0: "a", 1: "b"})
    counts = synthetic_counts(n_cells)
    x = sg.pp.prepare(ad.AnnData(counts, var=pd.DataFrame(index=genes)), model).X
    return model, sp.csr_matrix(x, dtype=np.float32)


def run_engine(model, x, batch: int) -> None:
    from scsig.attribution import TargetModule
    from scsig.attribution._fast import _plan, attributions_from_plan
    from scsig.attribution._fast_targets import fast_target
    from scsig.attribution._workspace import Workspace

    plan = _plan(model.encoder)
    target = fast_target(TargetModule(model.encoder, "self_similarity"))
    ws = Workspace()
    for lo in range(0, x.shape[0], batch):
        attributions_from_plan(plan, target, x[lo : lo + batch], n_steps=50, workspace=ws)


def event_counts(model, x) -> tuple[float, float, float]:
    """Per cell: first-layer events, second-layer sign changes along the path (steps x units that differ from
    the previous step), and second-layer units whose sign at some step differs from alpha -> 0."""
    import torch

    from scsig.attribution._fast import _path, _plan

    plan = _plan(model.encoder)
    alphas, _ = _path("ig", 50)
    first = plan.first
    v = (x[:200] @ first.weight_t.astype(np.float64)) * first.scale
    pre1 = alphas[None, :, None] * v[:, None, :] + first.bias[None, None, :]
    pre0 = np.broadcast_to(first.bias, v.shape)[:, None, :]
    ev1 = ((pre1[:, -1:] > 0) != (pre0 > 0)).sum() / v.shape[0]
    second = plan.layers[0]
    neg = second.negative_slope(first.width)
    h = np.where(pre1 > 0, pre1, neg * pre1)
    w2 = second.affine
    pre2 = torch.from_numpy(h) @ w2.weight64.T + w2.bias64
    pre2 = pre2.numpy()
    flips = (np.diff(pre2 > 0, axis=1)).sum() / v.shape[0]
    sign0 = (w2.bias64 + (np.where(first.bias > 0, 1.0, neg) * first.bias) @ w2.weight_t64) > 0
    differ = (pre2 > 0) != sign0[None, None, :]
    return float(ev1), float(flips), float(differ.sum() / v.shape[0] / 50)


def flops(
    n_genes: float, ev1: float, diff: float, s: int = 50, h1: int = HIDDEN[0], h2: int = HIDDEN[1], d: int = LATENT
):
    """Floating-point operations per cell (a multiply-add counts 2) of the engine's exact computation.

    ``ev1`` first-layer events per cell, ``diff`` second-layer units per step whose slope differs from
    alpha -> 0. Also returns the per-point tail's count (the engine before the tail was integrated between the
    kinks) and a plain per-step computation's (captum's, the first layer sparse).
    """
    common = {
        "first map (expressed genes x h1)": 2 * n_genes * h1,
        "W1^T at the expressed genes": 2 * n_genes * h1,
        "reference state a0 (h1 x h2, float64)": 2 * h1 * h2,
        "events forward (two h2 + two d axpys each)": ev1 * (4 * h2 + 4 * d),
        "second pre-activation's signs (s x h2)": 3 * s * h2,
        "final W2^T and M0^T products (h2 + d) x h1": 2 * (h2 + d) * h1,
    }
    between = {
        "P0 = a0 D2_0 W3^T (h2 x d)": 2 * h2 * d,
        "slope differences, forward (s x diff x d)": 2 * s * diff * d,
        "targets through the L2 norm (s x ~10 d)": 10 * s * d,
        "slope differences, backward (s x diff x d)": 2 * s * diff * d,
        "events backward (one d + one h2 dot each)": ev1 * 2 * (d + h2),
    }
    per_point = 2 * (2 * s * h2 * d) + 10 * s * d + 2 * ev1 * h2 + 3 * s * h2
    plain = 2 * n_genes * h1 * 2 + s * (2 * h1 * h2 * 2 + 2 * h2 * d * 2)
    return {**common, **between}, sum(common.values()) + per_point, plain


def gemm_rate(m: int, k: int, n: int, repeats: int = 5) -> tuple[float, float]:
    """GFLOP/s of a float32 (m, k) @ (k, n) with numpy and with torch (best of ``repeats``)."""
    import torch

    a = np.random.default_rng(0).standard_normal((m, k)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    ta, tb, tout = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(out)
    rates = []
    for fn in (lambda: np.matmul(a, b, out=out), lambda: torch.mm(ta, tb, out=tout)):
        fn()
        best = min(_time(fn) for _ in range(repeats))
        rates.append(2 * m * k * n / best / 1e9)
    return rates[0], rates[1]


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500, help="cells per engine call (sg.tl.attribute's default)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numba
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    torch.set_num_threads(args.threads)
    numba.set_num_threads(args.threads)
    threadpool_limits(args.threads)
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; torch {torch.__version__}")
    for info in threadpool_info():
        print(f"  {info['user_api']:7s} {info['internal_api']:9s} {info.get('version')} "
              f"{info.get('architecture')} threads={info['num_threads']} {Path(info['filepath']).name}")  # fmt: skip
    print(f"torch BLAS: {torch.__config__.show().split('BLAS_INFO=')[-1].split(',')[0]}")

    model, x = build(args.cells)
    n_genes = x.nnz / x.shape[0]
    run_engine(model, x[:20], args.batch)  # compile / load the kernels
    instrument()
    walls, cpus = [], []
    for _ in range(args.repeats):
        t, c = time.perf_counter(), time.process_time()
        run_engine(model, x, args.batch)
        walls.append(time.perf_counter() - t)
        cpus.append(time.process_time() - c)
    n = args.cells
    print(f"\n{n} cells, {n_genes:.0f} expressed genes/cell, {args.threads} thread(s), load {os.getloadavg()[0]:.1f}")
    print(f"engine: best {n / min(walls):.0f} cells/s wall, {n / min(cpus):.0f} cells/s of process CPU "
          f"({1e3 * min(cpus) / n:.3f} ms CPU per cell)")  # fmt: skip
    total = sum(cpus)
    print(f"{'stage':52s} {'ms CPU/cell':>11s} {'share':>6s} {'ms wall/cell':>12s}")
    for name, (wall, cpu) in sorted(STAGES.items(), key=lambda kv: -kv[1][1]):
        per = n * args.repeats
        print(f"{name:52s} {1e3 * cpu / per:11.3f} {cpu / total:6.1%} {1e3 * wall / per:12.3f}")

    ev1, flips, differ = event_counts(model, x)
    print(f"\nper cell: {ev1:.0f} first-layer events; second layer: {flips:.0f} sign changes between steps, "
          f"{differ:.0f} units per step with a sign other than at alpha -> 0")  # fmt: skip
    rows, per_point, plain = flops(n_genes, ev1, differ)
    engine_flops = sum(rows.values())
    for name, f in rows.items():
        print(f"  {name:45s} {f / 1e6:8.2f} MFLOP")
    print(f"  {'total (between the kinks)':45s} {engine_flops / 1e6:8.2f} MFLOP; with the per-point tail "
          f"{per_point / 1e6:.1f}; plain per-step computation {plain / 1e6:.0f} MFLOP")  # fmt: skip
    print("\nfloat32 matrix multiply (GFLOP/s, numpy / torch):")
    peak = 0.0
    for m, k, nn in ((2500, 1024, 128), (2500, 128, 1024), (500, 1024, 1024), (4096, 1024, 1024)):
        a, b = gemm_rate(m, k, nn)
        peak = max(peak, a, b)
        print(f"  ({m} x {k}) @ ({k} x {nn}): {a:6.1f} / {b:6.1f}")
    print(f"limit at {peak:.0f} GFLOP/s: {peak * 1e9 / engine_flops:.0f} cells/s; "
          f"engine at {engine_flops * n / min(cpus) / 1e9:.1f} GFLOP/s of CPU time")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
