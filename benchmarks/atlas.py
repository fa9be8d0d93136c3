"""Benchmark sg.Atlas against the reference tool (sc-signature 1.0.0) on synthetic attribution atlases.

Builds the same synthetic matrix for both tools (cells x 28,231 genes, about 2,090 nonzero
attributions per cell, every row summing to 1,000), then times

- the build: ``sg.Atlas.create`` + ``add`` vs the reference's ``SIGnature.create_tiledb`` (peak memory
  of each build process, which loads the input matrix itself);
- queries of 20 and 100 genes, frequently expressed (the most frequent genes) and rare (random genes
  from the less frequent half): in a cold process (first query after imports; the OS file cache is
  not dropped) and warm (median of repeats in the same process), with the peak-memory growth of the
  query process;
- the import of the reference's TileDB array with ``sg.Atlas.from_signature``;

and checks that the scores agree (scsig's ``mode="classic"`` vs ``query_attributions``, and the imported
atlas too). Every query is also timed with ``mode="top"`` (the default of ``sg.tl.score``), and the
build reports the time of the per-cell top-300 sums it stores for that mode.
Every tool runs in its own subprocess; the reference runs in its own environment
(``--reference-python``, default ``../refvenv/bin/python`` beside the repository). Sizes above ``--reference-max-cells``
skip the reference: its build needs about 10 GB per 100k cells.

Usage::

    python benchmarks/atlas.py --cells 100000            # scsig and the reference
    python benchmarks/atlas.py --cells 1000000 --keep    # scsig only (the reference cannot fit)

Results go to ``<workdir>/results_<cells>.json`` and are printed as a table with ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

N_GENES = 28_231
NNZ_PER_CELL = 2_090
CHUNK_CELLS = 10_000
HERE = Path(__file__).resolve()


# ---------------------------------------------------------------------------- synthetic data


def gene_frequencies(seed: int = 0) -> np.ndarray:
    """Per-gene probability of a nonzero attribution; mean such that cells have ~2,090 nonzeros."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.3, 3.5, size=N_GENES)
    for _ in range(20):
        p = np.clip(p * (NNZ_PER_CELL / N_GENES) / p.mean(), 0, 0.95)
    return p


def _draw_kernel():
    import numba

    @numba.njit(cache=True)
    def draw(p, n, seed, rows, vals, counts):  # pragma: no cover - compiled
        """Bernoulli(p_g) nonzeros gene by gene (geometric gaps), gamma(0.5) values; returns how many."""
        np.random.seed(seed)  # noqa: NPY002 - numba's per-thread generator
        k = 0
        for g in range(p.size):
            if p[g] <= 0.0:
                continue
            logq = np.log1p(-p[g])
            pos = -1
            start = k
            while True:
                pos += int(np.floor(np.log(1.0 - np.random.random()) / logq)) + 1  # noqa: NPY002
                if pos >= n:
                    break
                if k >= rows.size:
                    return -1
                rows[k] = pos
                vals[k] = np.random.gamma(0.5, 1.0) + 1e-6  # noqa: NPY002
                k += 1
            counts[g] = k - start
        return k

    return draw


_DRAW = None


def synthetic_chunk(seed: int, p: np.ndarray, n: int):
    """``n`` cells: Bernoulli(p_g) nonzeros, gamma(0.5) values, each row scaled to sum to 1,000 (CSR float32)."""
    from scipy import sparse

    global _DRAW
    if _DRAW is None:
        _DRAW = _draw_kernel()
    mean = n * p.sum()
    cap = int(mean + 10 * np.sqrt(mean) + 1000)
    rows = np.empty(cap, dtype=np.int32)
    vals = np.empty(cap, dtype=np.float32)
    counts = np.zeros(p.size, dtype=np.int64)
    k = _DRAW(p, n, seed, rows, vals, counts)
    if k < 0:  # pragma: no cover - 10 standard deviations
        msg = "more nonzeros than expected; raise the buffer"
        raise RuntimeError(msg)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    x = sparse.csc_matrix((vals[:k], rows[:k], indptr), shape=(n, p.size)).tocsr()
    totals = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    scale = np.divide(1000.0, totals, out=np.zeros_like(totals), where=totals > 0)
    x.data = (x.data * np.repeat(scale, np.diff(x.indptr))).astype(np.float32)
    return x


