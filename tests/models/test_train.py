from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scsig as sg
from scsig.models._registry import BUNDLED, SAFETENSORS_FILE, bundled_path
from scsig.models._train_data import select_genes
from scsig.models._train_losses import _normalize, contrastive_loss

from .conftest import FAST


def test_train_supervised_contract(toy_counts):
    before = toy_counts.copy()
    model = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, **FAST)
    assert isinstance(model, sg.models.FoundationModel)
    assert isinstance(model.encoder, sg.models.SCimilarityEncoder)
    assert not model.encoder.training
    assert model.gene_order == toy_counts.var_names.tolist()
    assert model.labels == {0: "a", 1: "b"}
    assert model.preprocessing == sg.models.Preprocessing(target_sum=1e4, log1p=True)
    assert model.training["epochs"] == 3
    assert len(model.training["loss"]) == 3
    assert all(np.isfinite(model.training["loss"]))
    emb = model.embed(sg.pp.prepare(toy_counts, model).X)
    assert emb.shape == (80, 8)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # the input is not changed
    assert (toy_counts.X != before.X).nnz == 0
    pd.testing.assert_frame_equal(toy_counts.obs, before.obs)


def test_train_is_deterministic_and_leaves_global_rng(toy_counts):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, seed=5, **FAST)
    assert torch.equal(torch.get_rng_state(), state)
    b = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, seed=5, **FAST)
    c = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, seed=6, **FAST)
    assert a.checksum == b.checksum
    assert a.training["loss"] == b.training["loss"]
    assert a.checksum != c.checksum


def _centroid_accuracy(model, adata):
    """Fraction of cells whose embedding is closest (cosine) to their own group's centroid."""
    emb = model.embed(sg.pp.prepare(adata, model).X)
    group = adata.obs["group"].to_numpy()
    cent = np.stack([emb[group == g].mean(0) for g in ("a", "b")])
    return float(np.mean(np.array(["a", "b"])[np.argmax(emb @ cent.T, axis=1)] == group))


def test_training_learns_the_groups(toy_counts):
    # without augmentation the objective is plain metric learning on the groups, which a random net does not solve
    opts = {"labels": "group", "n_top_genes": None, "hidden": (32,), "latent": 8, "batch_size": 40, "progress": False}
    opts.update(thinning=(1.0, 1.0), gene_dropout=0.0, dropout=0.0, input_dropout=0.0)
    untrained = sg.models.train_encoder(toy_counts, epochs=1, lr=1e-12, **opts)
    model = sg.models.train_encoder(toy_counts, epochs=40, lr=3e-3, **opts)
    loss = model.training["loss"]
    assert np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.5
    assert _centroid_accuracy(untrained, toy_counts) < 0.9
    assert _centroid_accuracy(model, toy_counts) >= 0.98


def test_self_supervised_and_missing_labels(toy_counts):
    model = sg.models.train_encoder(toy_counts, n_top_genes=None, **FAST)
    assert model.labels is None
    assert model.training["labels"].startswith("none")
    toy_counts.obs["partial"] = pd.Categorical(np.where(np.arange(80) % 3 == 0, None, toy_counts.obs["group"]))
    model = sg.models.train_encoder(toy_counts, labels="partial", n_top_genes=None, **FAST)
    assert model.labels == {0: "a", 1: "b"}
    assert np.isfinite(model.training["loss"]).all()


def test_explicit_gene_order_with_missing_genes(toy_counts):
    order = ["g5", "absent", "g1", "g0", "g7"]
    model = sg.models.train_encoder(toy_counts, gene_order=order, **FAST)
    assert model.gene_order == order
    assert model.training["n_genes_in_data"] == 4
    # the absent gene's input is always 0, so its first-layer weights get no data gradient
    assert model.encoder.network[0][1].weight.shape == (16, 5)


def test_gene_selection(toy_counts):
    x = toy_counts.X.toarray()
    x[:, 3] = 0
    x[:2, 4] = 1
    x[2:, 4] = 0
    toy_counts.X = sparse.csr_matrix(x)
    detected = select_genes(toy_counts, min_cells=3, n_top_genes=None)
    assert "g3" not in detected
    assert "g4" not in detected
    assert len(detected) == 28
    top = select_genes(toy_counts, min_cells=3, n_top_genes=10)
    assert len(top) == 10
    assert set(top) <= set(detected)
    assert top == [g for g in toy_counts.var_names if g in top]  # data order
    model = sg.models.train_encoder(toy_counts, n_top_genes=10, **FAST)
    assert model.gene_order == top


def test_batchnorm_statistics_describe_unaugmented_cells(toy_counts):
    model = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, **FAST)
    x = torch.as_tensor(toy_counts.X.toarray(), dtype=torch.float32)
    linear, norm = model.encoder.network[0][1], model.encoder.network[0][2]
    with torch.no_grad():
        pre = linear(_normalize(x, 1e4))
    torch.testing.assert_close(norm.running_mean, pre.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norm.running_var, pre.var(0, unbiased=True), rtol=1e-3, atol=1e-5)


