"""Running :meth:`scsig.Atlas.attribute`'s datasets: one after the other here, or on a cluster, under claims.

Each dataset is attributed under its claim (:func:`scsig.atlas._staging.claim`): two calls that
attribute the same datasets at once do not do the work twice. A call takes every claim it can
without waiting and runs those datasets; then, for each dataset another writer was attributing, it
waits for that writer, skips the dataset if it was added, and attributes it otherwise (the other
writer failed or died).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from . import _manifest as mf
from ._staging import NameTakenError, claim
from ._stream import NamedWarnings, attribute_dataset

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

__all__ = ["SKIPPED", "run_claimed", "run_local"]

SKIPPED = "skipped"
"""The result of a dataset that another writer added while this call ran."""


def run_local(jobs: list[dict[str, Any]], *, common: dict[str, Any], bar: Any) -> dict[str, Any]:
    """Run the jobs one after the other in this process; ``{name: result or exception}``."""
    results: dict[str, Any] = {}
    for job in jobs:
        job = {k: v for k, v in job.items() if k != "n_obs"}
        try:
            with NamedWarnings(job["name"]):
                results[job["name"]] = attribute_dataset(**job, **common, on_cells=bar.update)
        except Exception as err:  # noqa: BLE001 - one dataset's failure is reported, the others go on
            results[job["name"]] = err
    return results


def _listed(root: Path) -> set[str]:
    return {s["name"] for s in mf.read_manifest(root)["shards"]}


def _run_listed_aside(
    run: Callable[..., dict[str, Any]], root: Path, jobs: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    """``run`` the jobs whose datasets the atlas does not list yet; the others are :data:`SKIPPED`."""
    listed = _listed(root)
    results: dict[str, Any] = {j["name"]: SKIPPED for j in jobs if j["name"] in listed}
    todo = [j for j in jobs if j["name"] not in listed]
    if todo:
        results |= run(todo, **kwargs)
    for name, got in results.items():  # added by another writer between our check and our commit
        if isinstance(got, NameTakenError):
            results[name] = SKIPPED
    return results


def run_claimed(
    run: Callable[..., dict[str, Any]], root: Path, jobs: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    """``run(jobs, **kwargs)`` under each dataset's claim; ``{name: result, exception or SKIPPED}``."""
    results: dict[str, Any] = {}
    deferred = []
    with contextlib.ExitStack() as stack:
        mine = []
        for job in jobs:
            held = stack.enter_context(claim(root, job["name"], wait=False))
            (mine if held else deferred).append(job)
        results |= _run_listed_aside(run, root, mine, **kwargs)
    for job in deferred:  # another writer is on it: wait for it, then skip or redo
        with claim(root, job["name"], wait=True):
            results |= _run_listed_aside(run, root, [job], **kwargs)
    return results