def generate(n_cells: int, workdir: Path, *, npz: bool) -> dict:
    """Write the matrix: an uncompressed .npz (both tools) or, when large, an .h5 CSR read backed (scsig)."""
    from scipy import sparse

    p = gene_frequencies()
    np.save(workdir / "freq.npy", p)
    start = time.perf_counter()
    if npz:
        chunks = [synthetic_chunk(1 + lo, p, min(CHUNK_CELLS, n_cells - lo)) for lo in range(0, n_cells, CHUNK_CELLS)]
        x = sparse.vstack(chunks, format="csr")
        del chunks
        sparse.save_npz(workdir / "x.npz", x, compressed=False)
        nnz = int(x.nnz)
    else:
        import anndata as ad
        import h5py

        nnz = 0
        with h5py.File(workdir / "x.h5", "w") as f:
            for lo in range(0, n_cells, CHUNK_CELLS):
                chunk = synthetic_chunk(1 + lo, p, min(CHUNK_CELLS, n_cells - lo))
                nnz += chunk.nnz
                if lo == 0:
                    ad.io.write_elem(f, "X", chunk, dataset_kwargs={"chunks": (1 << 20,)})
                else:
                    ad.io.sparse_dataset(f["X"]).append(chunk)
    return {"seconds": time.perf_counter() - start, "nnz": nnz, "nnz_per_cell": nnz / n_cells}


