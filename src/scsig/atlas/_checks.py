"""Damaged datasets and names: the error every layer of the atlas raises, and the cheap checks shared by reads and writes.

This module is the bottom of the atlas's storage layers: the readers (:mod:`._reader`), the
checksums (:mod:`._integrity`) and everything above them raise :class:`DamagedDatasetError` through
:func:`damaged`, and check dataset names with :func:`check_name`.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["DamagedDatasetError", "check_indptr", "check_name", "check_rows", "damaged", "repair_hint", "shown"]


class DamagedDatasetError(RuntimeError):
    """A stored dataset of the atlas is damaged (a file changed, is missing or is inconsistent)."""

    problems: list[str]


def repair_hint(name: str) -> str:
    """How to repair a damaged dataset."""
    return (
        f"Repair: remove the dataset with atlas.remove({name!r}) and add it again (or restore the atlas "
        "folder from a copy); atlas.verify() lists every damaged dataset."
    )


def damaged(name: str, problems: Sequence[str]) -> DamagedDatasetError:
    """The error for dataset ``name`` with ``problems`` (the first few are listed)."""
    err = DamagedDatasetError(f"Dataset {name!r} of the atlas is damaged: {shown(problems)}. {repair_hint(name)}")
    err.problems = list(problems)
    return err


def shown(problems: Sequence[str]) -> str:
    return "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")


def check_name(name: Any) -> str:
    """``name`` as a dataset name, or a ValueError saying why it cannot be one.

    Names are shown in tables and stored in JSON and h5ad files: any printable text works,
    including ``/``; control characters (newline, tab, NUL, ...), line separators, unpaired
    surrogates and names made only of whitespace are refused.
    """
    if isinstance(name, int | np.integer) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str):
        msg = f"A dataset name must be a string, not {type(name).__name__} ({name!r:.40})."
        raise TypeError(msg)
    if not name.strip():
        msg = f"Dataset name {name!r} is empty or only whitespace; give the dataset a visible name."
        raise ValueError(msg)
    bad = sorted({c for c in name if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")})
    if bad:
        msg = (
            f"Dataset name {name!r} contains characters that cannot be shown or stored safely "
            f"({', '.join(repr(c) for c in bad)}: control characters such as newline, tab or NUL); "
            "remove them from the name."
        )
        raise ValueError(msg)
    return name


def check_indptr(indptr: np.ndarray, *, n_values: int, n_values_indices: int, nnz: int | None, name: str) -> None:
    """Structural checks of a gene-major ``indptr`` against the stored arrays and the manifest."""
    problems = []
    if indptr.size < 1 or indptr[0] != 0:
        problems.append("its column pointer (indptr) does not start at 0")
    elif np.any(indptr[1:] < indptr[:-1]):
        problems.append("its column pointer (indptr) decreases")
    elif indptr[-1] != n_values:
        problems.append(f"its column pointer (indptr) ends at {int(indptr[-1])} but {n_values} values are stored")
    if n_values != n_values_indices:
        problems.append(f"it stores {n_values} values but {n_values_indices} row indices")
    if nnz is not None and n_values != nnz:
        problems.append(f"it stores {n_values} values but the manifest recorded {nnz}")
    if problems:
        raise damaged(name, problems)


def check_rows(indices: np.ndarray, n_obs: int, name: str) -> None:
    """Row indices read from a shard are cell positions of the dataset."""
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= n_obs):
        raise damaged(
            name, [f"row indices outside its {n_obs} cells (from {int(indices.min())} to {int(indices.max())})"]
        )