def test_contrastive_loss_by_hand():
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.2], [0.1, 1.0]]), dim=1)
    ids = torch.tensor([0, 1, 0, 1])
    tau = 0.5
    sim = (z @ z.T / tau).numpy()
    expected = []
    for i in range(4):
        others = [a for a in range(4) if a != i]
        log_den = np.log(np.sum(np.exp(sim[i, others])))
        pos = [p for p in others if ids[p] == ids[i]]
        expected.append(-np.mean([sim[i, p] - log_den for p in pos]))
    got = contrastive_loss(z, ids, tau)
    np.testing.assert_allclose(float(got), np.mean(expected), rtol=1e-5)
    # a pair with one positive each: rows without positives are left out
    lone = contrastive_loss(z, torch.tensor([0, 1, 0, 2]), tau)
    assert np.isfinite(float(lone))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"labels": "nope"}, KeyError, "not a column"),
        ({"thinning": (0.0, 1.0)}, ValueError, "thinning"),
        ({"gene_dropout": 1.0}, ValueError, "gene_dropout"),
        ({"batch_size": 1}, ValueError, "batch_size"),
    ],
)
def test_bad_arguments(toy_counts, kwargs, error, match):
    with pytest.raises(error, match=match):
        sg.models.train_encoder(toy_counts, n_top_genes=None, **{**FAST, **kwargs})


def test_single_label_and_non_counts_rejected(toy_counts):
    toy_counts.obs["one"] = "x"
    with pytest.raises(ValueError, match="at least 2"):
        sg.models.train_encoder(toy_counts, labels="one", n_top_genes=None, **FAST)
    toy_counts.X = sparse.csr_matrix(toy_counts.X, dtype=np.float32) * 0.5
    with pytest.raises(ValueError, match="raw counts"):
        sg.models.train_encoder(toy_counts, n_top_genes=None, **FAST)


def test_save_and_load_both_formats(tmp_path, toy_counts):
    model = sg.models.train_encoder(toy_counts, labels="group", n_top_genes=None, **FAST)
    x = sg.pp.prepare(toy_counts, model).X
    ref = model.embed(x)
    model.save(tmp_path / "ckpt")
    np.testing.assert_allclose(sg.models.load(tmp_path / "ckpt").embed(x), ref, rtol=1e-6, atol=1e-7)
    sg.models.save_safetensors(model, tmp_path / "st32")
    loaded = sg.models.load(tmp_path / "st32")
    assert loaded.labels == {0: "a", 1: "b"}
    assert loaded.gene_order == model.gene_order
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(loaded.encoder.state_dict()[k], v, rtol=0, atol=0)
    sg.models.save_safetensors(model, tmp_path / "st16", dtype="float16", metadata={"note": "x"})
    half = sg.models.load(tmp_path / "st16")
    assert half.encoder.network[0][1].weight.dtype == torch.float32
    np.testing.assert_allclose(half.embed(x), ref, atol=5e-3)
    assert (tmp_path / "st16" / SAFETENSORS_FILE).stat().st_size < (tmp_path / "st32" / SAFETENSORS_FILE).stat().st_size
    from safetensors import safe_open

    with safe_open(str(tmp_path / "st16" / SAFETENSORS_FILE), framework="pt") as fh:
        header = json.loads(fh.metadata()["scsig"])
    assert header == {"format": "scsig-scimilarity", "dtype": "float16", "name": "trained-encoder", "note": "x"}
    # saving the same model again gives identical bytes
    sg.models.save_safetensors(model, tmp_path / "st16b", dtype="float16", metadata={"note": "x"})
    assert (tmp_path / "st16" / SAFETENSORS_FILE).read_bytes() == (tmp_path / "st16b" / SAFETENSORS_FILE).read_bytes()
    sizes = json.loads((tmp_path / "st16" / "layer_sizes.json").read_text())
    assert sizes["network.0.1.weight"] == [16, 30]
    with pytest.raises(ValueError, match="dtype"):
        sg.models.save_safetensors(model, tmp_path / "bad", dtype="int8")
    with pytest.raises(TypeError, match="SCimilarityEncoder"):
        sg.models.save_safetensors(sg.models.from_module(torch.nn.Linear(30, 4), model.gene_order), tmp_path / "x")


def test_unknown_model_name_lists_known_names():
    with pytest.raises(FileNotFoundError, match="pbmc-demo"):
        sg.models.load("no-such-model")


def test_registry_lists_bundled_models():
    frame = sg.models.registry()
    assert set(frame.index) == set(BUNDLED)
    assert {"description", "default_target", "path", "installed"} <= set(frame.columns)
    assert frame.loc["pbmc-demo", "default_target"] == "embedding_distance"


