"""``sg.datasets.toy``: seeded synthetic counts and a tiny SCimilarity-architecture model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

if TYPE_CHECKING:
    import torch

    from ..models import FoundationModel

__all__ = ["randomize_batchnorm", "toy"]


def randomize_batchnorm(
    encoder: torch.nn.Module, *, prelu: bool = False, generator: torch.Generator | None = None
) -> torch.nn.Module:
    """Give an encoder's BatchNorm layers non-trivial running statistics and affine parameters, in place.

    Freshly built BatchNorm layers are the identity in eval mode, which would hide mistakes in how
    they are folded or applied. Draws from ``generator``, or from torch's global generator (seed it
    first). With ``prelu``, PReLU slopes are drawn from [-0.2, 0.5], so both signs occur.
    """
    import torch

    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.5, 0.5, generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.2, 0.2, generator=generator)
            elif prelu and isinstance(module, torch.nn.PReLU):
                module.weight.uniform_(-0.2, 0.5, generator=generator)
    return encoder


def toy(
    n_obs: int = 60, n_vars: int = 40, *, hidden: tuple[int, ...] = (16,), latent: int = 8, seed: int = 0
) -> tuple[AnnData, FoundationModel]:
    """A small seeded AnnData of raw counts and a random-weight SCimilarity-architecture model.

    For examples and tests; it takes well under a second. The model's gene order is the data's
    genes plus two it lacks, in another order, so that alignment is exercised. BatchNorm running
    statistics are set to non-trivial values.

    Parameters
    ----------
    n_obs
        Cells.
    n_vars
        Genes, named ``g0``, ``g1``, ...
    hidden
        Hidden layer widths of the model.
    latent
        Embedding size.
    seed
        Random seed.

    Returns
    -------
    ``(adata, model)``: counts in ``X`` (CSR int32), ``obs["group"]`` with two groups; the model.

    Examples
    --------
    >>> import scsig as sg
    >>> adata, model = sg.datasets.toy()
    >>> adata.shape, model.n_genes
    ((60, 40), 42)
    """
    import torch

    from ..models import FoundationModel
    from ..models._scimilarity import SCimilarityEncoder

    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.6, 2.0, size=(n_obs, n_vars))
    group = np.where(np.arange(n_obs) < n_obs // 2, "a", "b")
    rate[group == "b", : max(1, n_vars // 8)] *= 6
    counts = rng.poisson(rate).astype(np.int32)
    genes = [f"g{i}" for i in range(n_vars)]
    adata = AnnData(
        X=sparse.csr_matrix(counts),
        obs=pd.DataFrame({"group": pd.Categorical(group)}, index=[f"cell{i}" for i in range(n_obs)]),
        var=pd.DataFrame(index=genes),
    )
    order = [*genes[::-1][: n_vars // 2], "absent1", *genes[::-1][n_vars // 2 :], "absent2"]
    torch.manual_seed(seed)
    enc = randomize_batchnorm(SCimilarityEncoder(len(order), hidden, latent))
    model = FoundationModel(enc, order, name="toy")
    return adata, model
