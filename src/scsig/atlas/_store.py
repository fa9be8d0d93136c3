"""One shard on disk: an AnnData zarr (v3) store whose attribution layer is a CSC matrix.

A shard is a folder that :func:`anndata.read_zarr` opens as an AnnData: ``obs`` (the dataset's cell
metadata), ``var`` (the atlas gene order), ``uns["scsig"]`` (provenance) and
``layers[<layer>]``, anndata's ``csc_matrix`` encoding (``data``, ``indices``, ``indptr``). The
matrix is cells x genes stored by column, so one gene's attributions across the shard's cells are
contiguous; ``data`` and ``indices`` are sharded, Blosc-compressed zarr arrays written and read with
TensorStore, which reads only the chunks a gene range needs and decodes them in parallel.

The transposition from the cell-major input (what :func:`scsig.tl.attribute` writes) to gene-major
storage streams through scratch files: row blocks are turned into CSC blocks and spilled, then merged
gene range by gene range, so memory is bounded by the block size rather than by the dataset.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    import pandas as pd

__all__ = [
    "BLOCK_NNZ",
    "build_shard_from_columns",
    "build_shard_from_csr",
    "Spill",
    "build_shard_from_rows",
    "build_shard_from_spills",
    "release_memory",
    "require_tensorstore",
    "spill_rows",
]

BLOCK_NNZ = 1 << 24
"""Nonzeros per working block while building a shard (about 130 MB of values and indices)."""

CHUNK = 1 << 14
"""Elements per compressed chunk of ``data`` / ``indices`` (64 kB): the read granularity."""

SHARD = 1 << 21
"""Elements per zarr shard file (128 chunks, 8 MB before compression)."""

GROUP_VALUES = 1 << 22
"""Values per read group of a query (see :meth:`ShardReader.column_groups`)."""

DATA_SHUFFLE = "noshuffle"
"""Blosc shuffle of the attribution values. Float32 attributions have incompressible mantissas: a
byte shuffle saved about 5 % of their size but made reading them about 3 times slower (measured on
100k synthetic cells), so values are LZ4-compressed without it; row indices use a byte shuffle
(about 3.5x smaller)."""

ENCODING_VERSION = "0.1.0"

_WARNINGS_LOCK = threading.Lock()
"""``warnings.catch_warnings`` is not thread-safe: shards built in parallel threads (a dask worker's)
take turns in the sections that silence zarr's warnings, so none leaks."""


def require_tensorstore() -> Any:
    """Import :mod:`tensorstore`, or raise an ImportError naming the extra."""
    from .._utils import import_optional

    return import_optional("tensorstore", purpose="sg.Atlas", extra="atlas")


def _malloc_trim() -> Any:
    """The C library's ``malloc_trim`` (glibc), or None where there is none."""
    global _TRIM
    if _TRIM is None:
        import ctypes

        try:
            _TRIM = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):  # pragma: no cover - not glibc
            _TRIM = False
    return _TRIM or None


_TRIM: Any = None


