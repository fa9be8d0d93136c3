"""``sg.Atlas``: attribution layers of many datasets on disk, gene-major, queried by signature."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .._docs import doc_params, doc_progress
from .._settings import settings
from ..models import gene_order_hash
from . import _manifest as mf
from ._atlas_importance import AtlasImportance
from ._atlas_query import AtlasMode, AtlasQueries, ObsFilter
from ._atlas_write import AtlasWrites, OnError
from ._query import DATASET_KEY, ShardSpec, concat_frames, shard_obs
from ._staging import clean_on_open, now, remove_tree
from ._verify import verify_shards

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["Atlas", "AtlasMode", "ObsFilter", "OnError"]


class Atlas(AtlasWrites, AtlasQueries, AtlasImportance):
    """Attributions of many datasets on disk, stored gene-major and queried by signature.

    An atlas holds one gene order (its model's) and one *shard* per dataset: the dataset's
    attribution layer (cells x genes, stored by gene so a signature reads only its genes) and its
    cell metadata. Build it with :meth:`create` and :meth:`add` (or import the reference tool's
    published atlases with :meth:`from_signature`), reopen it with :meth:`open`, and query it with
    :meth:`score` or :meth:`to_anndata`; rank genes per group across datasets with
    :meth:`gene_importance` and :meth:`gene_consensus`.

    On disk an atlas is a folder: ``manifest.json`` lists the visible shards, ``gene_order.txt`` the
    genes, and ``shards/<id>/`` each hold one dataset as an AnnData zarr store that
    :func:`anndata.read_zarr` opens (the attributions are ``layers[<layer>]``, a CSC matrix whose
    arrays are Blosc-compressed, sharded zarr v3 arrays; ``row_stats/`` beside them holds each cell's
    attribution total, top-300 sum and norm, for :meth:`score`'s ``mode="top"`` and ``"cosine"``). Adding a dataset is atomic: a writer that
    dies leaves the atlas as it was, and readers can query while a writer adds. Every stored file is
    checksummed when its dataset is added: reads refuse damaged data with an error naming the
    dataset, and :meth:`verify` checks every byte.

    Examples
    --------
    >>> import tempfile, scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
    >>> atlas = sg.Atlas.create(tempfile.mkdtemp() + "/atlas", gene_order=model.gene_order)
    >>> atlas.add(adata, name="toy", progress=False)
    >>> atlas.score(["g0", "g1", "g2"], progress=False).shape
    (60, 3)
    """

    def __init__(self, path: str | Path) -> None:
        self._root = Path(path)
        self._manifest = mf.read_manifest(self._root)
        self._stamp = mf.manifest_stamp(self._root)
        self._genes = pd.Index(mf.read_gene_order(self._root, self._manifest["gene_order_hash"]), dtype=object)
        clean_on_open(self._root)

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(cls, path: str | Path, *, gene_order: Sequence[str]) -> Atlas:
        """Create an empty atlas at ``path`` for one model's gene order.

        Parameters
        ----------
        path
            A folder that does not exist yet (or is empty).
        gene_order
            The model's genes, in the model's order (e.g. ``model.gene_order``); every dataset added
            must come from a model with this gene order.

        Returns
        -------
        The new, empty :class:`Atlas`.
        """
        root = Path(path)
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            msg = f"{root} already exists and is not an empty folder; open an existing atlas with sg.Atlas.open."
            raise FileExistsError(msg)
        if isinstance(gene_order, str):
            msg = f"gene_order must be a list of gene names (e.g. model.gene_order), not a string ({gene_order!r:.40})."
            raise TypeError(msg)
        genes = [str(g) for g in gene_order]
        if not genes:
            msg = "gene_order is empty."
            raise ValueError(msg)
        index = pd.Index(genes)
        if not index.is_unique:
            dup = index[index.duplicated()].unique().tolist()[:5]
            msg = f"gene_order lists genes more than once ({dup})."
            raise ValueError(msg)
        if any("\n" in g for g in genes):
            msg = "Gene names must not contain newlines."
            raise ValueError(msg)
        root.mkdir(parents=True, exist_ok=True)
        (root / mf.SHARDS).mkdir()
        (root / mf.TMP).mkdir()
        mf.atomic_write_text(root / mf.GENE_ORDER, "\n".join(genes) + "\n")
        manifest = {
            "format": mf.FORMAT,
            "format_version": mf.FORMAT_VERSION,
            "gene_order_hash": gene_order_hash(genes),
            "n_genes": len(genes),
            "created": now(),
            "shards": [],
        }
        mf.write_manifest(root, manifest)
        return cls(root)

    @classmethod
    def open(cls, path: str | Path) -> Atlas:
        """Open an existing atlas.

        Parameters
        ----------
        path
            The atlas folder.

        Returns
        -------
        The :class:`Atlas`; it sees shards that writers add later (the manifest is re-read when it changes).
        """
        return cls(path)

    # ------------------------------------------------------------------ state

    def _refresh(self) -> None:
        stamp = mf.manifest_stamp(self._root)
        if stamp != self._stamp:
            self._manifest = mf.read_manifest(self._root)
            self._stamp = stamp

    @property
    def path(self) -> Path:
        """The atlas folder."""
        return self._root

    @property
    def gene_order(self) -> pd.Index:
        """The atlas's genes, in the model's order."""
        return self._genes

    @property
    def gene_order_hash(self) -> str:
        """:func:`scsig.models.gene_order_hash` of :attr:`gene_order`."""
        return self._manifest["gene_order_hash"]

    @property
    def datasets(self) -> list[str]:
        """Names of the datasets (shards), in the order they were added."""
        self._refresh()
        return [s["name"] for s in self._manifest["shards"]]

    @property
    def n_obs(self) -> int:
        """Cells in all datasets."""
        self._refresh()
        return int(sum(s["n_obs"] for s in self._manifest["shards"]))

    def summary(self) -> pd.DataFrame:
        """One row per dataset: cells, stored values, layer, model, attribution method, when added."""
        self._refresh()
        rows = []
        for s in self._manifest["shards"]:
            prov = s.get("provenance") or {}
            rows.append(
                {
                    "n_obs": s["n_obs"],
                    "nnz": s["nnz"],
                    "layer": s["layer"],
                    "model": (prov.get("model") or {}).get("name", "unknown") if isinstance(prov, dict) else "unknown",
                    "method": prov.get("method", "unknown") if isinstance(prov, dict) else "unknown",
                    "source": s.get("source", "anndata"),
                    "added": s["added"],
                }
            )
        return pd.DataFrame(rows, index=pd.Index(self.datasets, name=DATASET_KEY))

    def __repr__(self) -> str:
        self._refresh()
        n = len(self._manifest["shards"])
        return f"Atlas at {str(self._root)!r}: {n} dataset{'s' if n != 1 else ''}, {self.n_obs:,} cells, {len(self._genes):,} genes"

    def _specs(self, datasets: Sequence[str] | str | None) -> list[ShardSpec]:
        self._refresh()
        shards = {s["name"]: s for s in self._manifest["shards"]}
        if datasets is None:
            names = list(shards)
        else:
            names = [datasets] if isinstance(datasets, str) else [str(d) for d in datasets]
            unknown = [d for d in names if d not in shards]
            if unknown:
                msg = f"Datasets {unknown} are not in the atlas (it has {list(shards)[:10]}{' ...' if len(shards) > 10 else ''})."
                raise KeyError(msg)
        return [
            ShardSpec(
                name=n,
                path=str(self._root / mf.SHARDS / shards[n]["dir"]),
                layer=shards[n]["layer"],
                n_obs=int(shards[n]["n_obs"]),
                nnz=int(shards[n]["nnz"]),
                seal=_seal(shards[n]),
                row_top_k=_row_top_k(shards[n]),
                row_norms=bool((shards[n].get("row_stats") or {}).get("norms", False)),
            )
            for n in names
        ]

    def obs(self, *, datasets: Sequence[str] | str | None = None) -> pd.DataFrame:
        """Cell metadata of the datasets (all by default), with a ``dataset`` column."""
        specs = self._specs(datasets)
        cats = [s.name for s in specs]
        frames = [
            shard_obs(s).assign(**{DATASET_KEY: pd.Categorical([s.name] * s.n_obs, categories=cats)}) for s in specs
        ]
        return concat_frames(frames, cats, columns=[DATASET_KEY])

    @doc_params(doc_progress=doc_progress)
    def verify(self, *, datasets: Sequence[str] | str | None = None, progress: bool | None = None) -> list[str]:
        """Check every stored file of the datasets against the checksums written when they were added.

        Reads every byte of the datasets (all by default): the sha256 of each file, the list of
        files, the chunk framing that queries check, and the structure of the stored matrix.
        Queries check less, cheaply: the small files against their sha256 when they first open a
        dataset, the matrix structure, and, the first time they touch a value or row-index file,
        its chunk index and per-chunk crc32c against the record; each chunk they decode must match
        its crc32c. A damaged file, or a file taken from another build of the dataset or from
        another dataset, is found by both.

        This protects against damage and mix-ups, not against an adversary: a deliberate,
        consistent rewrite of values, names and every checksum that covers them is not detected.
        Datasets added by an older scsig have whole-file crc32c checksums, which cannot see the
        content of the value and row-index files (only their per-chunk crc32c can); datasets added
        before scsig recorded checksums are checked by decoding every chunk. A warning says so for
        each; remove and re-add them to get content checksums.

        Parameters
        ----------
        datasets
            Datasets to check (all by default).
        {doc_progress}

        Returns
        -------
        The names of the damaged datasets (empty when all is well); a warning per damaged dataset
        says what is wrong. Repair one with :meth:`remove` and :meth:`add`.

        Examples
        --------
        >>> import tempfile, scsig as sg
        >>> adata, model = sg.datasets.toy()
        >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
        >>> atlas = sg.Atlas.create(tempfile.mkdtemp() + "/atlas", gene_order=model.gene_order)
        >>> atlas.add(adata, name="toy", progress=False)
        >>> atlas.verify(progress=False)
        []
        """
        specs = self._specs(datasets)
        show = settings.progress if progress is None else progress
        return list(verify_shards(self._root, self._manifest, [s.name for s in specs], progress=show))

    @classmethod
    @doc_params(doc_progress=doc_progress)
    def from_signature(
        cls,
        folder: str | Path,
        path: str | Path,
        *,
        gene_order: Sequence[str],
        cell_types: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> Atlas:
        """Import a published attribution atlas of the reference tool (SIGnature) into a new atlas.

        The folder holds one subfolder per cell type with ``attributions`` (a 2-D sparse TileDB array,
        dimension ``x`` = cell, ``y`` = gene position in the model's gene order, attribute ``vals``)
        and ``cell_metadata.csv.gz`` (first column = cell name, in the order of ``x``). Each cell type
        becomes one dataset. The number of cells is taken from the metadata: cells at the end of
        the array whose attributions are all zero are kept (they score 0), which the reference's
        ``query_attributions`` silently drops. When the metadata's first column holds distinct
        whole numbers below the array's number of cells, it is read as each row's cell position
        ``x`` (rows need not be in array order; a cell with values but no row is an error). Each
        metadata column gets one dtype: numbers when all its values are numbers, booleans, or
        else categories of the text.

        Parameters
        ----------
        folder
            The published folder.
        path
            Where to create the new atlas.
        gene_order
            The model's gene order (the array's ``y`` indexes it).
        cell_types
            Subfolders to import (all that have an ``attributions`` array by default).
        {doc_progress}

        Returns
        -------
        The new :class:`Atlas`.
        """
        from ._tiledb import find_cell_types, import_cell_types

        folder = Path(folder)
        names = find_cell_types(folder, cell_types)
        atlas = cls.create(path, gene_order=gene_order)
        try:
            import_cell_types(atlas.path, folder, names, genes=atlas.gene_order, progress=progress)
            return atlas
        except BaseException:
            # the atlas is new: an import that fails (or is interrupted) leaves nothing behind
            remove_tree(atlas.path)
            raise


# ---------------------------------------------------------------------- helpers


def _seal(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    record = entry.get("checksums")
    return None if record is None else (str(record["algorithm"]), str(record["checksum"]))


def _row_top_k(entry: Mapping[str, Any]) -> int | None:
    record = entry.get("row_stats")
    return None if record is None else int(record["top_k"])
