"""Random-weight encoders with non-trivial BatchNorm statistics and PReLU slopes, and sparse inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse

import scsig as sg
from scsig.datasets._toy import randomize_batchnorm
from scsig.models import FoundationModel, SCimilarityEncoder


def perturb(encoder: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BatchNorm running statistics and affine parameters; PReLU slopes of both signs."""
    return randomize_batchnorm(encoder, prelu=True, generator=torch.Generator().manual_seed(seed)).eval()


def scimilarity_model(
    n_genes: int, hidden, latent: int, seed: int = 0, *, per_unit_prelu: bool = False, genes=None
) -> FoundationModel:
    torch.manual_seed(seed)
    enc = SCimilarityEncoder(n_genes, hidden, latent)
    if per_unit_prelu:  # PReLU with one slope per unit (the published encoder has one per layer)
        for block in enc.network[:-1]:
            block[3] = torch.nn.PReLU(block[1].out_features)
    genes = genes if genes is not None else [f"g{i}" for i in range(n_genes)]
    return FoundationModel(perturb(enc, seed), genes, name="random")


def sparse_input(n_cells: int, n_genes: int, density: float = 0.08, seed: int = 0) -> sparse.csr_matrix:
    """log1p-normalized-looking sparse cells (cells x model genes), float32 CSR."""
    rng = np.random.default_rng(seed)
    x = sparse.random(n_cells, n_genes, density=density, format="csr", random_state=rng, dtype=np.float32)
    x.data = np.log1p(rng.poisson(2.0, x.nnz) + rng.random(x.nnz) * 3).astype(np.float32)
    return x


@pytest.fixture
def small_scim():
    return scimilarity_model(300, (32, 24), 8, seed=3)


@pytest.fixture
def toy_counts():
    """Raw counts and a SCimilarity-architecture model over them (not the toy model: two hidden layers)."""
    adata, _ = sg.datasets.toy(n_obs=50, n_vars=60)
    genes = [*adata.var_names[::-1], "absent1", "absent2"]
    return adata, scimilarity_model(len(genes), (24, 16), 8, seed=5, genes=genes)


@pytest.fixture
def helpers():
    """The helpers above (test modules cannot import conftest under --import-mode=importlib)."""
    from types import SimpleNamespace

    return SimpleNamespace(perturb=perturb, scimilarity_model=scimilarity_model, sparse_input=sparse_input)