def release_memory() -> None:
    """Return freed heap memory to the OS (glibc only; elsewhere nothing happens).

    A build allocates and frees blocks of ~100 MB from several threads (its own, numba's,
    TensorStore's); glibc keeps such memory in per-thread arenas, so without this the process's
    resident memory crept up with the number of blocks (0.93 -> 1.17 GB from 2 to 8 blocks of 17M
    values, flat at ~1.0 GB with it). Called once per block and per gene range: microseconds next
    to the block's work.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _context() -> Any:
    ts = require_tensorstore()
    global _CONTEXT
    if _CONTEXT is None:
        # no decoded-chunk cache: a query's memory is what its genes need; the OS caches the files
        _CONTEXT = ts.Context({"cache_pool": {"total_bytes_limit": 0}})
    return _CONTEXT


_CONTEXT: Any = None


def _blosc(shuffle: str, typesize: int, clevel: int) -> dict[str, Any]:
    cfg = {"cname": "lz4", "clevel": clevel, "shuffle": shuffle, "typesize": typesize, "blocksize": 0}
    return {"name": "blosc", "configuration": cfg}


def _array_spec(path: Path, dtype: str, shape: int, *, chunk: int, shard: int | None, blosc: dict) -> dict[str, Any]:
    # a crc32c per compressed chunk: a flipped bit fails the read instead of decoding to wrong values
    inner = [{"name": "bytes", "configuration": {"endian": "little"}}, blosc, {"name": "crc32c"}]
    if shard is None:
        codecs, grid = inner, chunk
    else:
        index_codecs = [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}]
        sharding = {"chunk_shape": [chunk], "codecs": inner, "index_codecs": index_codecs}
        codecs, grid = [{"name": "sharding_indexed", "configuration": sharding}], shard
    metadata = {
        "shape": [shape],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [grid]}},
        "chunk_key_encoding": {"name": "default"},
        "fill_value": 0,
        "codecs": codecs,
    }
    # every chunk is stored, even all-zero ones, so that a missing chunk file always means damage
    return {
        "driver": "zarr3",
        "kvstore": {"driver": "file", "path": str(path)},
        "metadata": metadata,
        "store_data_equal_to_fill_value": True,
    }


class _Appender:
    """Append to a 1-D zarr array, writing whole zarr shards only (a partial shard is rewritten whole)."""

    def __init__(self, path: Path, dtype: str, blosc: dict) -> None:
        ts = require_tensorstore()
        spec = _array_spec(path, dtype, 0, chunk=CHUNK, shard=SHARD, blosc=blosc)
        self._arr = ts.open(spec, create=True, context=_context()).result()
        self._dtype = np.dtype(dtype)
        self._pending: list[np.ndarray] = []
        self._n_pending = 0
        self._written = 0
        self._inflight: Any = None

    def append(self, values: np.ndarray) -> None:
        if values.size:
            self._pending.append(np.asarray(values, dtype=self._dtype))
            self._n_pending += values.size
        if self._n_pending >= SHARD:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._n_pending:
            return
        buf = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        n = buf.size if final else (buf.size // SHARD) * SHARD
        rest = buf[n:]
        self._pending, self._n_pending = ([rest.copy()] if rest.size else []), rest.size
        self._wait()
        lo, hi = self._written, self._written + n
        self._arr = self._arr.resize(exclusive_max=[hi], expand_only=True).result()
        self._inflight = self._arr[lo:hi].write(buf[:n])  # overlaps compression with the next block's work
        self._written = hi

    def _wait(self) -> None:
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None

    def close(self) -> int:
        self._flush(final=True)
        self._wait()
        return self._written


def _write_small(path: Path, values: np.ndarray, dtype: str) -> None:
    ts = require_tensorstore()
    n = int(values.size)
    spec = _array_spec(
        path, dtype, n, chunk=max(n, 1), shard=None, blosc=_blosc("shuffle", np.dtype(dtype).itemsize, 5)
    )
    arr = ts.open(spec, create=True, context=_context()).result()
    if n:
        arr.write(values.astype(dtype, copy=False)).result()


OBS_NAMES_ATTR = "scsig-column-names"
"""Attribute of a shard's ``obs`` group: the metadata's own column names when some had to be escaped."""


def _escape_columns(obs: pd.DataFrame) -> pd.DataFrame:
    """``obs`` with column names zarr can store: ``%`` and ``/`` percent-encoded (the real names go in an attribute)."""
    names = [str(c) for c in obs.columns]
    if not any("/" in n for n in names):
        return obs
    escaped = [n.replace("%", "%25").replace("/", "%2F") for n in names]
    out = obs.copy(deep=False)
    out.columns = escaped
    return out


def _write_skeleton(path: Path, *, obs: pd.DataFrame, var: pd.DataFrame, uns: dict, layer: str, shape: tuple) -> Path:
    """The AnnData zarr store without its matrix; returns the folder the matrix arrays go into."""
    import anndata as ad
    import zarr

    with _WARNINGS_LOCK, ad.settings.override(zarr_write_format=3), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*autosharding.*", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*", category=UserWarning)
        ad.AnnData(obs=_escape_columns(obs), var=var, uns=uns).write_zarr(path)
    root = zarr.open_group(path, mode="a", zarr_format=3)
    if list(obs.columns) != [str(c) for c in _escape_columns(obs).columns]:
        root["obs"].attrs[OBS_NAMES_ATTR] = [str(c) for c in obs.columns]
    layers = root.require_group("layers")
    layers.attrs.update({"encoding-type": "dict", "encoding-version": ENCODING_VERSION})
    group = layers.create_group(layer)
    group.attrs.update({"encoding-type": "csc_matrix", "encoding-version": ENCODING_VERSION, "shape": list(shape)})
    return path / "layers" / layer


def _finish(path: Path) -> None:
    import zarr

    with _WARNINGS_LOCK, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*", category=UserWarning)
        zarr.consolidate_metadata(str(path))


class _ColumnSink:
    """Receives gene ranges of the CSC matrix in gene order and writes the three arrays."""

    def __init__(self, folder: Path, n_genes: int) -> None:
        self.folder = folder
        self.data = _Appender(folder / "data", "float32", _blosc(DATA_SHUFFLE, 4, 1))
        self.indices = _Appender(folder / "indices", "int32", _blosc("shuffle", 4, 5))
        self.counts = np.zeros(n_genes, dtype=np.int64)
        self.next_gene = 0

    def add(self, g0: int, counts: np.ndarray, data: np.ndarray, indices: np.ndarray) -> None:
        if g0 != self.next_gene:
            msg = f"gene ranges out of order: expected {self.next_gene}, got {g0}"
            raise RuntimeError(msg)
        self.counts[g0 : g0 + counts.size] = counts
        self.next_gene = g0 + counts.size
        self.data.append(data)
        self.indices.append(indices)

    def close(self) -> int:
        nnz = self.data.close()
        self.indices.close()
        indptr = np.zeros(self.counts.size + 1, dtype=np.int64)
        np.cumsum(self.counts, out=indptr[1:])
        if indptr[-1] != nnz:  # pragma: no cover - internal consistency
            msg = f"wrote {nnz} values but the gene counts add up to {indptr[-1]}"
            raise RuntimeError(msg)
        _write_small(self.folder / "indptr", indptr, "int64")
        return nnz


def _gene_ranges(col_nnz: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """Consecutive gene ranges whose nonzeros add up to about ``budget`` (at least one gene each)."""
    csum = np.concatenate([[0], np.cumsum(col_nnz)])
    g0, n = 0, col_nnz.size
    while g0 < n:
        g1 = int(np.searchsorted(csum, csum[g0] + budget, side="right")) - 1
        g1 = min(max(g1, g0 + 1), n)
        yield g0, g1
        g0 = g1


def _n_parts() -> int:
    import numba

    return max(1, int(numba.get_num_threads()))


def _gene_major(
    x: tuple[np.ndarray, np.ndarray, np.ndarray], lut: np.ndarray, n_genes: int, name: str, row0: int
) -> tuple[np.ndarray, Callable[[int], Iterator[tuple[int, int, np.ndarray, np.ndarray]]]]:
    """Per-gene counts of CSR arrays ``(indptr, indices, data)``, and a generator of its gene ranges (CSC)."""
    from ._kernels import count_parts, extract_range, part_bounds

    indptr, indices, data = x
    bounds = part_bounds(indptr, _n_parts())
    counts = np.zeros((bounds.size - 1, n_genes), dtype=np.int64)
    dropped, bad = count_parts(indptr, indices, data, lut, bounds, counts)
    if bad:
        msg = f"Dataset {name!r}: the layer holds {bad} NaN or infinite values (in cells {row0}-{row0 + indptr.size - 1})."
        raise ValueError(msg)
    if dropped:
        msg = f"Dataset {name!r}: the layer has {dropped} nonzero values in columns that are not genes of the atlas; they would be lost."
        raise ValueError(msg)
    col_nnz = counts.sum(axis=0)

    def ranges(budget: int) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        for g0, g1 in _gene_ranges(col_nnz, budget):
            c = counts[:, g0:g1]
            gene_start = np.concatenate([[0], np.cumsum(col_nnz[g0:g1])[:-1]])
            starts = gene_start[None, :] + np.cumsum(c, axis=0) - c
            n = int(col_nnz[g0:g1].sum())
            out_data = np.empty(n, dtype=np.float32)
            out_idx = np.empty(n, dtype=np.int32)
            extract_range(indptr, indices, data, lut, bounds, starts, g0, g1, out_data, out_idx)
            yield g0, g1, out_data, out_idx

    return col_nnz, ranges


def _csr_arrays(block: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(indptr, indices, float32 data)`` of a row block: CSR arrays as they are, else converted."""
    if isinstance(block, tuple):
        indptr, indices, data = block
    else:
        if not sparse.issparse(block):
            block = sparse.csr_matrix(np.asarray(block, dtype=np.float32))
        block = sparse.csr_matrix(block)
        indptr, indices, data = block.indptr, block.indices, block.data
    return indptr, indices, data.astype(np.float32, copy=False)


