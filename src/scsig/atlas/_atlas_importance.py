"""Gene importance across the atlas: :meth:`~scsig.Atlas.gene_importance` and :meth:`~scsig.Atlas.gene_consensus`.

:class:`AtlasImportance` holds the methods; :class:`scsig.Atlas` inherits them. The per-dataset
reads and the aggregation are in :mod:`._importance`.
"""

from __future__ import annotations

import warnings
from numbers import Integral
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from .. import _logging as logg
from .._constants import UNS_KEY
from .._docs import doc_params, doc_progress
from .._utils import check_choice
from .._utils._warn import user_stacklevel
from ._importance import (
    GENES_PER_TASK,
    DatasetGroups,
    consensus_table,
    dataset_groups,
    importance_table,
    importance_task,
    union_labels,
    warn_unlabelled,
)
from ._query import check_filter, run_tasks, warn_no_cells

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ._query import ShardSpec

__all__ = ["AtlasImportance", "MissingGenes"]

MissingGenes = Literal["neutral", "ignore"]
"""How :meth:`Atlas.gene_consensus` counts a dataset that does not measure a gene."""


class AtlasImportance:
    """Methods of :class:`scsig.Atlas` that rank genes by attribution per dataset and group."""

    _genes: pd.Index

    def _importance_genes(self, genes: Sequence[str] | str | None) -> np.ndarray:
        """Positions of ``genes`` in the atlas gene order (sorted); all genes for ``None``."""
        if genes is None:
            return np.arange(len(self._genes), dtype=np.int64)
        names = [genes] if isinstance(genes, str) else [str(g) for g in genes]
        pos = self._genes.get_indexer(pd.Index(names, dtype=object))
        unknown = [n for n, p in zip(names, pos, strict=True) if p < 0]
        if unknown or not names:
            msg = (
                f"genes {unknown[:10] or names} are not in the atlas gene order ({len(self._genes)} genes, e.g. "
                f"{list(self._genes[:3])}); pass genes of atlas.gene_order, or genes=None for all."
            )
            raise KeyError(msg)
        return np.unique(pos).astype(np.int64)

    @staticmethod
    def _importance_groups(
        specs: list[ShardSpec],
        groupby: str,
        obs_filter: Any,
        groups: Sequence[str] | None,
        *,
        explicit: bool,
    ) -> dict[str, DatasetGroups]:
        """Each dataset's groups; a dataset without ``groupby``: an error if named, else skipped with a warning."""
        found = {s.name: dataset_groups(s, groupby, obs_filter, groups) for s in specs}
        lacking = [n for n, f in found.items() if f == "no column"]
        if lacking and (explicit or len(lacking) == len(found)):
            msg = (
                f"Datasets {lacking[:10]} have no cell metadata column {groupby!r}; see atlas.obs() for the "
                "columns, and leave such datasets out with datasets=."
            )
            raise KeyError(msg)
        if lacking:
            warnings.warn(
                f"Datasets {lacking[:10]}{' ...' if len(lacking) > 10 else ''} have no {groupby!r} column and are "
                "left out; pass datasets= to choose them yourself.",
                UserWarning,
                stacklevel=user_stacklevel(),
            )
        check_filter(obs_filter, [f != "no filter column" for n, f in found.items() if n not in lacking])
        kept = {n: f for n, f in found.items() if isinstance(f, DatasetGroups)}
        if groups is not None:
            present = set(union_labels(list(kept.values())))
            unknown = [g for g in groups if g not in present]
            if unknown:
                msg = f"groups {unknown[:10]} have no cells in column {groupby!r} of the datasets queried (after obs_filter)."
                raise KeyError(msg)
        return kept

    @doc_params(doc_progress=doc_progress)
    def gene_importance(
        self,
        groupby: str,
        *,
        groups: Sequence[str] | str | None = None,
        genes: Sequence[str] | str | None = None,
        datasets: Sequence[str] | str | None = None,
        obs_filter: Any = None,
        n_genes: int | None = None,
        client: Any = None,
        progress: bool | None = None,
    ) -> pd.DataFrame:
        """Each gene's mean attribution, fraction of cells and rank, per dataset and group.

        Answers "which genes matter where" across the atlas: for every dataset and every group of
        ``groupby`` (e.g. cell type), each gene's mean attribution over the group's cells (zeros
        included), the fraction of those cells with a non-zero attribution, and its rank (1 = the
        highest mean in that dataset and group; ties in gene order, as
        :func:`scsig.tl.rank_genes_groups` orders them). These are the ``means`` and ``pts`` of
        :func:`scsig.tl.rank_genes_groups` on each dataset's layer, without a test against a
        reference: hence the name, not ``rank_genes_groups``, whose scanpy format promises tests,
        p-values and fold changes. :meth:`gene_consensus` combines the datasets' rankings.

        Genes are read shard by shard: a dataset's genes are split into ranges of 2,048, one task
        each, and a task reads its genes in groups of about 4 million values (up to three in flight),
        adding each group into per (gene, group) sums; memory is those groups and sums per running
        task, never a dataset's matrix. The tasks run in parallel on ``client`` (as :meth:`score`),
        else in local threads. The atlas does not record a dataset's gene panel: a gene with no
        non-zero attribution in any cell of a dataset (not in its panel, or expressed by none of its
        cells, so the model gave it none) is taken as not measured there and has no row for that
        dataset, rather than ranking last. Per-dataset summaries are not stored when a dataset is added: reading every gene of
        3 datasets of 20,000 cells (130 million values) took 2 to 5 s on two cores, with 174 MB
        of working memory (``benchmarks/atlas_importance.py``; see the architecture notes).

        Parameters
        ----------
        groupby
            Column of the datasets' cell metadata with the groups. Cells without a label (NaN) are
            left out, with a warning. With ``datasets=None``, datasets without the column are left
            out with a warning; a dataset named in ``datasets`` without it is an error.
        groups
            Groups to keep (all by default); a group with no cells in any dataset is an error.
        genes
            Genes to read and rank (all by default); ranks are among these genes. Unknown genes are an error.
        datasets
            Datasets to read (all by default).
        obs_filter
            Cells to keep, as in :meth:`score`.
        n_genes
            Keep the top ``n_genes`` rows per dataset and group (all by default; a truncated table
            cannot make a consensus).
        client
            A :class:`distributed.Client` to read on (see :meth:`score`).
        {doc_progress}

        Returns
        -------
        A DataFrame with one row per (dataset, group, measured gene), sorted by dataset, group and
        rank: ``dataset``, ``group`` and ``gene`` (categoricals), ``mean_attribution``,
        ``frac_cells`` (float64), ``rank`` and ``n_cells`` (the group's cells in the dataset).
        ``frame.attrs["scsig"]`` records ``groupby``, ``n_genes``, the datasets left out and,
        per dataset, its measured genes and its cells without a label.

        Examples
        --------
        >>> import tempfile, scsig as sg
        >>> adata, model = sg.datasets.toy()
        >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
        >>> atlas = sg.Atlas.create(tempfile.mkdtemp() + "/atlas", gene_order=model.gene_order)
        >>> atlas.add(adata[::2].copy(), name="even", progress=False)
        >>> atlas.add(adata[1::2].copy(), name="odd", progress=False)
        >>> table = atlas.gene_importance("group", progress=False)
        >>> list(table.columns)
        ['dataset', 'group', 'gene', 'mean_attribution', 'frac_cells', 'rank', 'n_cells']
        >>> table.groupby(["dataset", "group"], observed=True)["rank"].min().tolist()
        [1, 1, 1, 1]
        """
        if isinstance(n_genes, bool) or (n_genes is not None and (not isinstance(n_genes, Integral) or n_genes < 1)):
            msg = f"n_genes must be a positive integer or None (all genes), got {n_genes!r}."
            raise ValueError(msg)
        groups = [groups] if isinstance(groups, str) else None if groups is None else [str(g) for g in groups]
        cols = self._importance_genes(genes)
        specs = self._specs(datasets)
        found = self._importance_groups(specs, str(groupby), obs_filter, groups, explicit=datasets is not None)
        labels = union_labels(list(found.values()))
        start = logg.info(f"gene importance of {cols.size} genes in {len(found)} datasets by {groupby!r}")
        tasks = [
            (s, cols[lo : lo + GENES_PER_TASK], str(groupby), obs_filter, found[s.name].labels)
            for s in specs
            if s.name in found and found[s.name].labels
            for lo in range(0, cols.size, GENES_PER_TASK)
        ]
        results = run_tasks(
            importance_task, tasks, client=client, progress=progress, desc="importance", unit="gene range"
        )
        per_dataset = []
        for s in specs:
            mine = [r for t, r in zip(tasks, results, strict=True) if t[0].name == s.name]
            if mine:
                sums, nonzero, measured = (np.concatenate([r[i] for r in mine]) for i in range(3))
                per_dataset.append((s.name, found[s.name], sums, nonzero, measured))
        table = importance_table(
            per_dataset, self._genes[cols], datasets=[s.name for s in specs], groups=labels, n_genes=n_genes
        )
        warn_unlabelled(str(groupby), {n: f.n_unlabelled for n, f in found.items() if f.n_unlabelled})
        warn_no_cells(obs_filter, int(sum(f.n_cells.sum() for f in found.values())))
        table.attrs[UNS_KEY] = {
            "groupby": str(groupby),
            "n_genes": n_genes,
            "left_out": [s.name for s in specs if s.name not in found],
            "measured": {name: int(m.sum()) for name, _, _, _, m in per_dataset},
            "unlabelled": {n: f.n_unlabelled for n, f in found.items()},
        }
        logg.info(f"    finished: {len(table)} rows", time=start)
        return table

    @staticmethod
    def gene_consensus(importance: pd.DataFrame, *, n_top: int = 50, missing: MissingGenes = "neutral") -> pd.DataFrame:
        """A consensus ranking of genes per group across datasets, from :meth:`gene_importance`'s table.

        Each dataset ranks its measured genes within a group; a rank is turned into a percentile
        (1 = the gene with the highest mean attribution, 0 = the lowest, ties sharing their
        average), and a gene's ``consensus_score`` is the mean of its percentiles over the
        datasets that have the group. Why this aggregation: percentiles put datasets with
        different gene panels on one scale (rank 100 of 500 measured genes is not rank 100 of
        20,000); the mean rewards genes that are high in every dataset, which is what a consensus
        is for. A robust rank aggregation (a gene's best order statistic against uniform random
        ranks) rewards genes at the top of a few datasets, and its p-values assume ranks that are
        random and independent under the null, which attributions are not (some genes carry much
        attribution everywhere). With few datasets a median moves in jumps; ``n_in_top`` gives the
        robust count instead: in how many datasets the gene is among the top ``n_top``.

        A dataset that does not measure a gene (see :meth:`gene_importance`) does not rank it last:
        with ``missing="neutral"`` (default) it counts with percentile 0.5, that of a gene in the
        middle, so it neither sinks genes a panel lacked nor lets a gene measured in one dataset
        only outrank genes high in all of them; ``missing="ignore"`` averages over the datasets
        that measure the gene. ``n_measured`` says how many did.

        Parameters
        ----------
        importance
            The whole table of :meth:`gene_importance` (not truncated with ``n_genes``, nor filtered:
            a gene without a row would look unmeasured).
        n_top
            Rank up to which a dataset counts a gene as top, for ``n_in_top``.
        missing
            ``"neutral"`` or ``"ignore"``: how a dataset that does not measure a gene counts.

        Returns
        -------
        One row per (group, gene) measured in a dataset with the group, sorted by group and
        ``consensus_rank`` (1 = best; ties by ``n_in_top``, then mean attribution, then gene
        order): ``group``, ``gene``, ``consensus_score``, ``consensus_rank``, ``n_in_top``,
        ``n_measured``, ``n_datasets`` (datasets with the group) and ``mean_attribution`` (over
        the datasets that measure the gene). ``gene -> mean_attribution`` of a group's top rows
        is a signature like :func:`scsig.get.signature`'s, for :meth:`score`.

        Examples
        --------
        >>> import tempfile, scsig as sg
        >>> adata, model = sg.datasets.toy()
        >>> sg.tl.attribute(adata, model, n_steps="auto", progress=False)
        >>> atlas = sg.Atlas.create(tempfile.mkdtemp() + "/atlas", gene_order=model.gene_order)
        >>> atlas.add(adata[::2].copy(), name="even", progress=False)
        >>> atlas.add(adata[1::2].copy(), name="odd", progress=False)
        >>> consensus = atlas.gene_consensus(atlas.gene_importance("group", progress=False), n_top=5)
        >>> top = consensus[consensus["group"] == "b"].head(5)
        >>> signature = top.set_index("gene")["mean_attribution"]  # gene -> weight
        >>> atlas.score(signature, progress=False).shape
        (60, 3)
        """
        if isinstance(n_top, bool) or not isinstance(n_top, Integral) or n_top < 1:
            msg = f"n_top must be a positive integer, got {n_top!r}."
            raise ValueError(msg)
        check_choice("missing", missing, MissingGenes)
        return consensus_table(importance, n_top=int(n_top), missing=missing)
