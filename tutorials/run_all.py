"""Re-execute the tutorial notebooks and save them with their outputs.

Usage::

    python tutorials/run_all.py               # every notebook in tutorials/
    python tutorials/run_all.py quickstart    # some, by name (with or without .ipynb)
    python tutorials/run_all.py --check       # execute without saving (what the tests do)

Each notebook runs in a fresh kernel of the interpreter that runs this script, with tutorials/ as
the working directory. Progress bars are switched off and matplotlib's inline backend is used, so the
saved outputs are clean; any cell error stops with the failing cell and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT = 900
"""Seconds one cell may run."""


def notebooks(names: list[str] | None = None) -> list[Path]:
    """The tutorial notebooks, all of them or those named."""
    found = sorted(HERE.glob("*.ipynb"))
    if not names:
        return found
    by_stem = {p.stem: p for p in found}
    out = []
    for name in names:
        stem = Path(name).stem
        if stem not in by_stem:
            msg = f"No tutorial {name!r} in {HERE} (have: {sorted(by_stem)})."
            raise SystemExit(msg)
        out.append(by_stem[stem])
    return out


def execute(path: Path, *, save: bool, timeout: int = CELL_TIMEOUT) -> float:
    """Execute one notebook in a kernel of the current interpreter; save it with outputs if ``save``.

    Returns the wall time in seconds. Raises :class:`nbclient.exceptions.CellExecutionError` on the
    first failing cell.
    """
    import nbformat
    from ipykernel.kernelspec import write_kernel_spec
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["SCSIG_PROGRESS"] = "0"
    # tqdm.auto warns in a kernel without ipywidgets even when no bar is shown; keep that out of the outputs
    env["PYTHONWARNINGS"] = "ignore:IProgress not found"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        spec_dir = Path(tmp) / "kernels" / "scsig-python"
        write_kernel_spec(str(spec_dir))  # argv = [sys.executable, "-m", "ipykernel_launcher", ...]
        ksm = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
        km = KernelManager(kernel_name="scsig-python", kernel_spec_manager=ksm)
        client = NotebookClient(
            nb,
            km=km,
            timeout=timeout,
            kernel_name="scsig-python",
            resources={"metadata": {"path": str(path.parent)}},
            record_timing=False,
        )
        client.execute(env=env)
    elapsed = time.perf_counter() - start
    if save:
        nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
        nbformat.write(nb, path)
    return elapsed


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks to run (default: all)")
    parser.add_argument("--check", action="store_true", help="execute without saving the outputs")
    args = parser.parse_args(argv)
    total = 0.0
    for path in notebooks(args.names):
        print(f"{path.name} ...", end=" ", flush=True)
        seconds = execute(path, save=not args.check)
        total += seconds
        print(f"{seconds:.1f} s{'' if args.check else ', saved'}", flush=True)
    print(f"total {total:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
