"""Running :meth:`scsig.Atlas.attribute`'s datasets as tasks on a ``dask.distributed`` cluster.

Small datasets are one task each (:func:`dask_task`); a large one is split into blocks of cells
(:func:`dask_block`, each spilled into a staging folder this process holds) merged and committed by
one more task (:func:`dask_merge`). How many cells a task gets is decided from the datasets' sizes
and the cluster's threads (:func:`default_per_task`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._staging import staging
from ._stream import attribute_block, attribute_dataset, merge_blocks

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["cells_per_task", "default_per_task", "n_blocks", "run_on_client"]


def _worker_threads() -> int | None:
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):  # pragma: no cover - not on a worker
        return None


def dask_task(
    root: str, source: Any, name: str, model: Any, options: Mapping[str, Any], queue: str | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`attribute_dataset` on a dask worker: its threads, and cells done sent to ``queue``."""
    from distributed import Queue

    report = Queue(queue).put if queue is not None else None
    return attribute_dataset(root, source, name, model, options, on_cells=report, n_jobs=_worker_threads(), **kwargs)


def dask_block(
    root: str, source: Any, name: str, model: Any, options: Mapping[str, Any], queue: str | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`attribute_block` on a dask worker: its threads, and cells done sent to ``queue``."""
    from distributed import Queue

    report = Queue(queue).put if queue is not None else None
    return attribute_block(root, source=source, name=name, model=model, options=options, on_cells=report,
                           n_jobs=_worker_threads(), **kwargs)  # fmt: skip


def dask_merge(root: str, staged: str, source: Any, name: str, parts: Sequence[Any], **kwargs: Any) -> dict[str, Any]:
    """:func:`merge_blocks` on a dask worker, with its threads."""
    return merge_blocks(root, staged, source, name, parts, n_jobs=_worker_threads(), **kwargs)


MIN_TASK_CELLS = 2_000
"""Fewest cells per task when :meth:`scsig.Atlas.attribute` splits datasets into blocks on its own."""

TASKS_PER_THREAD = 4
"""Tasks per worker thread aimed at when splitting datasets on a cluster (so workers finish together)."""


BALANCE_TOLERANCE = 0.1
"""Whole datasets are one task each when the busiest thread gets at most this much more than an even share."""


def cells_per_task(total: int, n_threads: int) -> int:
    """Cells per task on a cluster of ``n_threads`` worker threads: about :data:`TASKS_PER_THREAD` tasks each."""
    return max(MIN_TASK_CELLS, -(-total // max(1, TASKS_PER_THREAD * n_threads)))


def default_per_task(sizes: Sequence[int], n_threads: int) -> int | None:
    """``None`` (one task per dataset) when whole datasets keep ``n_threads`` threads evenly busy, else :func:`cells_per_task`.

    Whole datasets are assigned largest first, each to the least loaded thread; if the busiest
    thread then gets more than :data:`BALANCE_TOLERANCE` above an even share of the cells, the
    datasets are split into blocks. Blocks cost an extra merge pass, so they are used only where
    they even out the work (few or unequal datasets).
    """
    threads = max(1, int(n_threads))
    loads = [0] * threads
    for size in sorted(sizes, reverse=True):
        loads[loads.index(min(loads))] += int(size)
    total = sum(loads)
    if max(loads) <= (1 + BALANCE_TOLERANCE) * total / threads:
        return None
    return cells_per_task(total, threads)


def n_blocks(n_obs: int, per_task: int | None) -> int:
    """Blocks a dataset of ``n_obs`` cells is split into for tasks of about ``per_task`` cells (``None``: one)."""
    if per_task is None or n_obs <= per_task:
        return 1
    return max(1, round(n_obs / per_task))


def run_on_client(
    client: Any,
    jobs: list[dict[str, Any]],
    *,
    common: dict[str, Any],
    bar: Any,
    per_task: int | None = None,
) -> dict[str, Any]:
    """Run the jobs on ``client``'s cluster; ``{name: result or exception}``.

    A dataset of more than ``per_task`` cells is split into blocks of cells: one task per block
    attributes its cells into a spill inside a staging folder that this process creates and holds
    locked, then one task merges the spills, seals the shard and commits it. Smaller datasets are
    one task each. ``per_task=None`` picks it from the datasets' sizes and the cluster's threads
    (:func:`default_per_task`).
    """
    from distributed import Queue

    queue_name = f"scsig-attribute-{uuid.uuid4().hex}"
    queue = Queue(queue_name, client=client)
    model = common["model"]
    # hash=False: a key of its own per call. With the default (a key from the data's hash), a second call with the
    # same model reuses the key, and the first call's future, released when it returns, can take the data away
    # from the second call's tasks ("lost dependencies").
    shared = dict(
        common, model=client.scatter(model, broadcast=True, hash=False) if not isinstance(model, str) else model
    )
    scattered: list[Any] = []  # sources sent once per dataset, held until every task that reads them is done
    if per_task is None:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        per_task = default_per_task([j["n_obs"] for j in jobs], threads)
    futures: dict[Any, str] = {}
    held: dict[str, contextlib.ExitStack] = {}
    blocks_of: dict[str, list[Any]] = {}
    results: dict[str, Any] = {}
    try:
        for k, job in enumerate(jobs):
            job = dict(job)
            n_obs, name = job.pop("n_obs"), job["name"]
            key = f"{queue_name}-{k}"
            blocks = n_blocks(n_obs, per_task)
            if blocks == 1:
                fut = client.submit(dask_task, **job, **shared, queue=queue_name, pure=False, key=key)
                futures[fut] = name
                continue
            stack = contextlib.ExitStack()
            try:
                staged = str(stack.enter_context(staging(Path(job["root"]))))
            except Exception as err:  # noqa: BLE001 - reported per dataset
                stack.close()
                results[name] = err
                continue
            held[name] = stack
            source = job["source"]
            if not isinstance(source, str):  # an AnnData: sent to the workers once, not once per block
                source = client.scatter(source, hash=False)
                scattered.append(source)
            parts = [
                client.submit(
                    dask_block,
                    job["root"],
                    source=source,
                    name=name,
                    staged=staged,
                    block=b,
                    n_blocks=blocks,
                    **shared,
                    queue=queue_name,
                    pure=False,
                    key=f"{key}-block-{b}",
                )  # fmt: skip
                for b in range(blocks)
            ]
            blocks_of[name] = parts
            merge_kw = {"genes": shared["genes"], "obs_columns": shared["obs_columns"]}
            fut = client.submit(
                dask_merge, job["root"], staged, source, name, parts, **merge_kw, pure=False, key=f"{key}-merge"
            )
            futures[fut] = name
        pending = set(futures)

        def drain() -> None:
            while True:
                got = queue.get(batch=True)
                if not got:
                    return
                bar.update(int(sum(got)))

        while pending:
            time.sleep(0.2)
            drain()
            done = {f for f in pending if f.done()}
            pending -= done
            for fut in done:
                name = futures[fut]
                try:
                    results[name] = fut.result()
                except Exception as err:  # noqa: BLE001 - reported per dataset
                    results[name] = err
                if name in held:  # its shard has moved into the atlas, or it failed: the staging folder goes
                    client.cancel(blocks_of.pop(name))  # after a failed block, the others' work is of no use
                    held.pop(name).close()
        drain()
    finally:
        for stack in held.values():
            stack.close()
    return results
