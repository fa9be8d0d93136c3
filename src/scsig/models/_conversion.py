r"""The ortholog conversion of a cross-species model: the matrix, and folding it into an encoder.

See :mod:`scsig.models._cross_species` for where the conversion sits. :func:`conversion_matrix`
builds :math:`C` (model genes x source genes) from an ortholog table; :func:`fold_conversion` puts it
into the encoder's first Linear, :math:`W_1 \to W_1 C`, or in front of an encoder without one.
"""

from __future__ import annotations

import copy as _copy
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from ._orthologs import OrthologTable

__all__ = ["RULES", "conversion_matrix", "fold_conversion"]

RULES = ("mean", "split")


def conversion_matrix(
    table: OrthologTable, model_genes: Sequence[str], *, rule: Literal["mean", "split"] = "mean"
) -> tuple[sparse.csr_matrix, list[str]]:
    """The conversion (model genes x source genes, CSR float64) and the source gene order.

    The source genes are those with an ortholog among ``model_genes``, ordered by the first model
    gene they reach. ``rule`` says what several orthologs do: ``"mean"`` -- a model gene receives
    the mean of its source orthologs, and a source gene with several model orthologs feeds each in
    full (rows sum to 1); ``"split"`` -- a source gene's value is split evenly between its model
    orthologs and a model gene receives the sum of its shares (columns sum to 1). One-to-one pairs
    have weight 1 under both rules.
    """
    if rule not in RULES:
        msg = f"rule must be one of {list(RULES)}, not {rule!r}."
        raise ValueError(msg)
    model_index = pd.Index(model_genes)
    pairs = table.pairs.assign(row=model_index.get_indexer(table.pairs["target"]))
    pairs = pairs[pairs["row"] >= 0].sort_values("row", kind="stable")
    source_genes = list(dict.fromkeys(pairs["source"]))
    if not source_genes:
        msg = (
            f"None of the model's {len(model_index)} genes (e.g. {list(model_index[:3])}) is a "
            f"{table.target_species} gene of the ortholog table {table.name!r} (e.g. "
            f"{table.pairs['target'].head(3).tolist()}). Check that the model is a {table.target_species} model "
            "and that the table uses the same kind of gene names (symbols vs Ensembl IDs) as the model."
        )
        raise ValueError(msg)
    col = pd.Index(source_genes).get_indexer(pairs["source"])
    row = pairs["row"].to_numpy()
    if rule == "mean":
        weights = 1.0 / np.bincount(row, minlength=len(model_index))[row]
    else:
        weights = 1.0 / np.bincount(col, minlength=len(source_genes))[col]
    conv = sparse.csr_matrix((weights.astype(np.float64), (row, col)), shape=(len(model_index), len(source_genes)))
    conv.sort_indices()
    return conv, source_genes


class _SparseConversion:
    """Builds the modules that put a conversion in front of an encoder."""

    @staticmethod
    def first_linear(encoder: torch.nn.Module) -> tuple[torch.nn.Module, str] | None:
        """The encoder's first module if it is a Linear (after Dropout/Identity), with its qualified name."""
        from torch import nn

        from ._scimilarity import SCimilarityEncoder

        if isinstance(encoder, SCimilarityEncoder):
            block = encoder.network[0]
            modules = list(block.named_children()) if isinstance(block, nn.Sequential) else [("", block)]
            prefix = "network.0"
        elif type(encoder).forward is nn.Sequential.forward:
            modules, prefix = list(encoder.named_children()), ""
        else:
            return None
        for name, module in modules:
            if isinstance(module, nn.Dropout | nn.AlphaDropout | nn.Identity):
                continue
            if isinstance(module, nn.Linear):
                full = f"{prefix}.{name}".strip(".") if name else prefix
                return module, full
            return None
        return None


def fold_conversion(encoder: torch.nn.Module, conversion: sparse.spmatrix) -> torch.nn.Module:
    """A copy of ``encoder`` whose first Linear takes source genes: weight ``W1 @ conversion`` (computed in float64).

    Encoders without a leading Linear get the conversion as a first module instead (captum path).
    """
    import torch
    from torch import nn

    from ._scimilarity import SCimilarityEncoder

    conv = sparse.csr_matrix(conversion, dtype=np.float64)
    found = _SparseConversion.first_linear(encoder)
    if found is None:
        return nn.Sequential(_conversion_module(conv), _copy.deepcopy(encoder)).eval()
    first, path = found
    w1 = first.weight.detach().cpu().double().numpy()
    folded = np.asarray((conv.T @ w1.T).T, dtype=np.float32)  # hidden x source genes
    out = _copy.deepcopy(encoder)
    new = nn.Linear(conv.shape[1], first.out_features, bias=first.bias is not None)
    with torch.no_grad():
        new.weight.copy_(torch.from_numpy(np.ascontiguousarray(folded)))
        if first.bias is not None:
            new.bias.copy_(first.bias.detach().cpu())
    parent = out
    *parents, leaf = path.split(".")
    for part in parents:
        parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
    if leaf.isdigit():
        parent[int(leaf)] = new
    else:
        setattr(parent, leaf, new)
    if isinstance(out, SCimilarityEncoder):
        out.n_genes = conv.shape[1]
    return out.eval()


def _conversion_module(conv: sparse.csr_matrix) -> torch.nn.Module:
    import torch
    from torch import nn

    class ConversionLayer(nn.Module):
        """``x -> x @ C.T`` with a sparse conversion ``C`` (model genes x source genes)."""

        def __init__(self) -> None:
            super().__init__()
            coo = conv.tocoo()
            self.register_buffer("rows", torch.as_tensor(coo.row, dtype=torch.int64))
            self.register_buffer("cols", torch.as_tensor(coo.col, dtype=torch.int64))
            self.register_buffer("weights", torch.as_tensor(coo.data, dtype=torch.float32))
            self.n_out = conv.shape[0]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = x.new_zeros((x.shape[0], self.n_out))
            return out.index_add(1, self.rows, x[:, self.cols] * self.weights)

    return ConversionLayer()
