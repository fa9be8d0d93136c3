from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

import scsig as sg
from scsig.models import SCimilarityEncoder


def test_load_scimilarity_folder(scim_folder):
    model = sg.models.load(scim_folder)
    genes = (scim_folder / "gene_order.tsv").read_text().split()
    assert model.gene_order == genes
    assert isinstance(model.encoder, SCimilarityEncoder)
    assert model.encoder.hidden_dims == [32, 16]
    assert model.encoder.latent_dim == 8
    assert model.labels == {0: "T cell", 1: "B cell"}
    assert not model.encoder.training
    assert model.gene_order_hash == sg.models.gene_order_hash(genes)
    # the loaded weights are exactly the saved ones
    state = torch.load(scim_folder / "encoder.ckpt", weights_only=True)["state_dict"]
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, state[k], rtol=0, atol=0)


def test_embedding_is_l2_normalized(scim_folder):
    model = sg.models.load(scim_folder)
    x = np.random.default_rng(0).random((5, model.n_genes)).astype(np.float32)
    emb = model.embed(x)
    assert emb.shape == (5, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_save_roundtrip(tmp_path, toy):
    _, model = toy
    model.save(tmp_path / "m")
    again = sg.models.load(tmp_path / "m")
    x = np.random.default_rng(0).random((4, model.n_genes)).astype(np.float32)
    np.testing.assert_allclose(again.embed(x), model.embed(x), rtol=1e-6)


def test_layer_sizes_sorted_numerically(tmp_path, make_scim_folder):
    """More than ten blocks: string sorting of 'network.10' before 'network.2' must not break loading."""
    genes = [f"g{i}" for i in range(12)]
    folder = make_scim_folder(tmp_path / "deep", genes, hidden=[6] * 11, latent=3, labels=False)
    model = sg.models.load(folder)
    assert model.encoder.hidden_dims == [6] * 11
    assert model.labels is None


def test_pickled_checkpoint_needs_opt_in(tmp_path, scim_folder):
    ckpt = torch.load(scim_folder / "encoder.ckpt", weights_only=True)
    ckpt["hparams"] = argparse.Namespace(lr=0.1)  # an arbitrary object: not loadable with weights_only
    torch.save(ckpt, scim_folder / "encoder.ckpt")
    with pytest.raises(ValueError, match="allow_pickle=True"):
        sg.models.load(scim_folder)
    assert sg.models.load(scim_folder, allow_pickle=True).n_genes > 0


def test_mismatched_folder_files(scim_folder):
    (scim_folder / "gene_order.tsv").write_text("a\nb\n")
    with pytest.raises(ValueError, match="do not belong together"):
        sg.models.load(scim_folder)


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="encoder.ckpt"):
        sg.models.load(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        sg.models.load(tmp_path / "nope.ckpt")
    (tmp_path / "scf").mkdir()
    (tmp_path / "scf" / "models.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"is a file; sg.models.load takes the model's folder: pass '.*scf'"):
        sg.models.load(tmp_path / "scf" / "models.ckpt")


def test_layer_sizes_json_optional(scim_folder):
    sizes = json.loads((scim_folder / "layer_sizes.json").read_text())
    (scim_folder / "layer_sizes.json").unlink()
    model = sg.models.load(scim_folder)
    assert model.encoder.hidden_dims == [sizes[k][0] for k in sorted(sizes) if k.endswith("1.weight")]


def test_from_module():
    genes = [f"g{i}" for i in range(10)]
    net = torch.nn.Sequential(torch.nn.Linear(10, 4), torch.nn.Tanh())
    model = sg.models.from_module(net, genes, preprocess="none", name="tiny")
    assert model.preprocessing.target_sum is None
    assert not model.preprocessing.requires_counts
    assert model.describe()["name"] == "tiny"
    with pytest.raises(ValueError, match="preprocess"):
        sg.models.from_module(net, genes, preprocess="zscore")
    with pytest.raises(ValueError, match="duplicate"):
        sg.models.from_module(net, ["a", "a"])
