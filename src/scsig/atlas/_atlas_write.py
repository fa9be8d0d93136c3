"""The writing half of :class:`scsig.Atlas`: ``add``, ``attribute`` and ``remove``.

:class:`AtlasWrites` holds the methods; :class:`scsig.Atlas` inherits them (it provides the
folder, the manifest and the gene order). What happens on disk is below: a build into a staging
folder and an atomic commit (:mod:`._build`, :mod:`._staging`), and for ``attribute`` the sources'
checks (:mod:`._sources`) and the runs under claims, here or on a cluster (:mod:`._runs`, :mod:`._cluster`).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from numbers import Integral
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from .. import _logging as logg
from .._constants import UNS_KEY
from .._docs import doc_params, doc_progress
from .._settings import settings
from .._utils import check_choice, get_matrix
from .._utils._progress import tqdm
from .._utils._warn import user_stacklevel
from ..tl._score_modes import DEFAULT_TOP_K
from . import _manifest as mf
from ._build import build_from_layer, reorder, shard_obs_frame, var_lookup, write_dataset
from ._checks import check_name
from ._cluster import run_on_client
from ._query import DATASET_KEY
from ._rowstats import RowStats
from ._runs import SKIPPED, run_claimed, run_local
from ._sources import check_options, make_jobs, source_names
from ._staging import check_layout, clean_leftovers

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from anndata import AnnData

__all__ = ["AtlasWrites", "OnError"]

OnError = Literal["raise", "warn"]
"""What :meth:`Atlas.attribute` does when a dataset fails: stop, or warn and go on."""


class AtlasWrites:
    """Methods of :class:`scsig.Atlas` that add and remove datasets."""

    _root: Path
    _manifest: dict[str, Any]
    _genes: pd.Index

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
        layer_key = mf.check_layer_name(layer if layer is not None else "attributions")
        x = get_matrix(adata, layer)
        prov = adata.uns.get(UNS_KEY, {}).get("layers", {}).get(layer) if layer is not None else None
        lut = var_lookup(adata, layer, prov, name, genes=self._genes, gene_order_hash=self.gene_order_hash)
        obs = shard_obs_frame(adata.obs, obs_columns, name)
        start = logg.info(f"adding dataset {name!r} ({adata.n_obs} cells) to the atlas")
        show = settings.progress if progress is None else progress
        record = prov if prov is not None else {"provenance": "none", "gene_order_hash": self.gene_order_hash}
        self._warn_mixed(name, record)

        row_stats = RowStats(DEFAULT_TOP_K)

        def build(shard: Path, scratch: Path) -> int:
            return build_from_layer(
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
            Columns of each source's ``obs`` to keep (all by default). With a token-transformer model
            (scGPT, scFoundation) the shard's ``obs`` also gets ``f"{{key_added}}_n_genes_dropped"``, the
            genes each cell had beyond the model's length, as :func:`scsig.tl.attribute` writes it.
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
        check_choice("on_error", on_error, OnError)
        options = check_options(attribute_options)
        sources, labels = _source_list(sources, names)
        loaded = self._attribution_model(model)
        _check_per_task(cells_per_task)
        self._refresh()
        have = {s["name"]: s for s in self._manifest["shards"]}
        todo = [(s, n) for s, n in zip(sources, labels, strict=True) if n not in have]
        jobs, results = make_jobs(str(self._root), todo)  # a source that cannot be read fails alone
        common = {"model": loaded, "options": options, "genes": list(self._genes)}
        common |= {"gene_order_hash": self.gene_order_hash, "obs_columns": obs_columns}
        show = settings.progress if progress is None else progress
        total = sum(j["n_obs"] for j in jobs)
        start = logg.info(f"attributing {len(todo)} datasets ({total:,} cells) into the atlas")
        run = run_local if client is None else partial(run_on_client, client, per_task=cells_per_task)
        with tqdm(total=total, disable=not show, desc="attribute", unit="cells") as bar:
            results |= run_claimed(run, self._root, jobs, common=common, bar=bar)
        reorder(self._root, [n for _, n in todo])
        self._refresh()
        report = _attribute_report(labels, have, results, listed={s["name"]: s for s in self._manifest["shards"]})
        logg.info(f"    finished: {int((report['status'] == 'added').sum())} datasets added", time=start)
        _warn_dropped_genes(report, self._manifest["shards"])
        _raise_or_warn(report, len(todo), on_error)
        return report

    def _attribution_model(self, model: Any) -> Any:
        """``model`` (or what :func:`scsig.models.load` reads from it), checked to have the atlas's gene order."""
        from ..models import FoundationModel, load

        loaded = model if isinstance(model, FoundationModel) else load(model)
        if loaded.gene_order_hash != self.gene_order_hash:
            msg = (
                f"Model {loaded.name!r} has gene order hash {loaded.gene_order_hash[:12]} ({loaded.n_genes} genes), "
                f"but this atlas expects {self.gene_order_hash[:12]} ({len(self._genes)} genes). "
                "Attribute with the atlas's model, or build one atlas per model."
            )
            raise ValueError(msg)
        return loaded

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
        self._manifest = write_dataset(
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
        check_layout(self._root)  # its files are deleted: never through a linked folder
        with mf.writer_lock(self._root):
            manifest = mf.read_manifest(self._root)
            kept = [s for s in manifest["shards"] if s["name"] != name]
            if len(kept) == len(manifest["shards"]):
                msg = f"The atlas has no dataset named {name!r} (it has {[s['name'] for s in kept][:10]})."
                raise KeyError(msg)
            mf.write_manifest(self._root, {**manifest, "shards": kept})
            self._manifest = mf.read_manifest(self._root)
            self._stamp = mf.manifest_stamp(self._root)
            clean_leftovers(self._root, self._manifest)

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
                        stacklevel=user_stacklevel(),
                    )
                    return


