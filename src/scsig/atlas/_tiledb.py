"""Readers for the reference tool's published attribution atlases (TileDB arrays + metadata CSVs)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ._store import BLOCK_NNZ

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    import pandas as pd


__all__ = ["array_cells", "find_cell_types", "import_cell_types", "read_gene_ranges", "read_metadata"]

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


def _column(values: pd.Series) -> pd.Series:
    """One dtype for a metadata column read as text: numbers when every value is one, else categories of text."""
    import pandas as pd

    present = values.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    if present.size and numbers.notna().all():
        out = pd.to_numeric(values, errors="coerce")
        as_int = out.dropna()
        if out.notna().all() and np.all(np.isfinite(as_int)) and np.all(as_int == np.round(as_int)):
            return out.astype(np.int64)
        return out.astype(np.float64)
    lowered = present.str.lower()
    if present.size and lowered.isin(["true", "false"]).all():
        if present.size == values.size:
            return lowered.eq("true").astype(bool)
        return values.str.lower().map({"true": True, "false": False}).astype("boolean")
    return values.astype("category")


def read_metadata(path: Path, *, n_cells: int, name: str) -> tuple[pd.DataFrame, np.ndarray | None]:
    """A cell type's metadata with one dtype per column, and each row's cell position in the array (or None).

    Every column is read as text and then typed as a whole: integers, floats (when a value is
    missing or fractional), booleans, or else categories of the text (so a column mixing numbers
    and words becomes text categories, never a mix of Python types). The first column names the
    cells. When it holds distinct whole numbers below the array's number of cells, it is taken as
    each row's cell position (the ``x`` coordinate) rather than assuming the rows are in array order.
    """
    import pandas as pd

    try:
        meta = pd.read_csv(path, dtype=str, keep_default_na=True)
        meta = meta.set_index(meta.columns[0])
    except Exception as err:
        msg = f"Cell type {name!r}: {path} cannot be read as a CSV table ({type(err).__name__}: {err})."
        raise ValueError(msg) from err
    for col in meta.columns:
        meta[col] = _column(meta[col])
    index = pd.Series(meta.index, dtype=object)
    rows = None
    if index.notna().all() and index.str.fullmatch(r"\d{1,18}").all():
        positions = index.astype(np.int64).to_numpy()
        if positions.size and np.unique(positions).size == positions.size and positions.max() < n_cells:
            rows = positions
    meta.index = pd.Index(index.fillna("nan").astype(str), name=meta.index.name)
    return meta, rows


def array_cells(uri: Path) -> int:
    """The number of cell positions of a reference array (its ``x`` domain)."""
    tiledb = require_tiledb()
    with tiledb.open(str(uri), "r") as arr:
        return int(arr.schema.domain.dim(0).domain[1]) + 1


def read_gene_ranges(
    uri: Path,
    *,
    n_obs: int,
    n_genes: int,
    name: str,
    positions: np.ndarray | None = None,
    progress: bool = False,
) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(g0, counts, values, cells)`` per gene range, gene-major, cells ascending within a gene.

    The reference's arrays are stored gene-major (col-major cell order), so a gene range is a
    contiguous read. Ranges adapt to hold about :data:`BLOCK_NNZ` values. ``positions`` gives
    each metadata row's cell position in the array (``None``: row ``i`` is position ``i``);
    values of positions that no row describes are an error.
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
        row_of = None
        if positions is not None:  # position -> metadata row, by binary search over the sorted positions
            by_position = np.argsort(positions, kind="stable")
            row_of = (np.asarray(positions, dtype=np.int64)[by_position], by_position)
        nonempty = arr.nonempty_domain()
        if nonempty is not None and row_of is None and int(nonempty[0][1]) >= n_obs:
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
                if row_of is not None and cells.size:
                    sorted_pos, rows = row_of
                    k = np.minimum(np.searchsorted(sorted_pos, cells), sorted_pos.size - 1)
                    found = sorted_pos[k] == cells
                    cells = rows[k]
                    if not found.all():
                        lost = int((~found).sum())
                        msg = (
                            f"Cell type {name!r}: {lost} attribution values belong to array cells that no row of "
                            f"{METADATA} describes (its first column gives each row's cell position)."
                        )
                        raise ValueError(msg)
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


def _build_cell_type(
    shard: Path, scratch: Path, *, sub: Path, obs: pd.DataFrame, name: str, positions: Any, genes: Any, show: bool
) -> int:
    """Write one cell type's TileDB array into a new shard (the ``build`` step of an atlas write)."""
    from .._constants import UNS_KEY
    from ._build import shard_var
    from ._store import build_shard_from_columns

    del scratch  # gene ranges are read column-wise: no scratch files
    ranges = read_gene_ranges(
        sub / ATTRIBUTIONS, n_obs=len(obs), n_genes=len(genes), name=name, positions=positions, progress=show
    )
    return build_shard_from_columns(
        shard,
        ranges,
        n_obs=len(obs),
        n_genes=len(genes),
        obs=obs,
        var=shard_var(genes, "attr_ig"),
        uns={UNS_KEY: {"layers": {"attr_ig": {"source": "SIGnature TileDB"}}}},
        layer="attr_ig",
    )


def import_cell_types(root: Path, folder: Path, names: list[str], *, genes: pd.Index, progress: bool | None) -> None:
    """Add each cell type's array of a published SIGnature atlas folder to the atlas at ``root`` as one dataset."""
    from functools import partial

    from .. import _logging as logg
    from .._settings import settings
    from .._utils._progress import tqdm
    from ..models import gene_order_hash
    from ._build import shard_obs_frame, write_dataset
    from ._checks import check_name

    show = settings.progress if progress is None else progress
    for ct in tqdm(names, disable=not show or len(names) < 2, desc="import", unit="cell type"):
        sub = folder / ct
        meta, positions = read_metadata(sub / METADATA, n_cells=array_cells(sub / ATTRIBUTIONS), name=ct)
        obs = shard_obs_frame(meta, None, ct)
        record = {"source": "SIGnature TileDB", "path": str(sub), "gene_order_hash": gene_order_hash(list(genes))}
        start = logg.info(f"importing {ct!r} ({len(meta)} cells)")
        build = partial(_build_cell_type, sub=sub, obs=obs, name=ct, positions=positions, genes=genes, show=show)
        write_dataset(
            root,
            name=check_name(ct),
            layer="attr_ig",
            n_obs=len(obs),
            obs_columns=obs.columns,
            provenance=record,
            build=build,
            source="signature",
        )
        logg.info(f"    finished: imported {ct!r}", time=start)
