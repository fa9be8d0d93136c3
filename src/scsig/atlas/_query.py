"""Per-shard query tasks (plain functions of picklable arguments) and the dask runner.

A task opens its shard itself, so the same function runs in a local thread pool or on the workers
of a :class:`distributed.Client`; opened shards and their cell metadata are cached per process
(shards never change once written).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from .._settings import settings
from .._utils import import_optional
from .._utils._warn import user_stacklevel
from ._checks import damaged
from ._integrity import check_chunk_files, check_small_files, load_frames
from ._reader import ShardReader
from ._store import BLOCK_NNZ, OBS_NAMES_ATTR

__all__ = [
    "DATASET_KEY",
    "ShardSpec",
    "check_filter",
    "concat_frames",
    "matrix_shard",
    "run_tasks",
    "score_shard",
    "shard_obs",
    "top_factors",
    "warn_no_cells",
]

DATASET_KEY = "dataset"
"""Column of a query's result that names each cell's dataset (shard)."""

OBS_CACHE_ROWS = 10_000_000
"""Cells whose metadata a process keeps in memory between queries."""

_LOCK = threading.Lock()
_READERS: OrderedDict[tuple[str, str], ShardReader] = OrderedDict()
_OBS: OrderedDict[str, pd.DataFrame] = OrderedDict()
_CHECKED: set[str] = set()
_ROW_FACTORS: OrderedDict[tuple[str, int | str], np.ndarray] = OrderedDict()
_COMPUTED_WARNED: set[str] = set()


@dataclass(frozen=True)
class ShardSpec:
    """What a task needs to find one shard."""

    name: str
    path: str
    layer: str
    n_obs: int
    nnz: int | None = None
    """Values recorded in the manifest (``None``: not checked)."""
    seal: tuple[str, str] | None = None
    """``(algorithm, checksum)`` of the shard's checksum list (``None``: written before checksums)."""
    row_top_k: int | None = None
    """``top_k`` of the per-cell sums stored in the shard (``None``: none stored, computed when needed)."""
    row_norms: bool = False
    """Whether the shard stores its cells' norms (else they are computed when needed)."""


def _reader(spec: ShardSpec) -> ShardReader:
    key = (spec.path, spec.layer)
    with _LOCK:
        reader = _READERS.get(key)
        if reader is not None:
            _READERS.move_to_end(key)
            return reader
    _check_once(spec)
    frames = load_frames(Path(spec.path), spec.seal, spec.name)
    reader = ShardReader(
        Path(spec.path),
        spec.layer,
        name=spec.name,
        n_obs=spec.n_obs,
        nnz=spec.nnz,
        strict=spec.seal is not None,
        frames=None if frames is None or spec.seal is None else (spec.seal[0], frames),
    )
    with _LOCK:
        _READERS[key] = reader
        while len(_READERS) > 1024:
            _READERS.popitem(last=False)
    return reader


def _check_once(spec: ShardSpec) -> None:
    """Check a sealed shard's small files against their checksums (an older shard's chunk files exist), once per process."""
    with _LOCK:
        if spec.path in _CHECKED:
            return
    if spec.seal is None:
        check_chunk_files(Path(spec.path), spec.layer, spec.name, spec.nnz)
    else:
        check_small_files(Path(spec.path), spec.seal, spec.layer, spec.name)
    with _LOCK:
        _CHECKED.add(spec.path)


def shard_obs(spec: ShardSpec, *, cache: bool = True) -> pd.DataFrame:
    """The shard's cell metadata (cached; do not modify the returned frame)."""
    if cache:
        with _LOCK:
            obs = _OBS.get(spec.path)
            if obs is not None:
                _OBS.move_to_end(spec.path)
                return obs
    import anndata as ad
    import zarr

    _check_once(spec)
    try:
        group = zarr.open_group(str(Path(spec.path) / "obs"), mode="r")
        obs = ad.io.read_elem(group) if hasattr(ad, "io") else ad.experimental.read_elem(group)
        names = group.attrs.get(OBS_NAMES_ATTR)
    except Exception as err:
        raise damaged(spec.name, [f"its cell metadata cannot be read ({type(err).__name__}: {err})"]) from err
    if names is not None:
        if len(names) != obs.shape[1]:
            raise damaged(spec.name, [f"its cell metadata has {obs.shape[1]} columns but {len(names)} names"])
        obs.columns = list(names)
    if obs.shape[0] != spec.n_obs:
        raise damaged(spec.name, [f"its cell metadata has {obs.shape[0]} cells, the manifest recorded {spec.n_obs}"])
    if not cache:
        return obs
    with _LOCK:
        _OBS[spec.path] = obs
        while len(_OBS) > 1 and sum(len(o) for o in _OBS.values()) > OBS_CACHE_ROWS:
            _OBS.popitem(last=False)
    return obs