def build_shard_from_csr(
    path: Path,
    x: sparse.csr_matrix,
    lut: np.ndarray,
    *,
    n_genes: int,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict,
    layer: str,
    name: str,
    on_range: Callable[[int, int], None] | None = None,
    on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> int:
    """Write a shard from an in-memory CSR matrix (columns mapped by ``lut``); returns nnz.

    Each gene range is gathered straight from the CSR arrays by a compiled, row-parallel kernel,
    so no copy of the whole matrix is made. ``on_rows(indptr, data)`` sees the rows (after the checks).
    """
    folder = _write_skeleton(path, obs=obs, var=var, uns=uns, layer=layer, shape=(x.shape[0], n_genes))
    arrays = _csr_arrays(x)
    col_nnz, ranges = _gene_major(arrays, lut, n_genes, name, 0)
    if on_rows is not None:
        on_rows(arrays[0], arrays[2])
    sink = _ColumnSink(folder, n_genes)
    for g0, g1, data, indices in ranges(BLOCK_NNZ):
        sink.add(g0, col_nnz[g0:g1], data, indices)
        if on_range is not None:
            on_range(g1, n_genes)
    nnz = sink.close()
    _finish(path)
    return nnz


@dataclass
class Spill:
    """Row blocks of a layer, turned gene-major and written to ``folder`` (pass 1 of a shard build).

    ``segs[b, g]`` is where gene ``g``'s values of block ``b`` start within the block's stretch of
    ``folder/data.bin`` and ``folder/indices.bin`` (values and block-local row numbers); ``rows[b]``
    is the block's number of cells. A shard is merged from one or more spills of consecutive cells.
    """

    folder: Path
    segs: np.ndarray
    rows: list[int]

    @property
    def n_obs(self) -> int:
        return int(sum(self.rows))


def spill_rows(
    blocks: Iterable[Any],
    lut: np.ndarray,
    *,
    n_genes: int,
    name: str,
    folder: Path,
    row0: int = 0,
    on_block: Callable[[int], None] | None = None,
    on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> Spill:
    """Pass 1: write row blocks (sparse, dense, or CSR arrays) gene-major to ``folder``; memory is one block.

    ``row0`` is the first block's first cell in the dataset (for messages only);
    ``on_rows(indptr, data)`` sees each block's rows, in order (after the block's checks).
    """
    folder.mkdir(parents=True, exist_ok=True)
    segs: list[np.ndarray] = []
    rows: list[int] = []
    with (folder / "data.bin").open("wb") as fd, (folder / "indices.bin").open("wb") as fi:
        for raw in blocks:
            block = _csr_arrays(raw)
            counts, ranges = _gene_major(block, lut, n_genes, name, row0 + sum(rows))
            if on_rows is not None:
                on_rows(block[0], block[2])
            for _, _, data, indices in ranges(1 << 62):  # the whole block in one range
                data.tofile(fd)
                indices.tofile(fi)
                del data, indices
            seg = np.zeros(n_genes + 1, dtype=np.int64)
            np.cumsum(counts, out=seg[1:])
            segs.append(seg)
            rows.append(block[0].size - 1)
            del block, raw
            release_memory()
            if on_block is not None:
                on_block(rows[-1])
    seg_all = np.stack(segs) if segs else np.zeros((0, n_genes + 1), np.int64)
    return Spill(folder, seg_all, rows)


def build_shard_from_spills(
    path: Path,
    spills: Sequence[Spill],
    *,
    n_obs: int,
    n_genes: int,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict,
    layer: str,
    name: str,
    on_range: Callable[[int, int], None] | None = None,
) -> int:
    """Pass 2: merge spills (of consecutive cells, in order) gene range by gene range into a shard; returns nnz.

    Memory is bounded by :data:`BLOCK_NNZ` values per gene range, not by the dataset.
    """
    from ._kernels import merge_blocks

    if sum(s.n_obs for s in spills) != n_obs:  # pragma: no cover - internal consistency
        msg = f"row blocks hold {sum(s.n_obs for s in spills)} cells, expected {n_obs}"
        raise RuntimeError(msg)
    folder = _write_skeleton(path, obs=obs, var=var, uns=uns, layer=layer, shape=(n_obs, n_genes))
    seg_all = np.concatenate([s.segs for s in spills]) if spills else np.zeros((0, n_genes + 1), np.int64)
    col_nnz = np.diff(seg_all, axis=1).sum(axis=0) if seg_all.size else np.zeros(n_genes, np.int64)
    which = np.concatenate([np.full(len(s.rows), k, dtype=np.int64) for k, s in enumerate(spills)] or [[]])
    file_base = np.zeros(seg_all.shape[0], dtype=np.int64)  # a block's first value in its spill's files
    b = 0
    for s in spills:
        file_base[b : b + len(s.rows)] = np.concatenate([[0], np.cumsum(s.segs[:, -1])])[: len(s.rows)]
        b += len(s.rows)
    row_off = np.concatenate([[0], np.cumsum([r for s in spills for r in s.rows])]).astype(np.int64)
    sink = _ColumnSink(folder, n_genes)
    with contextlib.ExitStack() as stack:
        files = [
            (
                stack.enter_context((s.folder / "data.bin").open("rb")),
                stack.enter_context((s.folder / "indices.bin").open("rb")),
            )
            for s in spills
        ]
        for g0, g1 in _gene_ranges(col_nnz, BLOCK_NNZ):
            lens = seg_all[:, g1] - seg_all[:, g0]
            base = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            buf_data = np.empty(int(base[-1]), dtype=np.float32)
            buf_idx = np.empty(int(base[-1]), dtype=np.int32)
            for b in range(seg_all.shape[0]):
                if lens[b]:
                    fd, fi = files[which[b]]
                    off = 4 * int(file_base[b] + seg_all[b, g0])
                    fd.seek(off)
                    fi.seek(off)
                    fd.readinto(memoryview(buf_data[base[b] : base[b + 1]]).cast("B"))
                    fi.readinto(memoryview(buf_idx[base[b] : base[b + 1]]).cast("B"))
            seg = seg_all[:, g0 : g1 + 1] - seg_all[:, g0 : g0 + 1]
            out_data = np.empty_like(buf_data)
            out_idx = np.empty_like(buf_idx)
            merge_blocks(seg, base[:-1], row_off[:-1], buf_data, buf_idx, out_data, out_idx)
            del buf_data, buf_idx
            sink.add(g0, col_nnz[g0:g1], out_data, out_idx)
            del out_data, out_idx
            release_memory()
            if on_range is not None:
                on_range(g1, n_genes)
    nnz = sink.close()
    _finish(path)
    return nnz


def build_shard_from_rows(
    path: Path,
    blocks: Iterable[Any],
    lut: np.ndarray,
    *,
    n_obs: int,
    n_genes: int,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict,
    layer: str,
    name: str,
    scratch: Path,
    on_block: Callable[[int], None] | None = None,
    on_range: Callable[[int, int], None] | None = None,
    on_rows: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> int:
    """Write a shard from row blocks (sparse, dense, or CSR arrays ``(indptr, indices, data)``); returns nnz.

    Pass 1 (:func:`spill_rows`) turns each block into gene-major order and spills it to
    ``scratch``; pass 2 (:func:`build_shard_from_spills`) merges the blocks gene range by gene
    range. Memory is bounded by the block size, not by the dataset.
    ``on_rows(indptr, data)`` sees each block's rows, in order (after the block's checks).
    """
    spill = spill_rows(blocks, lut, n_genes=n_genes, name=name, folder=scratch, on_block=on_block, on_rows=on_rows)
    nnz = build_shard_from_spills(
        path,
        [spill],
        n_obs=n_obs,
        n_genes=n_genes,
        obs=obs,
        var=var,
        uns=uns,
        layer=layer,
        name=name,
        on_range=on_range,
    )
    shutil.rmtree(scratch, ignore_errors=True)
    return nnz


def build_shard_from_columns(
    path: Path,
    ranges: Iterable[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    *,
    n_obs: int,
    n_genes: int,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    uns: dict,
    layer: str,
) -> int:
    """Write a shard from gene ranges already in gene-major order: ``(g0, counts, data, row_indices)``."""
    folder = _write_skeleton(path, obs=obs, var=var, uns=uns, layer=layer, shape=(n_obs, n_genes))
    sink = _ColumnSink(folder, n_genes)
    for g0, counts, data, indices in ranges:
        if counts.size and g0 > sink.next_gene:  # genes the source skipped have no values
            sink.add(sink.next_gene, np.zeros(g0 - sink.next_gene, np.int64), data[:0], indices[:0])
        sink.add(g0, counts, data, indices)
    if sink.next_gene < n_genes:
        sink.add(
            sink.next_gene, np.zeros(n_genes - sink.next_gene, np.int64), np.empty(0, np.float32), np.empty(0, np.int32)
        )
    nnz = sink.close()
    _finish(path)
    return nnz


def remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that tolerates a missing folder."""
    if os.path.lexists(path):
        shutil.rmtree(path, ignore_errors=True)