def _source_list(sources: Any, names: Sequence[str] | str | None) -> tuple[list[Any], list[str]]:
    """The sources as a list and their dataset names (checked)."""
    many = isinstance(sources, Sequence) and not isinstance(sources, str)
    sources = list(sources) if many else [sources]
    return sources, [check_name(n) for n in source_names(sources, names)]


def _check_per_task(cells_per_task: Any) -> None:
    if cells_per_task is not None and (
        isinstance(cells_per_task, bool) or not isinstance(cells_per_task, Integral) or cells_per_task < 1
    ):
        msg = f"cells_per_task must be a positive number of cells, not {cells_per_task!r}."
        raise ValueError(msg)


def _raise_or_warn(report: pd.DataFrame, n_todo: int, on_error: str) -> None:
    """Say which datasets of :meth:`Atlas.attribute` failed: raise, or warn."""
    failed = report[report["status"] == "failed"]
    if not len(failed):
        return
    lines = "; ".join(f"{n!r}: {e}" for n, e in failed["error"].items())
    msg = (
        f"{len(failed)} of {n_todo} datasets failed and were not added ({lines}). The others were added; "
        "fix the failed sources and rerun the same call (datasets already in the atlas are skipped)."
    )
    if on_error == "raise":
        raise RuntimeError(msg)
    warnings.warn(msg, UserWarning, stacklevel=user_stacklevel())


def _warn_dropped_genes(report: pd.DataFrame, shards: Sequence[Mapping]) -> None:
    """Once per :meth:`Atlas.attribute` call: the added datasets whose cells had more genes than a token model takes.

    Read from the shards' provenance, so datasets attributed on a cluster are reported too.
    """
    added = set(report.index[report["status"] == "added"])
    found = []
    for shard in shards:
        dropped = (shard.get("provenance") or {}).get("genes_dropped")
        if shard["name"] in added and dropped and dropped.get("n_cells"):
            found.append((shard, dropped))
    if not found:
        return
    from ..tl._attribute import kept_genes

    kept = kept_genes(found[0][1])
    listed = "; ".join(f"{s['name']!r}: {d['n_cells']} of {s['n_obs']} cells, up to {d['max']}" for s, d in found[:10])
    warnings.warn(
        f"Cells express more of the model's genes than it takes in {len(found)} dataset(s) ({listed}{' ...' if len(found) > 10 else ''} "
        f"genes dropped per cell); each cell kept its {kept}, the dropped genes' attribution is 0. Each shard's "
        f"obs[{found[0][1]['obs_key']!r}] has the count per cell.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def _attribute_report(
    names: list[str], had: Mapping[str, Mapping], results: Mapping[str, Any], *, listed: Mapping[str, Mapping]
) -> pd.DataFrame:
    """One row per dataset of :meth:`Atlas.attribute`: status, cells, stored values, error.

    ``had``: the datasets the atlas listed before the call; ``listed``: those it lists after it
    (a dataset another writer added meanwhile is skipped too).
    """
    rows = []
    for name in names:
        got = results.get(name)
        if name in had or (isinstance(got, str) and got == SKIPPED):
            entry = listed.get(name) or had[name]
            rows.append({"status": "skipped", "n_obs": entry["n_obs"], "nnz": entry["nnz"], "error": ""})
        elif isinstance(got, BaseException):
            rows.append({"status": "failed", "n_obs": pd.NA, "nnz": pd.NA, "error": f"{type(got).__name__}: {got}"})
        else:
            rows.append({"status": "added", "n_obs": got["n_obs"], "nnz": got["nnz"], "error": ""})
    frame = pd.DataFrame(rows, index=pd.Index(names, name=DATASET_KEY), columns=["status", "n_obs", "nnz", "error"])
    return frame.astype({"n_obs": "Int64", "nnz": "Int64"})