class FilterMissingColumnError(KeyError):
    """An obs filter names a column this shard lacks."""


def _filter_mask(obs: pd.DataFrame, name: str, obs_filter: Any) -> np.ndarray | None:
    """Boolean mask of the cells that pass ``obs_filter`` (``None``: all cells)."""
    if obs_filter is None:
        return None
    frame = obs.assign(**{DATASET_KEY: name}) if DATASET_KEY not in obs else obs
    if isinstance(obs_filter, str):
        try:
            mask = frame.eval(obs_filter)
        except NameError as err:  # pandas' UndefinedVariableError: a column this dataset lacks
            raise FilterMissingColumnError(str(err)) from err
    elif isinstance(obs_filter, Mapping):
        mask = np.ones(len(frame), dtype=bool)
        for col, value in obs_filter.items():
            if col not in frame:
                raise FilterMissingColumnError(col)
            values = (
                list(value)
                if isinstance(value, Sequence | set | np.ndarray | pd.Index) and not isinstance(value, str)
                else [value]
            )
            mask &= frame[col].isin(values).to_numpy()
    elif callable(obs_filter):
        mask = obs_filter(frame)
    else:
        msg = f"obs_filter must be a query string, a dict column -> value(s) or a callable, not {type(obs_filter).__name__}."
        raise TypeError(msg)
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (len(frame),):
        msg = f"obs_filter must select cells with one boolean per cell; got dtype {mask.dtype}, shape {mask.shape}."
        raise ValueError(msg)
    return mask


def _with_dataset(obs: pd.DataFrame, name: str, categories: Sequence[str]) -> pd.DataFrame:
    codes = np.full(len(obs), list(categories).index(name), dtype=np.int32)
    frame = obs.copy()
    frame.insert(0, DATASET_KEY, pd.Categorical.from_codes(codes, categories=list(categories)))
    return frame