def gene_sets(p: np.ndarray) -> dict[str, list[int]]:
    """The query gene sets: frequent = most often nonzero; rare = random genes of the less frequent half."""
    order = np.argsort(-p, kind="stable")
    rng = np.random.default_rng(5)
    rare = rng.choice(order[p.size // 2 :], 100, replace=False)
    return {
        "frequent_20": sorted(order[:20].tolist()),
        "frequent_100": sorted(order[:100].tolist()),
        "rare_20": sorted(rare[:20].tolist()),
        "rare_100": sorted(rare.tolist()),
    }


# ---------------------------------------------------------------------------- workers

REFERENCE_WORKER = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    import tiledb  # imported before timing: scsig's timings exclude imports too
    from SIGnature import SIGnature

    task, args = sys.argv[1], json.loads(sys.argv[2])
    genes = [f"G{i}" for i in range(args["n_genes"])]
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6

    def status_gb(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024 / 1e9

    def reset_hwm():
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    out = {}
    if task == "build":
        rss0 = peak()
        t = time.perf_counter()
        SIGnature(genes).create_tiledb(args["npz"], attribution_tiledb_uri=args["uri"])
        out = {"seconds": time.perf_counter() - t, "peak_gb": peak(), "peak_before_gb": rss0}
    elif task == "query":
        query = [f"G{i}" for i in args["genes"]]
        rss0 = status_gb("VmRSS:")
        reset_hwm()
        t = time.perf_counter()
        sig = SIGnature(genes, attribution_tiledb_uri=args["uri"])
        res = sig.query_attributions(query)
        cold = time.perf_counter() - t
        grow = status_gb("VmHWM:") - rss0
        warm = []
        for _ in range(args["repeats"]):
            t = time.perf_counter()
            res = sig.query_attributions(query)
            warm.append(time.perf_counter() - t)
        np.save(args["scores"], np.asarray(res, dtype=np.float64).ravel())
        out = {"cold": cold, "warm": float(np.median(warm)), "peak_growth_gb": grow, "n_rows": int(np.asarray(res).shape[0])}
    print("RESULT " + json.dumps(out))
    """
)


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _reset_hwm() -> bool:
    """Reset the process's peak resident memory (Linux ``clear_refs``), so a step's own peak can be read."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _rss_gb() -> float:
    """Current resident memory (``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e9
    return float("nan")


def _hwm_gb() -> float | None:
    """Peak resident memory since the last reset (``VmHWM``), or ``None`` where unavailable."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        return None
    return None


def worker(task: str, args: dict) -> dict:
    """scsig's side, run in a fresh process by :func:`run`."""
    t_import = time.perf_counter()
    import scsig as sg

    sg.settings.progress = False
    imported = time.perf_counter() - t_import
    genes = [f"G{i}" for i in range(args["n_genes"])]
    if task == "build":
        import anndata as ad
        import pandas as pd

        if args["input"].endswith(".npz"):
            from scipy import sparse

            layer = sparse.load_npz(args["input"]).tocsr()
            handle = None
        else:
            import h5py

            handle = h5py.File(args["input"], "r")
            layer = ad.io.sparse_dataset(handle["X"])
        n = layer.shape[0]
        adata = ad.AnnData(
            obs=pd.DataFrame({"sample": pd.Categorical(np.arange(n) % 20)}, index=[f"c{i}" for i in range(n)]),
            var=pd.DataFrame(index=genes),
        )
        adata.layers["attr_ig"] = layer
        rss0 = _peak_gb()
        shutil.rmtree(args["atlas"], ignore_errors=True)
        reset = _reset_hwm()
        t = time.perf_counter()
        atlas = sg.Atlas.create(args["atlas"], gene_order=genes)
        atlas.add(adata, name="synthetic")
        out = {"seconds": time.perf_counter() - t, "peak_gb": _peak_gb(), "peak_before_gb": rss0}
        out["build_peak_gb"] = _hwm_gb() if reset else None  # the build's own peak, input resident
        if handle is not None:
            handle.close()
        out["disk_gb"] = sum(f.stat().st_size for f in Path(args["atlas"]).rglob("*") if f.is_file()) / 1e9
        out["row_stats_s"] = _time_row_stats(atlas)
        if hasattr(layer, "indptr"):  # in memory: what the build itself does with the rows
            from scsig.atlas._rowstats import RowStats

            t = time.perf_counter()
            RowStats(300)(layer.indptr, layer.data)
            out["row_stats_rows_s"] = time.perf_counter() - t
        return out
    if task == "import":
        import pandas as pd

        folder = Path(args["folder"])
        rss0 = _peak_gb()
        t = time.perf_counter()
        sg.Atlas.from_signature(folder, args["atlas"], gene_order=genes)
        return {"seconds": time.perf_counter() - t, "peak_gb": _peak_gb(), "peak_before_gb": rss0}
    if task == "query":
        import tensorstore  # noqa: F401 - imported before timing, as the reference's worker imports tiledb
        import zarr  # noqa: F401

        query = [f"G{i}" for i in args["genes"]]
        rss0 = _rss_gb()
        reset = _reset_hwm()
        t = time.perf_counter()
        atlas = sg.Atlas.open(args["atlas"])
        mode = args.get("mode", "classic")  # classic: the reference's score
        frame = atlas.score(query, mode=mode)
        cold = time.perf_counter() - t
        grow = _hwm_gb() - rss0 if reset else float("nan")
        warm = []
        for _ in range(args["repeats"]):
            t = time.perf_counter()
            frame = atlas.score(query, mode=mode)
            warm.append(time.perf_counter() - t)
        np.save(args["scores"], frame["score"].to_numpy())
        out = {"cold": cold, "warm": float(np.median(warm)), "peak_growth_gb": grow, "import_s": imported}
        if args.get("profile"):
            out["profile"] = _profile(atlas, query)
        return out
    msg = f"unknown task {task}"
    raise ValueError(msg)


def _time_row_stats(atlas) -> float:
    """Seconds to compute the per-cell totals and top-300 sums from the first (gene-major) shard, as a TileDB import does."""
    from scsig.atlas import _query
    from scsig.atlas._rowstats import compute_row_stats

    spec = atlas._specs(None)[0]
    t = time.perf_counter()
    compute_row_stats(_query._reader(spec), spec.n_obs, 300)
    return time.perf_counter() - t


def _profile(atlas, query) -> dict:
    """Where a warm query's time goes: reading (decompressing) the genes, the sparse product, the frame."""
    from scipy import sparse

    from scsig.atlas import _query

    spec = atlas._specs(None)[0]
    reader = _query._reader(spec)
    cols = np.sort(atlas.gene_order.get_indexer(query))
    coef = np.full(cols.size, 1 / cols.size)
    obs = _query.shard_obs(spec)
    parts = {"read": [], "product": [], "frame": []}
    for _ in range(5):
        t0 = time.perf_counter()
        data, indices, indptr = reader.columns(cols)
        t1 = time.perf_counter()
        scores = sparse.csc_matrix((data, indices, indptr), shape=(spec.n_obs, cols.size)) @ coef
        t2 = time.perf_counter()
        frame = _query._with_dataset(obs, spec.name, [spec.name])
        frame["score"] = scores
        t3 = time.perf_counter()
        parts["read"].append(t1 - t0)
        parts["product"].append(t2 - t1)
        parts["frame"].append(t3 - t2)
    out = {k: float(np.median(v)) for k, v in parts.items()}
    out["values_read"] = int(data.size)
    out["bytes_decoded_mb"] = (data.nbytes + indices.nbytes) / 1e6
    return out


def run(cmd: list[str], *, log: Path) -> dict:
    """Run a worker process, return its RESULT json; its output goes to ``log``."""
    with log.open("a") as fh:
        fh.write(f"\n$ {' '.join(cmd[:3])} ...\n")
        fh.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, check=False)
        fh.write(proc.stdout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        msg = f"worker failed ({proc.returncode}): {cmd[:4]}; see {log}"
        raise RuntimeError(msg)
    return json.loads(lines[-1][len("RESULT ") :])


def ours(task: str, args: dict, log: Path) -> dict:
    return run([sys.executable, str(HERE), "--worker", task, json.dumps(args)], log=log)


def reference(python: str, task: str, args: dict, log: Path) -> dict:
    return run([python, "-c", REFERENCE_WORKER, task, json.dumps(args)], log=log)


# ---------------------------------------------------------------------------- main


def bench(n_cells: int, workdir: Path, *, ref_python: str | None, repeats: int, previous: dict | None = None) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "log.txt"
    use_ref = ref_python is not None
    atlas = str(workdir / "atlas")
    uri = workdir / "reference" / "synthetic" / "attributions"
    common = {"n_genes": N_GENES}
    if previous is not None:  # --reuse: the matrix and both builds of an earlier run; queries measured anew
        res = {k: previous[k] for k in ("cells", "genes", "reference", "cpu_count", "generate", "build_scsig")}
        if use_ref:
            res["build_reference"] = previous["build_reference"]
        res["reused_builds"] = True
        print(f"[{n_cells:,} cells] reusing the matrix and the builds of the previous run", flush=True)
    else:
        res = {"cells": n_cells, "genes": N_GENES, "reference": use_ref, "cpu_count": os.cpu_count()}
        print(f"[{n_cells:,} cells] generating the synthetic matrix ...", flush=True)
        res["generate"] = generate(n_cells, workdir, npz=use_ref or n_cells <= 200_000)
        print(f"  {res['generate']['nnz']:,} nonzeros ({res['generate']['nnz_per_cell']:.0f} per cell)", flush=True)
        source = str(workdir / ("x.npz" if (workdir / "x.npz").exists() else "x.h5"))
        print("  scsig build ...", flush=True)
        res["build_scsig"] = ours("build", {**common, "input": source, "atlas": atlas}, log)
        if use_ref:
            print("  reference build (slow) ...", flush=True)
            shutil.rmtree(uri.parent, ignore_errors=True)
            uri.parent.mkdir(parents=True)
            res["build_reference"] = reference(ref_python, "build", {**common, "npz": source, "uri": str(uri)}, log)
    sets = gene_sets(np.load(workdir / "freq.npy"))
    res["queries"] = {}
    for name, cols in sets.items():
        print(f"  query {name} ...", flush=True)
        q = {
            "scsig": ours(
                "query",
                {
                    **common,
                    "atlas": atlas,
                    "genes": cols,
                    "repeats": repeats,
                    "scores": str(workdir / f"s_{name}.npy"),
                    "profile": name == "frequent_100",
                },
                log,
            ),
            "scsig_top": ours(
                "query",
                {
                    **common,
                    "atlas": atlas,
                    "genes": cols,
                    "repeats": repeats,
                    "scores": str(workdir / f"t_{name}.npy"),
                    "mode": "top",
                },
                log,
            ),
        }
        if use_ref:
            q["reference"] = reference(
                ref_python,
                "query",
                {
                    **common,
                    "uri": str(uri),
                    "genes": cols,
                    "repeats": repeats,
                    "scores": str(workdir / f"r_{name}.npy"),
                },
                log,
            )
            a, b = np.load(workdir / f"s_{name}.npy"), np.load(workdir / f"r_{name}.npy")
            q["max_abs_diff"] = float(np.abs(a - b).max()) if a.shape == b.shape else f"shapes {a.shape} vs {b.shape}"
        res["queries"][name] = q
    if use_ref:
        print("  import of the reference's TileDB array ...", flush=True)
        import pandas as pd

        meta = pd.DataFrame({"sample": [f"s{i % 20}" for i in range(n_cells)]}, index=[f"c{i}" for i in range(n_cells)])
        meta.to_csv(uri.parent / "cell_metadata.csv.gz")
        imported = str(workdir / "imported")
        shutil.rmtree(imported, ignore_errors=True)
        res["import"] = ours("import", {**common, "folder": str(uri.parent.parent), "atlas": imported}, log)
        for name, cols in sets.items():
            ours(
                "query",
                {**common, "atlas": imported, "genes": cols, "repeats": 1, "scores": str(workdir / f"i_{name}.npy")},
                log,
            )
            a, b = np.load(workdir / f"i_{name}.npy"), np.load(workdir / f"r_{name}.npy")
            res["queries"][name]["import_max_abs_diff"] = float(np.abs(a - b).max())
    return res


def report(res: dict) -> str:
    n = res["cells"]
    lines = [
        f"\n== {n:,} cells x {res['genes']:,} genes, {res['generate']['nnz']:,} nonzeros; {res['cpu_count']} CPUs =="
    ]
    lines.append(f"{'':34s}{'scsig':>12s}{'reference':>12s}{'ratio':>9s}")

    def row(label, a, b=None, fmt="{:.3f}"):
        ratio = f"{b / a:8.1f}x" if (b is not None and a) else ""
        lines.append(f"{label:34s}{fmt.format(a):>12s}{(fmt.format(b) if b is not None else '-'):>12s}{ratio:>9s}")

    bs, br = res["build_scsig"], res.get("build_reference")
    row("build (s)", bs["seconds"], br["seconds"] if br else None, "{:.1f}")
    row("build process peak memory (GB)", bs["peak_gb"], br["peak_gb"] if br else None, "{:.2f}")
    row("  of which before the build (GB)", bs["peak_before_gb"], br["peak_before_gb"] if br else None, "{:.2f}")
    if bs.get("build_peak_gb") is not None:
        lines.append(
            f"{'  peak during the build (GB)':34s}{bs['build_peak_gb']:>12.2f}   (input matrix resident; the reference loads it inside its build)"
        )
    lines.append(f"{'atlas on disk (GB)':34s}{bs['disk_gb']:>12.2f}")
    if bs.get("row_stats_rows_s") is not None:
        lines.append(
            f"{'  per-cell top-300 sums (s)':34s}{bs['row_stats_rows_s']:>12.2f}   (part of the build, from its rows; timed again)"
        )
    if bs.get("row_stats_s") is not None:
        lines.append(
            f"{'  the same from the shard (s)':34s}{bs['row_stats_s']:>12.1f}   (what a TileDB import adds to its build)"
        )
    for name, q in res["queries"].items():
        s, r = q["scsig"], q.get("reference")
        row(f"query {name} warm (s)", s["warm"], r["warm"] if r else None)
        row(f"query {name} cold process (s)", s["cold"], r["cold"] if r else None)
        row(f"query {name} memory growth (GB)", s["peak_growth_gb"], r["peak_growth_gb"] if r else None)
        if "scsig_top" in q:
            t = q["scsig_top"]
            lines.append(
                f"  mode='top': warm {t['warm']:.3f} s ({t['warm'] / s['warm']:.2f}x classic), "
                f"cold {t['cold']:.3f} s ({t['cold'] / s['cold']:.2f}x), memory growth {t['peak_growth_gb']:.3f} GB"
            )
        if "max_abs_diff" in q:
            lines.append(
                f"  scores vs reference: max |diff| {q['max_abs_diff']}; imported atlas: {q.get('import_max_abs_diff')}"
            )
        if "profile" in s:
            p = s["profile"]
            lines.append(
                f"  warm profile: read {p['read']:.3f} s ({p['bytes_decoded_mb']:.0f} MB, {p['values_read']:,} values), "
                f"product {p['product']:.3f} s, frame {p['frame']:.3f} s"
            )
    if res.get("reused_builds"):
        lines.append("(build rows: from the earlier run whose matrix and atlases were reused)")
    if "import" in res:
        lines.append(
            f"{'import reference TileDB (s)':34s}{res['import']['seconds']:>12.1f}   peak {res['import']['peak_gb']:.2f} GB"
        )
    lines.append(
        f"(scsig import time in a fresh process: {next(iter(res['queries'].values()))['scsig']['import_s']:.1f} s, not in the timings)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000])
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "scsig_atlas_bench")
    parser.add_argument(
        "--reference-python", default=str(Path(__file__).resolve().parents[2] / "refvenv" / "bin" / "python")
    )
    parser.add_argument("--reference-max-cells", type=int, default=200_000)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the generated data and atlases")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the matrix and builds of a kept earlier run; redo the queries"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker[0], json.loads(args.worker[1]))), flush=True)
        return
    for n in args.cells:
        ref = None if (args.no_reference or n > args.reference_max_cells) else args.reference_python
        if ref is None and not args.no_reference:
            print(f"[{n:,} cells] reference skipped: its build needs ~10 GB per 100k cells (this machine has 24 GB)")
        workdir = args.workdir / str(n)
        previous_file = args.workdir / f"results_{n}.json"
        previous = (
            json.loads(previous_file.read_text())
            if args.reuse and previous_file.exists() and (workdir / "atlas").exists()
            else None
        )
        res = bench(n, workdir, ref_python=ref, repeats=args.repeats, previous=previous)
        (args.workdir / f"results_{n}.json").write_text(json.dumps(res, indent=1))
        print(report(res), flush=True)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
