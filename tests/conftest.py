"""Shared fixtures: small seeded data and tiny CPU models, SCimilarity-format folders in tmp_path."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

import scsig as sg
from scsig.datasets._toy import randomize_batchnorm as _randomize_batchnorm

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(autouse=True)
def _quiet_progress(monkeypatch):
    monkeypatch.setattr(sg.settings, "progress", False)
    monkeypatch.setattr(sg.settings, "autoshow", False)


@pytest.fixture
def toy():
    """(adata, model) from sg.datasets.toy()."""
    return sg.datasets.toy()


def randomize_batchnorm(encoder: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    _randomize_batchnorm(encoder, generator=torch.Generator().manual_seed(seed))


def write_scimilarity_folder(folder: Path, genes: list[str], hidden=(32, 16), latent=8, seed=0, labels=True) -> Path:
    """Write a SCimilarity-format model folder the way the published tool lays it out (not via scsig)."""
    torch.manual_seed(seed)
    layers = []
    width = len(genes)
    for h in hidden:
        layers.append(
            torch.nn.Sequential(
                torch.nn.Dropout(0.4), torch.nn.Linear(width, h), torch.nn.BatchNorm1d(h), torch.nn.PReLU()
            )
        )
        width = h
    layers.append(torch.nn.Linear(width, latent))
    net = torch.nn.Module()
    net.network = torch.nn.ModuleList(layers)
    randomize_batchnorm(net, seed)
    folder.mkdir(parents=True, exist_ok=True)
    state = net.state_dict()
    torch.save({"state_dict": state}, folder / "encoder.ckpt")
    (folder / "gene_order.tsv").write_text("\n".join(genes) + "\n")
    (folder / "layer_sizes.json").write_text(json.dumps({k: list(v.shape) for k, v in state.items()}))
    if labels:
        (folder / "label_ints.csv").write_text(",0\n0,T cell\n1,B cell\n")
    return folder


@pytest.fixture
def scim_folder(tmp_path, toy):
    """A SCimilarity-format folder over the toy data's genes (plus genes the data lacks)."""
    adata, _ = toy
    rng = np.random.default_rng(1)
    genes = list(rng.permutation(adata.var_names.tolist())) + ["MISSING1", "MISSING2", "MISSING3"]
    return write_scimilarity_folder(tmp_path / "model", genes)


@pytest.fixture
def make_scim_folder():
    """The folder writer, for tests that need other shapes."""
    return write_scimilarity_folder
