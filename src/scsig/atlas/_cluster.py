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
from ._stream import NamedWarnings, attribute_block, attribute_dataset, merge_blocks

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["cells_per_task", "default_per_task", "n_blocks", "run_on_client"]


def _worker_threads() -> int | None:
    from distributed import get_worker

    try:
        return int(get_worker().state.nthreads)
    except (ValueError, AttributeError):  # pragma: no cover - not on a worker
        return None


def _named(name: str, n_threads: int | None) -> contextlib.AbstractContextManager:
    """:class:`NamedWarnings` on a worker that runs one task at a time (catching warnings is process-wide)."""
    return NamedWarnings(name) if n_threads == 1 else contextlib.nullcontext()


def dask_task(
    root: str, source: Any, name: str, model: Any, options: Mapping[str, Any], queue: str | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`attribute_dataset` on a dask worker: its threads, and cells done sent to ``queue``."""
    from distributed import Queue

    report = Queue(queue).put if queue is not None else None
    n_jobs = _worker_threads()
    with _named(name, n_jobs):
        return attribute_dataset(root, source, name, model, options, on_cells=report, n_jobs=n_jobs, **kwargs)


def dask_block(
    root: str, source: Any, name: str, model: Any, options: Mapping[str, Any], queue: str | None, **kwargs: Any
) -> dict[str, Any]:
    """:func:`attribute_block` on a dask worker: its threads, and cells done sent to ``queue``."""
    from distributed import Queue

    report = Queue(queue).put if queue is not None else None
    n_jobs = _worker_threads()
    with _named(name, n_jobs):
        return attribute_block(root, source=source, name=name, model=model, options=options, on_cells=report,
                               n_jobs=n_jobs, **kwargs)  # fmt: skip


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


class _ClusterRun:
    """One :func:`run_on_client` call: its tasks, the staging folders it holds, and what came back."""

    def __init__(self, client: Any, common: dict[str, Any]) -> None:
        from distributed import Queue

        self.client = client
        self.queue_name = f"scsig-attribute-{uuid.uuid4().hex}"
        self.queue = Queue(self.queue_name, client=client)
        model = common["model"]
        # hash=False: a key of its own per call. With the default (a key from the data's hash), a second call with
        # the same model reuses the key, and the first call's future, released when it returns, can take the data
        # away from the second call's tasks ("lost dependencies").
        scattered_model = client.scatter(model, broadcast=True, hash=False) if not isinstance(model, str) else model
        self.shared = dict(common, model=scattered_model)
        self.scattered: list[Any] = []  # sources sent once per dataset, held until every task that reads them is done
        self.futures: dict[Any, str] = {}
        self.held: dict[str, contextlib.ExitStack] = {}
        self.blocks_of: dict[str, list[Any]] = {}
        self.results: dict[str, Any] = {}

    def submit_whole(self, job: dict[str, Any], key: str) -> None:
        """One task attributes the whole dataset and commits it."""
        fut = self.client.submit(dask_task, **job, **self.shared, queue=self.queue_name, pure=False, key=key)
        self.futures[fut] = job["name"]

    def submit_blocks(self, job: dict[str, Any], key: str, blocks: int) -> None:
        """One task per block of cells spills into a staging folder held here; one more merges and commits."""
        name = job["name"]
        stack = contextlib.ExitStack()
        try:
            staged = str(stack.enter_context(staging(Path(job["root"]))))
        except Exception as err:  # noqa: BLE001 - reported per dataset
            stack.close()
            self.results[name] = err
            return
        self.held[name] = stack
        source = job["source"]
        if not isinstance(source, str):  # an AnnData: sent to the workers once, not once per block
            source = self.client.scatter(source, hash=False)
            self.scattered.append(source)
        common = {"source": source, "name": name, "staged": staged, "n_blocks": blocks, **self.shared}
        parts = [
            self.client.submit(
                dask_block, job["root"], block=b, **common, queue=self.queue_name, pure=False, key=f"{key}-block-{b}"
            )
            for b in range(blocks)
        ]
        self.blocks_of[name] = parts
        merge_kw = {"genes": self.shared["genes"], "obs_columns": self.shared["obs_columns"]}
        fut = self.client.submit(
            dask_merge, job["root"], staged, source, name, parts, **merge_kw, pure=False, key=f"{key}-merge"
        )
        self.futures[fut] = name

    def _drain(self, bar: Any) -> None:
        """Move the cells the tasks report as done onto the progress bar."""
        while got := self.queue.get(batch=True):
            bar.update(int(sum(got)))

    def _collect(self, fut: Any) -> None:
        name = self.futures[fut]
        try:
            self.results[name] = fut.result()
        except Exception as err:  # noqa: BLE001 - reported per dataset
            self.results[name] = err
        if name in self.held:  # its shard has moved into the atlas, or it failed: the staging folder goes
            self.client.cancel(self.blocks_of.pop(name))  # after a failed block, the others' work is of no use
            self.held.pop(name).close()

    def wait(self, bar: Any) -> None:
        """Wait for every dataset, updating ``bar`` and releasing each staging folder as its dataset ends."""
        pending = set(self.futures)
        while pending:
            time.sleep(0.2)
            self._drain(bar)
            done = {f for f in pending if f.done()}
            pending -= done
            for fut in done:
                self._collect(fut)
        self._drain(bar)

    def close(self) -> None:
        """Release the staging folders still held (after an error or an interruption)."""
        for stack in self.held.values():
            stack.close()


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
    run = _ClusterRun(client, common)
    if per_task is None:
        threads = sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values())
        per_task = default_per_task([j["n_obs"] for j in jobs], threads)
    try:
        for k, job in enumerate(jobs):
            job = dict(job)
            blocks = n_blocks(job.pop("n_obs"), per_task)
            key = f"{run.queue_name}-{k}"
            if blocks == 1:
                run.submit_whole(job, key)
            else:
                run.submit_blocks(job, key, blocks)
        run.wait(bar)
    finally:
        run.close()
    return run.results
