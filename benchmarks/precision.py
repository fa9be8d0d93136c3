"""Accuracy of the attribution engines against integrated gradients computed by captum in float64.

Builds a SCimilarity-shaped encoder with random weights (the shape, seed and BatchNorm/PReLU
randomization of ``benchmarks/attribution.py``: 28,231 genes -> 1024 -> 1024 -> 128) whose first genes
are the Kang data's (the rest are absent from the data), takes the first ``--cells`` cells of
``sg.datasets.kang_ifnb()`` (default all 832) and computes their ``method="ig"`` attributions with

- (a) ``sg.tl.attribute(..., engine="fast")`` (timed ``--repeats`` times after a warm-up),
- (b) ``sg.tl.attribute(..., engine="captum")`` (float32),
- (c) captum's integrated gradients in float64 (the encoder in double precision, float64 inputs; the
  same ``TargetModule`` and captum call as the captum engine), the reference "truth".

For (a) and (b) against (c) it prints the median, 99th percentile and maximum of the row-L1 difference
of the rescaled rows (each row sums to 1,000; the difference is divided by 1,000, i.e. relative) and the
number of cells above ``1e-4``, plus the worst cells. (c) takes several minutes on 2 cores; it is cached
in ``--cache`` (keyed by the number of cells) so that repeated runs only recompute (a) and (b).

    python benchmarks/precision.py                         # all 832 Kang cells, 2 threads
    python benchmarks/precision.py --cells 200 --skip-captum32 --repeats 3
    python benchmarks/precision.py --arch sctab             # scTab-SSL's shape (SELU), seed 0

``--arch sctab`` takes scTab-SSL's shape instead (19,331 -> 512 -> 512 -> 256 -> 256 -> 64 with SELU, the
random weights of ``benchmarks/reference_backends.py``), loaded as an ``SSLModel``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attribution import HIDDEN, LATENT, N_GENES  # the shape of benchmarks/attribution.py


def build_model(var_names: list[str], seed: int = 0):
    """The encoder of ``benchmarks/attribution.py`` (same seed and randomization) over the Kang genes plus padding."""
    import torch

    from scsig.datasets._toy import randomize_batchnorm
    from scsig.models import FoundationModel, SCimilarityEncoder

    genes = [*var_names, *(f"ABSENT{i:05d}" for i in range(N_GENES - len(var_names)))]
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(N_GENES, HIDDEN, LATENT)
    randomize_batchnorm(enc, prelu=True)
    return FoundationModel(enc.eval(), genes, name="bench", labels={0: "a", 1: "b"})


def build_sctab(var_names: list[str], folder: Path, seed: int = 0):
    """A scTab-SSL model (19,331 -> 512 -> 512 -> 256 -> 256 -> 64, SELU; random weights of
    ``benchmarks/reference_backends.py``) over the Kang genes plus padding."""
    from reference_backends import write_ssl_folder

    import scsig as sg

    genes = [*var_names, *(f"ABSENT{i:05d}" for i in range(19_331 - len(var_names)))]
    write_ssl_folder(folder, genes, seed=seed)
    return sg.models.load(folder)


def rescale(mat: np.ndarray, target_sum: float = 1000.0) -> np.ndarray:
    """Absolute values, each row summing to ``target_sum`` (float64)."""
    mat = np.abs(np.asarray(mat, dtype=np.float64))
    sums = mat.sum(axis=1, keepdims=True)
    return np.divide(mat * target_sum, sums, out=np.zeros_like(mat), where=sums > 0)


def float64_truth(model, x: sp.csr_matrix, n_steps: int, batch: int) -> np.ndarray:
    """Rescaled float64 captum IG attributions (cells x model genes)."""
    import torch

    from scsig.attribution import TargetModule, captum_attributions

    module = TargetModule(copy.deepcopy(model.encoder).double().eval(), "self_similarity")
    out = np.zeros(x.shape, dtype=np.float64)
    start = time.perf_counter()
    for lo in range(0, x.shape[0], batch):
        hi = min(lo + batch, x.shape[0])
        inputs = torch.as_tensor(x[lo:hi].toarray(), dtype=torch.float64)
        attr, _, _ = captum_attributions(module, inputs, method="ig", n_steps=n_steps)
        out[lo:hi] = rescale(attr.numpy())
        print(f"    float64 captum: {hi}/{x.shape[0]} cells, {time.perf_counter() - start:.0f} s", flush=True)
    return out


def row_l1(layer: sp.csr_matrix, truth: np.ndarray, n_vars: int) -> np.ndarray:
    """Row-L1 difference relative to the row sum (1,000) of the truth's columns that are the data's genes."""
    got = layer.toarray().astype(np.float64)
    ref = truth[:, :n_vars]
    return np.abs(got - ref).sum(axis=1) / np.maximum(truth.sum(axis=1), 1e-300)


def summarize(name: str, diff: np.ndarray, threshold: float) -> None:
    worst = np.argsort(diff)[::-1][:5]
    print(
        f"{name:10s} median {np.median(diff):.2e}  p99 {np.quantile(diff, 0.99):.2e}  max {diff.max():.2e}  "
        f"cells > {threshold:g}: {int((diff > threshold).sum())}/{diff.size}  worst cells "
        + ", ".join(f"{i} ({diff[i]:.1e})" for i in worst)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--arch",
        choices=["scimilarity", "sctab"],
        default="scimilarity",
        help="the encoder's shape (see the module doc)",
    )
    parser.add_argument("--cells", type=int, default=832, help="first cells of sg.datasets.kang_ifnb()")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the fast engine")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (attribution.py uses 0)")
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--threshold", type=float, default=1e-4)
    parser.add_argument("--skip-captum32", action="store_true", help="do not run engine='captum' (float32)")
    parser.add_argument("--float64-batch", type=int, default=16, help="cells per float64 captum call")
    parser.add_argument(
        "--cache",
        default=str(Path(tempfile.gettempdir()) / "scsig-precision"),
        help="folder for the float64 attributions (recomputed when missing)",
    )
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import scsig as sg

    torch.set_num_threads(args.threads)
    sg.settings.n_jobs = args.threads
    sg.settings.progress = False

    adata = sg.datasets.kang_ifnb()[: args.cells].copy()
    if args.arch == "sctab":
        model = build_sctab(list(adata.var_names), Path(tempfile.mkdtemp()) / "ssl", seed=args.seed)
        shape = "scTab-SSL 19331->512->512->256->256->64 SELU"
    else:
        model = build_model(list(adata.var_names), seed=args.seed)
        shape = f"{N_GENES}->{HIDDEN}->{LATENT}"
    n_vars = adata.n_vars
    print(
        f"{adata.n_obs} Kang cells, model {shape} (seed {args.seed}, {n_vars} genes in the data), "
        f"IG n_steps={args.n_steps}, {args.threads} threads, load average {os.getloadavg()[0]:.1f}"
    )

    x = sg.pp.prepare(adata, model).X
    x = sp.csr_matrix(x, dtype=np.float32)
    first = next(p for p in model.encoder.parameters() if p.ndim == 2)
    digest = hashlib.sha256(np.ascontiguousarray(first.detach().numpy()[:64]))
    key = f"float64_ig_{args.arch}_{args.cells}_{args.n_steps}_{digest.hexdigest()[:12]}.npz"
    cache = Path(args.cache) / key
    if cache.exists():
        truth = sp.load_npz(cache).toarray()
        print(f"float64 captum: read {cache}")
    else:
        start = time.perf_counter()
        truth = float64_truth(model, x, args.n_steps, args.float64_batch)
        cache.parent.mkdir(parents=True, exist_ok=True)
        sp.save_npz(cache, sp.csr_matrix(truth))
        print(f"float64 captum: {time.perf_counter() - start:.0f} s, cached in {cache}")

    warm = adata[:20].copy()
    sg.tl.attribute(warm, model, engine="fast", n_steps=args.n_steps)
    times = []
    for _ in range(args.repeats):
        run = adata.copy()
        start = time.perf_counter()
        sg.tl.attribute(run, model, engine="fast", n_steps=args.n_steps)
        times.append(time.perf_counter() - start)
    fast = run.layers["attr_ig"]
    rates = ", ".join(f"{adata.n_obs / t:.1f}" for t in times)
    print(f"fast engine: {rates} cells/s ({args.repeats} runs; best {adata.n_obs / min(times):.1f})")

    print(f"row-L1 difference against float64 captum (rescaled rows, relative), threshold {args.threshold:g}:")
    summarize("fast", row_l1(fast, truth, n_vars), args.threshold)
    if not args.skip_captum32:
        run = adata.copy()
        start = time.perf_counter()
        sg.tl.attribute(run, model, engine="captum", n_steps=args.n_steps)
        seconds = time.perf_counter() - start
        summarize("captum32", row_l1(run.layers["attr_ig"], truth, n_vars), args.threshold)
        print(f"captum32 engine: {adata.n_obs / seconds:.1f} cells/s (1 run)")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
