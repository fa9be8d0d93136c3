"""The querying half of :class:`scsig.Atlas`: ``score`` and ``to_anndata``.

:class:`AtlasQueries` holds the methods; :class:`scsig.Atlas` inherits them. The per-dataset
work (reading a shard's gene columns, scoring its cells) is in :mod:`._query`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from .. import _logging as logg
from .._constants import SCORE_KEY, UNS_KEY
from .._docs import doc_params, doc_progress
from .._signature import Aggregate, resolve_signatures
from .._utils import check_choice
from ..tl._score_modes import DEFAULT_TOP_K, check_mode
from ._build import shard_var
from ._query import DATASET_KEY, check_filter, concat_frames, matrix_shard, run_tasks, score_shard, warn_no_cells

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

__all__ = ["AtlasMode", "AtlasQueries", "ObsFilter"]

ObsFilter = str | Mapping[str, Any] | Callable[[pd.DataFrame], Any] | None
AtlasMode = Literal["top", "classic", "cosine"]
"""The scoring modes of :meth:`Atlas.score`."""


class AtlasQueries:
    """Methods of :class:`scsig.Atlas` that read its datasets (through the ``_specs`` of :class:`scsig.Atlas`)."""

    _root: Path
    _manifest: dict[str, Any]
    _genes: pd.Index

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
        mode: AtlasMode = "cosine",
        mode_kwds: Mapping[str, Any] | None = None,
        datasets: Sequence[str] | str | None = None,
        obs_filter: ObsFilter = None,
        key_added: str = SCORE_KEY,
        client: Any = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        r"""Score every matching cell of the atlas for a gene signature.

        A cell's score is what :func:`scsig.tl.score` gives, in the same ``mode``, on its dataset's
        whole layer; both default to ``mode="cosine"``, so the same signature on the same cells has
        the same score in memory and in the atlas. ``mode="cosine"`` is the cosine similarity of the
        cell's attributions and the signature's weights, which keeps deeper cells from scoring lower
        (see :func:`scsig.tl.score`); it uses each cell's Euclidean norm over all genes, stored when a
        dataset is added (for datasets added by an older scsig, computed from the dataset's values
        on the first ``"cosine"`` query of a process, every gene read once). ``mode="classic"`` is
        the mean (``aggregate="mean"``) or sum of its normalized attributions over the signature's
        genes, or with weights :math:`w_g` the weighted mean :math:`\sum_g w_g a_g / \sum_g w_g`
        (weighted sum :math:`\sum_g w_g a_g`): what the published method and the reference tool's
        ``query_attributions`` compute; pass it by name to get the reference's numbers (for an atlas
        imported with :meth:`from_signature` too). ``mode="top"`` is the classic score times the
        cell's attribution total over the sum of its 300 largest attributions; both per-cell sums
        are stored when a dataset is added, so a ``"top"`` query reads the same gene columns as a
        classic one plus two numbers per cell; for datasets added by an older scsig, or another
        ``top_k``, they are computed from the dataset's values once per session (every gene read; a
        warning says so). The mode is recorded in the result's ``attrs["scsig"]["mode"]``.

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
            ``"cosine"`` (default, as :func:`scsig.tl.score`), ``"classic"`` (the published score)
            or ``"top"``, as in :func:`scsig.tl.score` (the atlas has these three).
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
        var = shard_var(self._genes[cols], layer)
        shards = {s["name"]: s for s in self._manifest["shards"]}
        first = shards[specs[0].name].get("provenance") if specs else None
        uns = {UNS_KEY: {"atlas": {"path": str(self._root), "datasets": cats, "gene_order_hash": self.gene_order_hash}}}
        uns[UNS_KEY]["layers"] = {
            layer: dict(first) if isinstance(first, dict) else {"gene_order_hash": self.gene_order_hash}
        }
        out = ad.AnnData(obs=obs, var=var, uns=uns)
        out.layers[layer] = mat
        return out