DEMO = bundled_path("pbmc-demo")
needs_demo = pytest.mark.skipif(not (DEMO / SAFETENSORS_FILE).is_file(), reason="bundled demo model not built")
KANG_ISGS = ["ISG15", "IFI6", "IFIT1", "IFIT2", "IFIT3", "MX1", "ISG20", "IFITM3", "OAS1", "LY6E", "IFI44L", "RSAD2"]


@needs_demo
def test_demo_model_files_and_provenance():
    import hashlib

    model = sg.models.load("pbmc-demo")
    assert model.name == "pbmc-demo"
    assert model.source == str(DEMO)
    assert model.n_genes == len((DEMO / "gene_order.tsv").read_text().split("\n")) - 1
    assert set(model.labels.values()) >= {"CD4 T", "CD14 Mono", "B", "CD8 T", "NK"}
    assert sum(f.stat().st_size for f in DEMO.iterdir()) < 5e6
    prov = json.loads((DEMO / "provenance.json").read_text())
    weights = (DEMO / SAFETENSORS_FILE).read_bytes()
    assert prov["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert prov["gene_order"]["n_genes"] == model.n_genes
    assert prov["seed"] == 0
    assert prov["script"] == "scripts/train_demo_model.py"
    assert (DEMO / "README.md").is_file()
    assert sg.models.registry().loc["pbmc-demo", "installed"]


@needs_demo
def test_demo_model_scores_interferon_response_on_kang():
    """The promise of the shipped model: IG scores of 12 ISGs separate IFN-beta stimulated from control cells."""
    from sklearn.metrics import roc_auc_score

    adata = sg.datasets.kang_ifnb()
    sg.tl.attribute(adata, "pbmc-demo", progress=False)
    assert adata.uns["scsig"]["layers"]["attr_ig"]["model"]["name"] == "pbmc-demo"
    sg.tl.score(adata, KANG_ISGS)
    stim = (adata.obs["stim"] == "STIM").to_numpy()
    assert roc_auc_score(stim, adata.obs["score"]) >= 0.9
    for cell_type in adata.obs["seurat_annotations"].cat.categories:
        m = (adata.obs["seurat_annotations"] == cell_type).to_numpy()
        assert roc_auc_score(stim[m], adata.obs["score"][m]) >= 0.8, cell_type


@needs_demo
def test_demo_model_never_saw_kang_cells():
    """pbmc-demo was trained on pbmc3k's QC'd cells only, and the script's muscat variant leaves out kang_ifnb."""
    import importlib.util

    prov = json.loads((DEMO / "provenance.json").read_text())
    assert prov["training"]["n_cells"] == prov["data"]["n_cells_after_qc"]
    assert not prov.get("more_data")
    script = Path(__file__).resolve().parents[2] / "scripts" / "train_demo_model.py"
    spec = importlib.util.spec_from_file_location("train_demo_model", script)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    muscat, info = demo.muscat_without_ifnb_barcodes()
    ifnb = {name.split(".")[0] for name in sg.datasets.kang_ifnb().obs_names}
    assert not ifnb & {name.split("-")[0] for name in muscat.obs_names}
    assert info["n_cells_left_out_shared_with_kang_ifnb"] > 0
    assert info["n_cells_used"] == muscat.n_obs
    assert muscat.obs["cell_type"].notna().all()


@needs_demo
def test_demo_model_attributes_its_default_target_and_keeps_it_when_saved(tmp_path):
    """pbmc-demo's default target is embedding_distance (recorded, equal to asking for it); a saved copy keeps it."""
    model = sg.models.load("pbmc-demo")
    assert model.default_target == "embedding_distance"
    kang = sg.datasets.kang_ifnb()[:40].copy()
    default, explicit, published = kang.copy(), kang.copy(), kang.copy()
    sg.tl.attribute(default, model, n_steps=8, progress=False)
    sg.tl.attribute(explicit, model, target="embedding_distance", n_steps=8, progress=False)
    sg.tl.attribute(published, model, target="self_similarity", n_steps=8, progress=False)
    assert default.uns["scsig"]["layers"]["attr_ig"]["target"] == "embedding_distance"
    assert published.uns["scsig"]["layers"]["attr_ig"]["target"] == "self_similarity"
    np.testing.assert_array_equal(default.layers["attr_ig"].toarray(), explicit.layers["attr_ig"].toarray())
    assert not np.allclose(default.layers["attr_ig"].toarray(), published.layers["attr_ig"].toarray())
    # a saved copy attributes as the original; a model saved with the published default stays so
    copy = sg.models.load(sg.models.save_safetensors(model, tmp_path / "copy"))
    assert copy.default_target == "embedding_distance"
    model.default_target = "self_similarity"
    assert sg.models.load(sg.models.save_safetensors(model, tmp_path / "plain")).default_target == "self_similarity"
    # the bundled file itself carries no target: the registry entry gives it
    assert sg.models.load(DEMO).default_target == "self_similarity"
