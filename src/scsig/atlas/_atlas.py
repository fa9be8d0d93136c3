"""``sg.Atlas``: attribution layers of many datasets on disk, gene-major, queried by signature."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _logging as logg
from .._constants import SCORE_KEY, UNS_KEY
from .._docs import doc_params, doc_progress
from .._settings import settings
from .._signature import Aggregate, resolve_signatures
from .._utils import check_choice, get_matrix
from ..models import gene_order_hash
from ..tl._score_modes import DEFAULT_TOP_K, check_mode
from . import _ingest as ingest
from . import _manifest as mf
from ._integrity import check_name, verify_shards
from ._query import (
    DATASET_KEY,
    ShardSpec,
    check_filter,
    concat_frames,
    matrix_shard,
    run_tasks,
    score_shard,
    shard_obs,
    warn_no_cells,
)
from ._rowstats import RowStats
from ._store import remove_tree

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["Atlas"]

ObsFilter = str | Mapping[str, Any] | Callable[[pd.DataFrame], Any] | None
AtlasMode = Literal["top", "classic", "cosine"]
"""The scoring modes of :meth:`Atlas.score`."""
OnError = Literal["raise", "warn"]
"""What :meth:`Atlas.attribute` does when a dataset fails: stop, or warn and go on."""


class Atlas:
    """Attributions of many datasets on disk, stored gene-major and queried by signature.

    An atlas holds one gene order (its model's) and one *shard* per dataset: the dataset's
    attribution layer (cells x genes, stored by gene so a signature reads only its genes) and its
    cell metadata. Build it with :meth:`create` and :meth:`add` (or import the reference tool's
    published atlases with :meth:`from_signature`), reopen it with :meth:`open`, and query it with
    :meth:`score` or :meth:`to_anndata`.

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
    >>> sg.tl.attribute(adata, model, progress=False)
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
            "created": ingest.now(),
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

    # ------------------------------------------------------------------ writing

    @doc_params(doc_progress=doc_progress)
    def add(
        self,
        adata: AnnData,
        *,
        layer: str | None = "attr_ig",
        name: str,
        obs_columns: Sequence[str] | None = None,
        progress: bool | None = None,
    ) -> None:
        """Add one dataset (a shard): its attribution layer and its cell metadata.

        The layer's columns are mapped onto the atlas's gene order by gene name (through the
        ``gene_symbols`` column recorded by :func:`scsig.tl.attribute`, if one was used); columns
        outside the model must hold zeros and are not stored. A layer whose provenance
        (``adata.uns["scsig"]["layers"][layer]``) names another gene order is refused. A layer
        without provenance is accepted when its ``var_names`` are all genes of the atlas.

        The write is atomic: the shard is built in its own folder under the atlas's ``tmp/``,
        renamed into ``shards/``, and only then listed in the manifest; only that last step takes
        the atlas's writer lock, so several processes can build shards at once. To attribute and
        add in one step without holding the layer in memory, see :meth:`attribute`. Memory stays bounded (about 1 GB beyond
        the input) whatever the dataset's size: the layer is read in row blocks, transposed through
        scratch files and written gene range by gene range.

        Parameters
        ----------
        adata
            Annotated data matrix with an attribution layer. Its layer may be in memory (CSR, CSC,
            dense) or a backed sparse dataset (``anndata.io.sparse_dataset``).
        layer
            The attribution layer; ``None`` reads ``adata.X``.
        name
            The dataset's name in the atlas (unique).
        obs_columns
            Columns of ``adata.obs`` to keep (all by default). ``"dataset"`` is reserved for the
            dataset's name in query results.
        {doc_progress}

        Returns
        -------
        ``None``; the atlas lists the new dataset.
        """
        from anndata import AnnData

        if not isinstance(adata, AnnData):
            msg = (
                f"Expected an AnnData, got {type(adata).__name__} (for a MuData, pass its modality, e.g. mdata['rna'])."
            )
            raise TypeError(msg)
        name = check_name(name)
        if name in self.datasets:
            msg = f"The atlas already has a dataset named {name!r}; choose another name."
            raise ValueError(msg)
        x = get_matrix(adata, layer)
        prov = adata.uns.get(UNS_KEY, {}).get("layers", {}).get(layer) if layer is not None else None
        lut = ingest.var_lookup(adata, layer, prov, name, genes=self._genes, gene_order_hash=self.gene_order_hash)
        obs = ingest.shard_obs_frame(adata.obs, obs_columns, name)
        layer_key = layer if layer is not None else "attributions"
        start = logg.info(f"adding dataset {name!r} ({adata.n_obs} cells) to the atlas")
        show = settings.progress if progress is None else progress
        record = prov if prov is not None else {"provenance": "none", "gene_order_hash": self.gene_order_hash}
        self._warn_mixed(name, record)

        row_stats = RowStats(DEFAULT_TOP_K)

        def build(shard: Path, scratch: Path) -> int:
            return ingest.build_from_layer(
                shard,
                scratch,
                x,
                lut,
                obs=obs,
                genes=self._genes,
                layer=layer_key,
                provenance=record,
                name=name,
                show=show,
                row_stats=row_stats,
            )

        self._write_dataset(name, layer_key, obs, record, build, source="anndata", row_stats=row_stats)
        logg.info(f"    finished: dataset {name!r} added", time=start)

    @doc_params(doc_progress=doc_progress)
    def attribute(
        self,
        sources: Any,
        model: Any,
        *,
        names: Sequence[str] | str | None = None,
        client: Any = None,
        cells_per_task: int | None = None,
        obs_columns: Sequence[str] | None = None,
        on_error: OnError = "raise",
        progress: bool | None = None,
        **attribute_options: Any,
    ) -> pd.DataFrame:
        """Attribute datasets straight into the atlas, each streamed batch by batch into its own shard.

        Each source becomes one dataset: its cells are read, attributed (as by
        :func:`scsig.tl.attribute`, with the same values) and written into the shard one batch at a
        time, so memory does not grow with the number of cells and nothing is written into the
        sources. Each dataset is committed to the manifest on its own as soon as its shard is
        complete (atomically, under the atlas's writer lock, as :meth:`add`); once all are done they
        are listed in the order of ``sources``, whichever finished first. A dataset that fails
        leaves the atlas as it was and does not stop the others; datasets whose name the atlas
        already has are skipped, so rerunning the same call after a failure or an interruption
        attributes only what is missing.

        Parameters
        ----------
        sources
            Paths of ``.h5ad`` files (opened with ``backed="r"``) or AnnData objects (in memory,
            backed, or holding dask arrays), or a single one. Counts are read from ``adata.X`` or
            ``layer=``.
        model
            The atlas's model: a :class:`~scsig.models.FoundationModel` or a path
            :func:`scsig.models.load` reads. Its gene order must be the atlas's.
        names
            One dataset name per source; by default each file's stem (required for AnnData objects).
        client
            A :class:`distributed.Client`: the datasets are attributed by tasks on its cluster,
            each worker streaming its part to disk (the atlas folder and the source files must be
            reachable at the same paths from the workers and from this process; a backed AnnData is
            sent as its file's path). A dataset of more than ``cells_per_task`` cells is split into
            blocks of cells attributed in parallel, then merged into its shard by one more task and
            committed once; smaller datasets are one task each. The values are those of a build
            in one process. Each task limits torch, numba and BLAS to its worker's threads.
            Default: the datasets one after the other in this process.
        cells_per_task
            With ``client``: about how many cells one task attributes. Default: one task per
            dataset when whole datasets keep the worker threads evenly busy (the busiest at most
            10 % above an even share), otherwise blocks for about four tasks per worker thread, at
            least 2,000 cells each, so the workers finish together. Pass a number above the largest
            dataset for one task per dataset.
        obs_columns
            Columns of each source's ``obs`` to keep (all by default).
        on_error
            When a dataset fails: ``"raise"`` a :class:`RuntimeError` naming the failed datasets
            once all the others are done, or ``"warn"`` and return the report.
        {doc_progress}
        **attribute_options
            Options of :func:`scsig.tl.attribute` (``method``, ``layer``, ``n_steps``,
            ``batch_size``, ``gene_symbols``, ``key_added`` (the shard's layer name), ...).

        Returns
        -------
        A DataFrame indexed by dataset name: ``status`` (``"added"``, ``"skipped"`` (the atlas
        already had it) or ``"failed"``), ``n_obs`` and ``nnz`` (cells and stored values in the
        atlas; missing for failed datasets) and ``error``.

        Examples
        --------
        >>> import tempfile, scsig as sg
        >>> adata, model = sg.datasets.toy()
        >>> atlas = sg.Atlas.create(tempfile.mkdtemp() + "/atlas", gene_order=model.gene_order)
        >>> atlas.attribute([adata[:30], adata[30:]], model, names=["a", "b"], progress=False)["status"].tolist()
        ['added', 'added']
        >>> atlas.datasets
        ['a', 'b']
        """
        from .._utils._progress import tqdm
        from ..models import FoundationModel, load

        check_choice("on_error", on_error, OnError)
        options = ingest.check_options(attribute_options)
        many = isinstance(sources, Sequence) and not isinstance(sources, str)
        sources = list(sources) if many else [sources]
        labels = ingest.source_names(sources, names)
        labels = [check_name(n) for n in labels]
        loaded = model if isinstance(model, FoundationModel) else load(model)
        if loaded.gene_order_hash != self.gene_order_hash:
            msg = (
                f"Model {loaded.name!r} has gene order hash {loaded.gene_order_hash[:12]} ({loaded.n_genes} genes), "
                f"but this atlas expects {self.gene_order_hash[:12]} ({len(self._genes)} genes). "
                "Attribute with the atlas's model, or build one atlas per model."
            )
            raise ValueError(msg)
        self._refresh()
        have = {s["name"]: s for s in self._manifest["shards"]}
        todo = [(s, n) for s, n in zip(sources, labels, strict=True) if n not in have]
        if cells_per_task is not None and (
            isinstance(cells_per_task, bool) or not isinstance(cells_per_task, Integral) or cells_per_task < 1
        ):
            msg = f"cells_per_task must be a positive number of cells, not {cells_per_task!r}."
            raise ValueError(msg)
        sizes = [ingest.n_cells(s) for s, _ in todo]
        jobs = [
            {"root": str(self._root), "source": ingest.for_worker(s), "name": n, "n_obs": k}
            for (s, n), k in zip(todo, sizes, strict=True)
        ]
        common = {"model": loaded, "options": options, "genes": list(self._genes)}
        common |= {"gene_order_hash": self.gene_order_hash, "obs_columns": obs_columns}
        total = sum(sizes)
        show = settings.progress if progress is None else progress
        start = logg.info(f"attributing {len(todo)} datasets ({total:,} cells) into the atlas")
        with tqdm(total=total, disable=not show, desc="attribute", unit="cells") as bar:
            run = ingest.run_local if client is None else partial(ingest.run_on_client, client, per_task=cells_per_task)
            results = run(jobs, common=common, bar=bar)
        ingest.reorder(self._root, [j["name"] for j in jobs])
        self._refresh()
        report = _attribute_report(labels, have, results)
        logg.info(f"    finished: {int((report['status'] == 'added').sum())} datasets added", time=start)
        failed = report[report["status"] == "failed"]
        if len(failed):
            lines = "; ".join(f"{n!r}: {e}" for n, e in failed["error"].items())
            msg = (
                f"{len(failed)} of {len(todo)} datasets failed and were not added ({lines}). The others were added; "
                "fix the failed sources and rerun the same call (datasets already in the atlas are skipped)."
            )
            if on_error == "raise":
                raise RuntimeError(msg)
            warnings.warn(msg, UserWarning, stacklevel=2)
        return report

    def _write_dataset(
        self,
        name: str,
        layer: str,
        obs: pd.DataFrame,
        provenance: dict | None,
        build: Callable[[Path, Path], int],
        *,
        source: str,
        row_stats: RowStats | None = None,
    ) -> None:
        check_name(name)
        self._manifest = ingest.write_dataset(
            self._root,
            name=name,
            layer=layer,
            n_obs=len(obs),
            obs_columns=obs.columns,
            provenance=provenance,
            build=build,
            source=source,
            row_stats=row_stats,
        )
        self._stamp = mf.manifest_stamp(self._root)

    def remove(self, name: str) -> None:
        """Remove a dataset (e.g. a damaged one, before adding it again).

        Parameters
        ----------
        name
            The dataset's name.

        Returns
        -------
        ``None``; the manifest no longer lists the dataset and its files are deleted.
        """
        with mf.writer_lock(self._root):
            manifest = mf.read_manifest(self._root)
            kept = [s for s in manifest["shards"] if s["name"] != name]
            if len(kept) == len(manifest["shards"]):
                msg = f"The atlas has no dataset named {name!r} (it has {[s['name'] for s in kept][:10]})."
                raise KeyError(msg)
            mf.write_manifest(self._root, {**manifest, "shards": kept})
            self._manifest = mf.read_manifest(self._root)
            self._stamp = mf.manifest_stamp(self._root)
            ingest.clean_leftovers(self._root, self._manifest)

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
        >>> sg.tl.attribute(adata, model, progress=False)
        >>> atlas = sg.Atlas.create(tempfile.mkdtemp() + "/atlas", gene_order=model.gene_order)
        >>> atlas.add(adata, name="toy", progress=False)
        >>> atlas.verify(progress=False)
        []
        """
        specs = self._specs(datasets)
        show = settings.progress if progress is None else progress
        return list(verify_shards(self._root, self._manifest, [s.name for s in specs], progress=show))

    def _warn_mixed(self, name: str, provenance: dict | None) -> None:
        if not isinstance(provenance, Mapping) or "method" not in provenance:
            return
        for s in self._manifest["shards"]:
            prov = s.get("provenance")
            if not isinstance(prov, Mapping) or "method" not in prov:
                continue
            for key in ("method", "target", "target_sum"):
                if key in prov and key in provenance and str(prov[key]) != str(provenance[key]):
                    warnings.warn(
                        f"Dataset {name!r} has {key}={provenance[key]!r} but dataset {s['name']!r} has {prov[key]!r}; "
                        "scores across these datasets are not comparable.",
                        UserWarning,
                        stacklevel=4,
                    )
                    return

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
            return import_cell_types(atlas, folder, names, progress=progress)
        except BaseException:
            # the atlas is new: an import that fails (or is interrupted) leaves nothing behind
            remove_tree(atlas.path)
            raise

    # ------------------------------------------------------------------ queries

    def _signature_columns(
        self, genes: Any, weights: Sequence[float] | None, aggregate: str
    ) -> tuple[np.ndarray, np.ndarray, list[str], dict]:
        sigs, several = resolve_signatures(
            genes,
            weights,
            index=self._genes,
            aggregate=aggregate,
            where="the atlas gene order",
            missing_text="not in the atlas gene order",
            stacklevel=4,
        )
        positions = [sig.cols for sig in sigs]
        coefs = [sig.coef for sig in sigs]
        record = {sig.name: {"genes": sig.genes, "missing": sig.missing} for sig in sigs}
        cols = np.unique(np.concatenate(positions))
        coef = np.zeros((cols.size, len(sigs)))
        for k, (pos, c) in enumerate(zip(positions, coefs, strict=True)):
            coef[np.searchsorted(cols, pos), k] = c
        return cols, coef, [sig.name for sig in sigs] if several else [], record

    @doc_params(doc_progress=doc_progress)
    def score(
        self,
        genes: Sequence[str] | Mapping[str, float] | Mapping[str, Sequence[str] | Mapping[str, float]],
        *,
        weights: Sequence[float] | None = None,
        aggregate: Aggregate = "mean",
        mode: AtlasMode = "classic",
        mode_kwds: Mapping[str, Any] | None = None,
        datasets: Sequence[str] | str | None = None,
        obs_filter: ObsFilter = None,
        key_added: str = SCORE_KEY,
        client: Any = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        r"""Score every matching cell of the atlas for a gene signature.

        A cell's score is what :func:`scsig.tl.score` gives, in the same ``mode``, on its dataset's
        whole layer. ``mode="classic"`` is the mean (``aggregate="mean"``) or sum of its normalized
        attributions over the signature's genes, or with weights :math:`w_g` the weighted mean
        :math:`\sum_g w_g a_g / \sum_g w_g` (weighted sum :math:`\sum_g w_g a_g`): what the
        published method and the reference tool's ``query_attributions`` compute, and the default
        here, so that an atlas (including one imported from the reference tool) answers as the
        reference does. ``mode="cosine"``, the default of :func:`scsig.tl.score`, is the cosine
        similarity of the cell's attributions and the signature's weights, which keeps deeper cells
        from scoring lower (see :func:`scsig.tl.score`); pass it to get the in-memory default's
        numbers from the atlas. It needs each cell's Euclidean norm over all genes, stored when a
        dataset is added (for datasets added by an older scsig, computed from the dataset's values
        on the first ``"cosine"`` query of a process, every gene read once). ``mode="top"`` is the classic score times the cell's attribution
        total over the sum of its 300 largest attributions; both per-cell sums are stored when a
        dataset is added, so a ``"top"`` query reads the same gene columns as a classic one plus
        two numbers per cell; for datasets added by an older scsig, or another ``top_k``, they are
        computed from the dataset's values once per session (every gene read; a warning says so).

        .. versionchanged:: 0.2.0
           ``mode=`` added (default ``"classic"``, the scores of earlier versions and of the
           reference tool); ``mode="cosine"`` gives :func:`scsig.tl.score`'s default.

        Genes outside the atlas gene order are left out with a warning;
        a gene the model knows but a dataset lacked counts as 0 there (as in the reference tool).
        Only the signature's genes are read, shard by shard, in parallel with dask; within a shard
        they are read in groups of about 4 million values (at most three groups at a time), so a
        query's working memory does not grow with the size of the atlas.

        Parameters
        ----------
        genes
            A list of genes, a dict gene -> weight, or a dict name -> list (or gene -> weight dict)
            for several signatures at once.
        weights
            Weights for a gene list, in the same order.
        aggregate
            ``"mean"`` or ``"sum"``.
        mode
            ``"classic"`` (default), ``"cosine"`` or ``"top"``, as in :func:`scsig.tl.score` (the atlas
            has these three; note that :func:`scsig.tl.score` defaults to ``"cosine"``).
        mode_kwds
            ``{{"top_k": k}}`` for ``mode="top"`` (default 300).
        datasets
            Datasets to query (all by default).
        obs_filter
            Cells to keep: a :meth:`pandas.DataFrame.eval` expression over the metadata
            (``"cell_type == 'T cell'"``; the ``dataset`` column is available), a dict
            column -> value or list of values, or a callable taking a dataset's metadata and
            returning a boolean mask. Datasets that lack a column the filter names contribute no cells.
        key_added
            Name of the score column; for several signatures ``f"{key_added}_{name}"``.
        client
            A :class:`distributed.Client`: run the per-dataset tasks on its cluster (the atlas
            folder must be readable by the workers at the same path). Default: local threads.
        {doc_progress}

        Returns
        -------
        A DataFrame indexed by cell, one row per matching cell in dataset order: ``dataset``
        (categorical), the datasets' metadata columns, and the float64 score column(s). Cell names
        are the datasets' own, so they may repeat across datasets; ``dataset`` tells them apart.
        ``frame.attrs["scsig"]`` records the mode and the genes used and missing.
        """
        check_choice("mode", mode, AtlasMode)
        kwds = check_mode(mode, mode_kwds)
        top_k = kwds.get("top_k", DEFAULT_TOP_K) if mode == "top" else None
        cols, coef, names, record = self._signature_columns(genes, weights, aggregate)
        keys = [f"{key_added}_{n}" for n in names] if names else [key_added]
        specs = self._specs(datasets)
        cats = [s.name for s in specs]
        start = logg.info(f"scoring {len(cols)} genes across {len(specs)} datasets ({mode})")
        tasks = [(s, cols, coef, keys, obs_filter, cats, top_k, mode) for s in specs]
        results = run_tasks(score_shard, tasks, client=client, progress=progress, desc="score")
        check_filter(obs_filter, [ok for _, ok in results])
        frame = concat_frames([f for f, _ in results if f is not None], cats, columns=[DATASET_KEY, *keys])
        warn_no_cells(obs_filter, len(frame))
        frame.attrs[UNS_KEY] = {
            "aggregate": aggregate,
            "mode": mode,
            **({"mode_options": {"top_k": top_k}} if top_k is not None else {}),
            "signatures": record,
        }
        logg.info(f"    finished: {len(frame)} cells scored", time=start)
        return frame

    @doc_params(doc_progress=doc_progress)
    def to_anndata(
        self,
        genes: Sequence[str] | None = None,
        *,
        datasets: Sequence[str] | str | None = None,
        obs_filter: ObsFilter = None,
        client: Any = None,
        progress: bool | None = None,
    ) -> AnnData:
        """The attributions of a subset of the atlas as an AnnData.

        Parameters
        ----------
        genes
            Genes to read (all genes of the atlas by default; reading all genes reads whole shards).
            Genes outside the atlas gene order are left out with a warning.
        datasets
            Datasets to read (all by default).
        obs_filter
            Cells to keep, as in :meth:`score`.
        client
            A :class:`distributed.Client` to read on (see :meth:`score`).
        {doc_progress}

        Returns
        -------
        An AnnData (cells x genes) with ``obs`` = the metadata plus ``dataset``,
        ``layers[<layer>]`` = the attributions (CSR float32), ``var[f"{layer}_in_model"]`` = True and
        ``uns["scsig"]["layers"][<layer>]`` = the first dataset's provenance, so that
        :func:`scsig.tl.score` works on it; ``uns["scsig"]["atlas"]`` names the atlas and datasets.
        :func:`scsig.tl.score` on it gives :meth:`score`'s values with ``mode="classic"``; with the
        default ``mode="cosine"`` (or ``"top"``) only when every gene was read (``genes=None``), as
        a cell's norm (or top-300 sum) needs its whole row: on a gene subset use :meth:`score`.
        """
        import anndata as ad

        if genes is None:
            cols = np.arange(len(self._genes))
        else:
            cols, _, _, _ = self._signature_columns(list(genes), None, "sum")
        specs = self._specs(datasets)
        cats = [s.name for s in specs]
        tasks = [(s, cols, obs_filter, cats) for s in specs]
        results = run_tasks(matrix_shard, tasks, client=client, progress=progress, desc="read")
        check_filter(obs_filter, [ok for *_, ok in results])
        kept = [(f, m) for f, m, _ in results if f is not None]
        obs = concat_frames([f for f, _ in kept], cats, columns=[DATASET_KEY])
        warn_no_cells(obs_filter, len(obs))
        mat = (
            sparse.vstack([m for _, m in kept], format="csr", dtype=np.float32)
            if kept
            else sparse.csr_matrix((0, cols.size), dtype=np.float32)
        )
        layers = {s.layer for s in specs}
        layer = layers.pop() if len(layers) == 1 else "attributions"
        var = ingest.shard_var(self._genes[cols], layer)
        shards = {s["name"]: s for s in self._manifest["shards"]}
        first = shards[specs[0].name].get("provenance") if specs else None
        uns = {UNS_KEY: {"atlas": {"path": str(self._root), "datasets": cats, "gene_order_hash": self.gene_order_hash}}}
        uns[UNS_KEY]["layers"] = {
            layer: dict(first) if isinstance(first, dict) else {"gene_order_hash": self.gene_order_hash}
        }
        out = ad.AnnData(obs=obs, var=var, uns=uns)
        out.layers[layer] = mat
        return out


# ---------------------------------------------------------------------- helpers


def _seal(entry: Mapping[str, Any]) -> tuple[str, str] | None:
    record = entry.get("checksums")
    return None if record is None else (str(record["algorithm"]), str(record["checksum"]))


def _row_top_k(entry: Mapping[str, Any]) -> int | None:
    record = entry.get("row_stats")
    return None if record is None else int(record["top_k"])


def _attribute_report(names: list[str], had: Mapping[str, Mapping], results: Mapping[str, Any]) -> pd.DataFrame:
    """One row per dataset of :meth:`Atlas.attribute`: status, cells, stored values, error."""
    rows = []
    for name in names:
        got = results.get(name)
        if name in had:
            rows.append({"status": "skipped", "n_obs": had[name]["n_obs"], "nnz": had[name]["nnz"], "error": ""})
        elif isinstance(got, BaseException):
            rows.append({"status": "failed", "n_obs": pd.NA, "nnz": pd.NA, "error": f"{type(got).__name__}: {got}"})
        else:
            rows.append({"status": "added", "n_obs": got["n_obs"], "nnz": got["nnz"], "error": ""})
    frame = pd.DataFrame(rows, index=pd.Index(names, name=DATASET_KEY), columns=["status", "n_obs", "nnz", "error"])
    return frame.astype({"n_obs": "Int64", "nnz": "Int64"})
