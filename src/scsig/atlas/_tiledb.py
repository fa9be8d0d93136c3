"""Readers for the reference tool's published attribution atlases (TileDB arrays + metadata CSVs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._store import BLOCK_NNZ

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

__all__ = ["find_cell_types", "read_gene_ranges"]

ATTRIBUTIONS = "attributions"
METADATA = "cell_metadata.csv.gz"


def require_tiledb() -> Any:
    """Import :mod:`tiledb`, or raise an ImportError naming the extra."""
    from .._utils import import_optional

    return import_optional("tiledb", purpose="Importing TileDB attribution arrays", extra="tiledb")


def find_cell_types(folder: Path, cell_types: Sequence[str] | None) -> list[str]:
    """The subfolders of ``folder`` to import, checked to hold an array and its metadata."""
    if not folder.is_dir():
        msg = f"{folder} is not a folder."
        raise FileNotFoundError(msg)
    if cell_types is None:
        names = sorted(d.name for d in folder.iterdir() if (d / ATTRIBUTIONS).is_dir())
        if not names:
            msg = f"{folder} has no '<cell type>/{ATTRIBUTIONS}' TileDB arrays."
            raise FileNotFoundError(msg)
    else:
        names = [str(c) for c in cell_types]
    for name in names:
        for part in (ATTRIBUTIONS, METADATA):
            if not (folder / name / part).exists():
                msg = f"{folder / name} has no {part}."
                raise FileNotFoundError(msg)
    return names


def read_gene_ranges(
    uri: Path, *, n_obs: int, n_genes: int, name: str, progress: bool = False
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(g0, counts, values, cells)`` per gene range, gene-major, cells ascending within a gene.

    The reference's arrays are stored gene-major (col-major cell order), so a gene range is a
    contiguous read. Ranges adapt to hold about :data:`BLOCK_NNZ` values.
    """
    tiledb = require_tiledb()
    from .._utils._progress import tqdm

    config = tiledb.Config({"py.init_buffer_bytes": str(1 << 27)})  # 128 MB result buffers, grown as needed
    with tiledb.open(str(uri), "r", ctx=tiledb.Ctx(config)) as arr:
        schema = arr.schema
        dims = [schema.domain.dim(i).name for i in range(schema.domain.ndim)]
        if dims != ["x", "y"] or not schema.has_attr("vals"):
            msg = f"{uri}: expected dimensions ['x', 'y'] and attribute 'vals', found {dims} and {[schema.attr(i).name for i in range(schema.nattr)]}."
            raise ValueError(msg)
        y_hi = int(schema.domain.dim(1).domain[1])
        if y_hi + 1 > n_genes:
            msg = f"{uri}: the array has {y_hi + 1} gene positions but gene_order has {n_genes} genes; pass the model's gene order."
            raise ValueError(msg)
        nonempty = arr.nonempty_domain()
        if nonempty is not None and int(nonempty[0][1]) >= n_obs:
            msg = f"Cell type {name!r}: the array has cells up to index {int(nonempty[0][1])} but {METADATA} lists only {n_obs} cells."
            raise ValueError(msg)
        g0, step = 0, 256
        with tqdm(total=n_genes, disable=not progress, desc=f"import {name}", unit="genes") as bar:
            while g0 < n_genes:
                g1 = min(n_genes, g0 + step)
                res = arr.multi_index[:, g0 : g1 - 1]  # TileDB slices are inclusive
                cells = np.asarray(res["x"], dtype=np.int64)
                genes = np.asarray(res["y"], dtype=np.int64)
                vals = np.asarray(res["vals"], dtype=np.float32)
                key = (genes - g0) * n_obs + cells
                if key.size > 1 and not np.all(key[1:] > key[:-1]):
                    order = np.argsort(key, kind="stable")
                    cells, genes, vals = cells[order], genes[order], vals[order]
                counts = np.bincount(genes - g0, minlength=g1 - g0).astype(np.int64)
                yield g0, counts, vals, cells.astype(np.int32)
                bar.update(g1 - g0)
                per_gene = max(cells.size / (g1 - g0), 1.0)
                step = int(min(max(BLOCK_NNZ / per_gene, 1), 1 << 16))
                g0 = g1
