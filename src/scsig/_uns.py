r"""Records in ``adata.uns["scsig"]`` stored so that every name survives ``write_h5ad`` and ``write_zarr``.

User-given names (score keys, signature names, group labels) may hold characters that HDF5 and zarr
read as paths: a "/" splits a key into nested groups (h5ad) or is refused (zarr), a "\\" is a
separator for zarr, and "." or ".." are not valid zarr keys. So

- a record filed under a name is stored under :func:`encode_key` of it (``"%"``, ``"/"``, ``"\\"``
  percent-encoded; a name made of dots has its dots encoded) and carries the name itself in its
  ``"name"`` field; :func:`get_record` and :func:`records` find records by their real name, and also
  read records written before names were encoded (stored under the plain name, without ``"name"``);
- per-group values (hit thresholds, counts) are parallel lists (``"groups"``, ``"thresholds"``, ...),
  never dicts keyed by group label.
"""

from __future__ import annotations

import warnings
from typing import Any

from ._constants import UNS_KEY
from ._utils._warn import user_stacklevel

__all__ = [
    "check_key_added",
    "decode_key",
    "encode_key",
    "get_record",
    "put_record",
    "records",
    "score_columns",
    "score_record",
    "scsig_columns",
]

_ESCAPES = {"%": "%25", "/": "%2F", "\\": "%5C"}


def encode_key(name: str) -> str:
    """``name`` as a key that h5ad and zarr store as it is (reversible with :func:`decode_key`)."""
    name = str(name)
    if not name:
        msg = "An empty name cannot be stored; give a non-empty name."
        raise ValueError(msg)
    out = "".join(_ESCAPES.get(c, c) for c in name)
    if set(out) == {"."}:
        out = out.replace(".", "%2E")
    return out


def decode_key(key: str) -> str:
    """The name :func:`encode_key` encoded."""
    from urllib.parse import unquote

    return unquote(key)


def _section(data: Any, section: str) -> Any:
    return getattr(data, "uns", {}).get(UNS_KEY, {}).get(section, {})


def put_record(data: Any, section: str, name: str, record: dict) -> None:
    """Store ``record`` in ``data.uns["scsig"][section]`` under ``name`` (replacing an older one)."""
    sec = data.uns.setdefault(UNS_KEY, {}).setdefault(section, {})
    key = encode_key(name)
    if key != name:
        sec.pop(name, None)  # an older record under the plain name
    sec[key] = {**record, "name": str(name)}


def records(data: Any, section: str) -> dict[str, dict]:
    """``{name: record}`` of ``data.uns["scsig"][section]``, by real name (old and new layout)."""
    out = {}
    for key, rec in dict(_section(data, section)).items():
        if not isinstance(rec, dict):
            continue
        name = rec.get("name")
        out[str(name) if isinstance(name, str) else decode_key(key) if "%" in key else key] = rec
    return out


def get_record(data: Any, section: str, name: str) -> dict | None:
    """The record filed under ``name`` in ``data.uns["scsig"][section]``, or ``None``."""
    sec = _section(data, section)
    try:
        rec = sec.get(encode_key(name))
    except ValueError:
        return None
    if isinstance(rec, dict):
        return rec
    rec = sec.get(name)
    return rec if isinstance(rec, dict) else records(data, section).get(name)


def score_record(data: Any, key: str) -> dict | None:
    """The record of a score: ``key`` is a ``key_added`` of ``sg.tl.score`` or one of its columns.

    For one column of a several-signature score (``"score_B"``) the record is narrowed to that
    signature (its ``"signatures"`` and ``"columns"`` hold only it); ``None`` when nothing matches.
    """
    record = get_record(data, "scores", key)
    if record is not None:
        return record
    for name, rec in records(data, "scores").items():
        columns = rec.get("columns")
        if isinstance(columns, str) or columns is None or key not in list(columns):
            continue
        sigs = rec.get("signatures", {})
        sig = next((s for s in sigs if f"{name}_{s}" == key), None)
        if sig is not None:
            return {**rec, "signatures": {sig: sigs[sig]}, "columns": [key]}
    return None


def score_columns(data: Any) -> list[str]:
    """The ``obs`` columns written by ``sg.tl.score`` (every signature's), in the order they were recorded."""
    out: list[str] = []
    for name, rec in records(data, "scores").items():
        columns = rec.get("columns")
        listed = [columns] if isinstance(columns, str) else list(columns) if columns is not None else [name]
        out += [c for c in map(str, listed) if c in getattr(data, "obs", {}) and c not in out]
    return out


def scsig_columns(data: Any) -> set[str]:
    """The ``obs`` columns that scsig's tools recorded writing."""
    cols: set[str] = set()
    for section in ("scores", "hits", "compare"):
        for name, rec in records(data, section).items():
            listed = rec.get("columns")
            if listed is not None and not isinstance(listed, str):
                cols.update(map(str, listed))
            elif section == "scores":
                cols.add(name)
                cols.update(f"{name}_{s}" for s in rec.get("signatures", {}) if s != "signature")
            elif section == "hits":
                cols.add(name)
            else:
                cols.update(f"{name}_{m}" for m in rec.get("table", {}).get("method", []))
    return cols


def check_key_added(data: Any, columns: list[str], *, reads: dict[str, str]) -> None:
    """Refuse an output column the call reads; warn before replacing a column scsig did not write.

    ``reads`` maps each ``obs`` column the call reads to what it is (for the message).
    """
    for col in columns:
        if col in reads:
            msg = (
                f"key_added would write adata.obs[{col!r}], which this call reads as {reads[col]}; "
                "choose another key_added."
            )
            raise ValueError(msg)
    slashed = [c for c in columns if "/" in c or "\\" in c or set(c) == {"."}]
    if slashed:
        warnings.warn(
            f"adata.obs column name(s) {slashed} contain '/' or '\\' or are only dots: anndata's write_zarr refuses "
            "such column names (and write_h5ad will refuse '/'). Pass a key_added (and signature names) without them "
            "to save the object.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    existing = [c for c in columns if c in data.obs.columns]
    if existing:
        ours = scsig_columns(data)
        foreign = [c for c in existing if c not in ours]
        if foreign:
            warnings.warn(
                f"adata.obs column(s) {foreign} exist and were not written by scsig; they are replaced. "
                "Pass another key_added to keep them.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