def top_factors(spec: ShardSpec, top_k: int) -> np.ndarray:
    """Per cell of the shard, its attribution total over the sum of its ``top_k`` largest attributions (0 for an empty cell).

    Read from the sums stored at add time when they are for ``top_k``; otherwise computed from the
    shard's values (every gene read, in bounded memory) and kept for this process.
    """
    from ._rowstats import compute_row_stats, read_row_stats

    key = (spec.path, int(top_k))
    with _LOCK:
        cached = _ROW_FACTORS.get(key)
        if cached is not None:
            _ROW_FACTORS.move_to_end(key)
            return cached
    if spec.row_top_k == top_k:
        _check_once(spec)
        totals, tops = read_row_stats(Path(spec.path), spec.n_obs, spec.name)
    else:
        with _LOCK:
            first = spec.path not in _COMPUTED_WARNED
            _COMPUTED_WARNED.add(spec.path)
        if first and spec.row_top_k is None:
            warnings.warn(
                f"Dataset {spec.name!r} was added by an older scsig and stores no per-cell top-{top_k} sums: "
                "computing them from its values (every gene is read once; kept for this session). Remove and "
                "re-add the dataset to store them, or pass mode='classic'.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        totals, tops = compute_row_stats(_reader(spec), spec.n_obs, int(top_k))
    factors = np.divide(totals, tops, out=np.zeros_like(tops), where=tops > 0)
    with _LOCK:
        _ROW_FACTORS[key] = factors
        while len(_ROW_FACTORS) > 1 and sum(f.size for f in _ROW_FACTORS.values()) > OBS_CACHE_ROWS:
            _ROW_FACTORS.popitem(last=False)
    return factors


def row_norms(spec: ShardSpec) -> np.ndarray:
    """Per cell of the shard, the Euclidean norm of its attributions (for ``mode="cosine"``).

    Read from the norms stored at add time; for a dataset added by an older scsig, computed from
    the shard's values (every gene read once) on the first ``"cosine"`` query of a process. Kept
    for the next queries.
    """
    from ._rowstats import compute_row_norms, read_row_norms

    key = (spec.path, "l2")
    with _LOCK:
        cached = _ROW_FACTORS.get(key)
        if cached is not None:
            _ROW_FACTORS.move_to_end(key)
            return cached
    if spec.row_norms:
        _check_once(spec)
        norms = read_row_norms(Path(spec.path), spec.n_obs, spec.name)
    else:
        norms = compute_row_norms(_reader(spec), spec.n_obs)
    with _LOCK:
        _ROW_FACTORS[key] = norms
        while len(_ROW_FACTORS) > 1 and sum(f.size for f in _ROW_FACTORS.values()) > OBS_CACHE_ROWS:
            _ROW_FACTORS.popitem(last=False)
    return norms


def score_shard(
    spec: ShardSpec,
    cols: np.ndarray,
    coef: np.ndarray,
    keys: Sequence[str],
    obs_filter: Any,
    categories: Sequence[str],
    top_k: int | None = None,
    mode: str = "classic",
) -> tuple[pd.DataFrame | None, bool]:
    """Scores of one shard's cells that pass the filter: ``(frame, filter_applied)``.

    ``coef`` is genes x signatures; a cell's classic score is ``sum_g a[cell, g] * coef[g, k]``,
    with ``top_k`` (``mode="top"``) that times the cell's :func:`top_factors`, and with
    ``mode="cosine"`` that over the cell's :func:`row_norms` and the norm of ``coef[:, k]``.
    ``filter_applied`` is ``False`` when the filter names a column this dataset lacks (no cell matches).
    """
    obs = shard_obs(spec)
    try:
        mask = _filter_mask(obs, spec.name, obs_filter)
    except FilterMissingColumnError:
        return None, False
    if mask is not None and not mask.any():
        return None, True
    reader = _reader(spec)
    scores = np.zeros((spec.n_obs, len(keys)))
    for where, (data, indices, indptr) in reader.column_groups(cols):
        mat = sparse.csc_matrix((data, indices, indptr), shape=(spec.n_obs, indptr.size - 1))
        part = coef[where]
        if part.shape[1] == 1:  # scipy's 1-D product is the fastest
            scores[:, 0] += mat @ part[:, 0]
        else:
            scores += mat @ part
    if top_k is not None:
        scores *= top_factors(spec, top_k)[:, None]
    if mode == "cosine":
        norms = row_norms(spec)[:, None] * np.linalg.norm(coef, axis=0)[None, :]
        scores = np.divide(scores, norms, out=np.zeros_like(scores), where=norms > 0)
    frame = _with_dataset(obs if mask is None else obs[mask], spec.name, categories)
    rows = scores if mask is None else scores[mask]
    for k, key in enumerate(keys):
        frame[key] = rows[:, k]
    return frame, True


def matrix_shard(
    spec: ShardSpec, cols: np.ndarray, obs_filter: Any, categories: Sequence[str]
) -> tuple[pd.DataFrame | None, sparse.csr_matrix | None, bool]:
    """Attributions of the selected genes for one shard's filtered cells: ``(obs, CSR, filter_applied)``."""
    obs = shard_obs(spec)
    try:
        mask = _filter_mask(obs, spec.name, obs_filter)
    except FilterMissingColumnError:
        return None, None, False
    if mask is not None and not mask.any():
        return None, None, True
    reader = _reader(spec)
    rows = None if mask is None else np.flatnonzero(mask)
    nnz = reader.indptr[cols + 1] - reader.indptr[cols]
    parts = []
    lo = 0
    csum = np.cumsum(nnz)
    while lo < cols.size:  # gene blocks of about BLOCK_NNZ values keep the working set bounded
        base = csum[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(csum, base + BLOCK_NNZ, side="right")))
        hi = min(hi, cols.size)
        data, indices, indptr = reader.columns(cols[lo:hi])
        part = sparse.csc_matrix((data, indices, indptr), shape=(spec.n_obs, hi - lo))
        parts.append(part if rows is None else part[rows])
        lo = hi
    if parts:
        mat = sparse.hstack(parts, format="csr", dtype=np.float32)
    else:
        mat = sparse.csr_matrix((spec.n_obs if rows is None else rows.size, 0), dtype=np.float32)
    frame = _with_dataset(obs if mask is None else obs[mask], spec.name, categories)
    return frame, mat, True


def run_tasks(
    func: Callable[..., Any],
    tasks: Sequence[tuple],
    *,
    client: Any = None,
    progress: bool | None = None,
    desc: str,
    unit: str = "dataset",
) -> list[Any]:
    """Run ``func(*args)`` for every task: on ``client`` (dask.distributed), else dask's thread pool.

    A single task runs inline (nothing to parallelize). Results come back in task order.
    """
    from .._utils._progress import tqdm

    show = settings.progress if progress is None else progress
    with tqdm(total=len(tasks), disable=not show, desc=desc, unit=unit) as bar:
        if client is not None:
            as_completed = import_optional(
                "distributed", purpose="Querying on a cluster", extra="distributed"
            ).as_completed
            futures = [client.submit(func, *args, pure=False) for args in tasks]
            for _ in as_completed(futures):
                bar.update(1)
            return client.gather(futures)
        if len(tasks) <= 1:
            out = [func(*args) for args in tasks]
            bar.update(len(tasks))
            return out
        dask = import_optional("dask", purpose="Querying several datasets in parallel", extra="atlas")
        Callback = import_optional(
            "dask.callbacks", purpose="Querying several datasets in parallel", extra="atlas"
        ).Callback
        delayed = [dask.delayed(func, pure=False)(*args) for args in tasks]
        keys = {d.key for d in delayed}

        class _Progress(Callback):
            def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
                if key in keys:
                    bar.update(1)

        with _Progress():
            return list(dask.compute(*delayed, scheduler="threads", num_workers=settings.n_jobs))


def check_filter(obs_filter: Any, applied: list[bool]) -> None:
    """Raise when a filter applied to no queried dataset (it names a column none has)."""
    if obs_filter is not None and applied and not any(applied):
        msg = f"obs_filter {obs_filter!r} names a column that no queried dataset has."
        raise KeyError(msg)


def warn_no_cells(obs_filter: Any, n_cells: int) -> None:
    """Warn when a filter kept no cell."""
    if obs_filter is not None and n_cells == 0:
        warnings.warn(
            f"obs_filter {obs_filter!r} selects no cells; check its values against atlas.obs() "
            "(values are compared exactly, e.g. case-sensitive).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def concat_frames(frames: list[pd.DataFrame], categories: list[str], *, columns: list[str]) -> pd.DataFrame:
    """Stack per-dataset frames: ``dataset`` first, ``columns`` last, categoricals kept categorical."""
    if not frames:
        empty = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in columns})
        empty[DATASET_KEY] = pd.Categorical([], categories=categories)
        return empty
    if len(frames) == 1:
        return frames[0]
    frame = pd.concat(frames, axis=0, join="outer", sort=False)
    for col in frame.columns:
        if col == DATASET_KEY or isinstance(frame[col].dtype, pd.CategoricalDtype):
            continue
        parts = [f[col] for f in frames if col in f]
        if all(isinstance(p.dtype, pd.CategoricalDtype) for p in parts):  # categories differed across datasets
            frame[col] = frame[col].astype("category")
    if not isinstance(frame[DATASET_KEY].dtype, pd.CategoricalDtype):
        frame[DATASET_KEY] = pd.Categorical(frame[DATASET_KEY].astype(str), categories=categories)
    last = [c for c in columns if c != DATASET_KEY]
    middle = [c for c in frame.columns if c != DATASET_KEY and c not in last]
    return frame[[DATASET_KEY, *middle, *last]]
