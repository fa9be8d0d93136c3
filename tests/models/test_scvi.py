"""scvi-tools models as attribution backends: equal to captum run on scvi-tools' own module."""

from __future__ import annotations

import logging
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import scsig as sg

scvi = pytest.importorskip("scvi")  # in the test extra (scsig[scvi]); skipped only on a bare install
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("lightning.fabric").setLevel(logging.ERROR)


def _small_data(seed: int = 0):
    adata = sg.datasets.kang_muscat()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(adata.n_obs, 240, replace=False))
    adata = adata[keep].copy()
    # a continuous covariate with a few distinct values (cells sharing them share an encoder)
    adata.obs["depth"] = np.round(np.log10(np.asarray(adata.X.sum(axis=1)).ravel()), 1)
    return adata


def _train(adata, **kwargs):
    setup = {
        k: kwargs.pop(k)
        for k in ("batch_key", "categorical_covariate_keys", "continuous_covariate_keys")
        if k in kwargs
    }
    scvi.model.SCVI.setup_anndata(adata, **setup)
    scvi.settings.seed = 0
    model = scvi.model.SCVI(adata, n_hidden=32, n_latent=6, n_layers=2, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False, batch_size=64)
    return model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """SCVI with batch and a categorical covariate in the encoder, saved to a folder too."""
    scvi.settings.verbosity = logging.ERROR
    adata = _small_data()
    vae = _train(adata, batch_key="sample_id", categorical_covariate_keys=["group_id"], encode_covariates=True)
    folder = tmp_path_factory.mktemp("scvi") / "model"
    vae.save(str(folder))
    return adata, vae, folder


@pytest.fixture(scope="module")
def trained_cont(tmp_path_factory):
    """SCVI with a continuous covariate and an embedded batch, one-hot covariates not injected deeply."""
    scvi.settings.verbosity = logging.ERROR
    adata = _small_data(1)
    vae = _train(
        adata,
        batch_key="sample_id",
        continuous_covariate_keys=["depth"],
        encode_covariates=True,
        deeply_inject_covariates=False,
        batch_representation="embedding",
        use_layer_norm="encoder",
    )
    folder = tmp_path_factory.mktemp("scvi_cont") / "model"
    vae.save(str(folder))
    return adata, vae, folder


def _covariate_tensors(vae, adata):
    """Each cell's covariates as scvi-tools' own data loader hands them to the module."""
    dl = vae._make_data_loader(adata=adata, batch_size=adata.n_obs, shuffle=False)
    batch = next(iter(dl))
    return batch["batch"], batch.get("extra_continuous_covs"), batch.get("extra_categorical_covs")


def _captum_reference(vae, adata, *, on_counts: bool, dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Integrated gradients of the self-similarity of qz.loc, run by captum on scvi-tools' module.inference.

    ``on_counts=False``: the input is log1p(counts) (what the encoder sees); it is mapped back with
    expm1 before the module, which applies its own log1p, so all covariate handling is scvi-tools'.
    ``dtype=torch.float64`` runs captum on a float64 copy of the module: float32 captum can land on the
    other side of a ReLU kink for a cell (0.23 of 1,000 on one cell here, depending on the thread count).
    """
    if dtype != torch.float32:
        import copy

        vae = copy.copy(vae)
        vae.module = copy.deepcopy(vae.module).to(dtype)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            return _captum_reference(vae, adata, on_counts=on_counts, dtype=torch.float32)
        finally:
            torch.set_default_dtype(default)
    from captum.attr import IntegratedGradients

    module = vae.module.eval()
    counts = torch.as_tensor(adata.X.toarray(), dtype=torch.get_default_dtype())
    b, cont, cat = _covariate_tensors(vae, adata)
    x = counts if on_counts else torch.log1p(counts)

    def latent(inp, b, cont, cat):
        counts_in = inp if on_counts else torch.expm1(inp)
        return module.inference(counts_in, b, cont_covs=cont, cat_covs=cat)["qz"].loc

    def target(inp, z, b, cont, cat):
        return (z * latent(inp, b, cont, cat)).abs().sum(1)

    with torch.no_grad():
        z = latent(x, b, cont, cat)
    attr = IntegratedGradients(target).attribute(
        x, baselines=torch.zeros_like(x), additional_forward_args=(z, b, cont, cat), n_steps=50
    )
    attr = attr.abs().double().numpy()
    sums = attr.sum(axis=1, keepdims=True)
    return np.divide(attr, sums, out=np.zeros_like(attr), where=sums > 0) * 1000


def _row_l1(adata, key, ref):
    return np.abs(adata.layers[key].toarray() - ref).sum(axis=1)


@pytest.mark.parametrize("engine", ["fast", "captum"])
def test_matches_captum_on_scvi_module(trained, engine):
    adata, vae, _ = trained
    model = sg.models.from_scvi(vae)
    assert model.has_covariates
    assert model.covariates.cat_keys == ["sample_id", "group_id"]
    before = adata.obs.copy()
    sg.tl.attribute(adata, model, engine=engine, key_added="attr")
    assert adata.uns["scsig"]["layers"]["attr"]["engine"] == engine
    # the fast engine is float64-exact: compare with captum in float64; the captum engine with captum as it runs
    ref = _captum_reference(vae, adata, on_counts=False, dtype=torch.float64 if engine == "fast" else torch.float32)
    l1 = _row_l1(adata, "attr", ref)
    assert l1.max() <= 1e-5 * 1000, l1.max()  # row-L1 relative to target_sum 1,000
    np.testing.assert_allclose(adata.layers["attr"].sum(axis=1).A1, 1000, rtol=1e-5)
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(adata.obs, before)


def test_auto_takes_fast_path(trained):
    adata, vae, _ = trained
    model = sg.models.from_scvi(vae)
    sub = adata[:20].copy()
    sg.tl.attribute(sub, model)
    assert sub.uns["scsig"]["layers"]["attr_ig"]["engine"] == "fast"


def test_input_model_matches_captum_on_counts(trained):
    adata, vae, _ = trained
    sub = adata[:60].copy()
    model = sg.models.from_scvi(vae, input="model")
    assert model.preprocessing.log1p is False
    sg.tl.attribute(sub, model, key_added="attr")
    assert sub.uns["scsig"]["layers"]["attr"]["engine"] == "captum"
    ref = _captum_reference(vae, sub, on_counts=True)
    assert _row_l1(sub, "attr", ref).max() <= 1e-2  # 1e-5 of target_sum


def test_saved_folder_matches_object(trained):
    adata, vae, folder = trained
    sub = adata[:80].copy()
    obj = sg.models.from_scvi(vae)
    loaded = sg.models.load(folder)
    assert type(loaded).__name__ == "ScviModel"
    assert loaded.gene_order == list(vae.adata.var_names)
    assert loaded.checksum == obj.checksum
    assert loaded.covariates.cat_levels == obj.covariates.cat_levels
    sg.tl.attribute(sub, obj, key_added="a_obj")
    sg.tl.attribute(sub, loaded, key_added="a_dir")
    np.testing.assert_array_equal(sub.layers["a_obj"].toarray(), sub.layers["a_dir"].toarray())


def test_saved_folder_needs_the_allow_list(trained):
    """The registry does not load with plain weights_only=True; scsig's allow-list reads it."""
    _, _, folder = trained
    with pytest.raises(pickle.UnpicklingError):
        torch.load(folder / "model.pt", weights_only=True)
    assert sg.models.load(folder).n_genes > 0


def test_continuous_covariate_and_batch_embedding(trained_cont):
    adata, vae, folder = trained_cont
    model = sg.models.from_scvi(vae)
    assert model.covariates.cont_keys == ["depth"]
    assert model.covariates.embed_key == "sample_id"
    assert not model.covariates.deep
    sub = adata[:80].copy()
    sg.tl.attribute(sub, model, key_added="attr")
    ref = _captum_reference(vae, sub, on_counts=False)
    assert _row_l1(sub, "attr", ref).max() <= 1e-2
    loaded = sg.models.load(folder)
    sg.tl.attribute(sub, loaded, key_added="attr_dir")
    np.testing.assert_array_equal(sub.layers["attr"].toarray(), sub.layers["attr_dir"].toarray())


def test_reference_counts_input(trained):
    """input='counts' feeds raw counts to the encoder, as sc-signature's SCVIWrapper does."""
    adata, vae, _ = trained
    model = sg.models.from_scvi(vae, input="counts")
    assert model.preprocessing.log1p is False
    sub = adata[:10]
    b, _, cat = _covariate_tensors(vae, sub)
    counts = torch.as_tensor(sub.X.toarray(), dtype=torch.float32)
    with torch.no_grad():
        want = vae.module.eval().z_encoder(counts, b, cat)[0].loc.numpy()
    np.testing.assert_allclose(model.embed_cells(sub.X, sub.obs), want, rtol=1e-5, atol=1e-6)


def test_unknown_batch_level_is_an_error(trained):
    adata, vae, _ = trained
    sub = adata[:30].copy()
    sub.obs["sample_id"] = sub.obs["sample_id"].astype(str)
    sub.obs.iloc[0, sub.obs.columns.get_loc("sample_id")] = "donor_new"
    sub.uns.pop("scsig", None)
    layers = set(sub.layers)
    with pytest.raises(ValueError, match=r"not trained on: \['donor_new'\].*known levels: \['ctrl101'"):
        sg.tl.attribute(sub, sg.models.from_scvi(vae))
    assert set(sub.layers) == layers
    assert "scsig" not in sub.uns


def test_missing_covariate_column_is_an_error(trained):
    adata, vae, _ = trained
    sub = adata[:30].copy()
    del sub.obs["group_id"]
    with pytest.raises(KeyError, match="adata.obs has no column 'group_id'"):
        sg.tl.attribute(sub, sg.models.from_scvi(vae))


def test_untrained_model_is_an_error():
    adata = _small_data()[:50].copy()
    scvi.model.SCVI.setup_anndata(adata)
    vae = scvi.model.SCVI(adata, n_hidden=16, n_latent=4)
    with pytest.raises(ValueError, match=r"never trained; call model.train\(\)"):
        sg.models.from_scvi(vae)


def test_not_an_scvi_model():
    with pytest.raises(TypeError, match="z_encoder"):
        sg.models.from_scvi(torch.nn.Linear(3, 2))


def test_no_gene_overlap_is_an_error(trained):
    adata, vae, _ = trained
    sub = adata[:20].copy()
    sub.var_names = [f"other{i}" for i in range(sub.n_vars)]
    with pytest.raises(ValueError, match="Only 0 of the model's 1267 genes are in adata.var_names"):
        sg.tl.attribute(sub, sg.models.from_scvi(vae))


def test_unsafe_pickle_needs_opt_in(tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"model_state_dict": {}, "attr_dict": {"x": argparse_namespace()}}, folder / "model.pt")
    with pytest.raises(pickle.UnpicklingError, match="allow_pickle=True"):
        sg.models.load(folder)


def argparse_namespace():
    import argparse

    return argparse.Namespace(a=1)


def test_importing_scsig_does_not_import_scvi():
    code = "import sys, scsig; print('scvi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_scanvi(trained):
    adata = trained[0]
    data = adata.copy()
    data.obs["label"] = data.obs["cluster_id"].astype(str)
    data.obs.loc[data.obs_names[::2], "label"] = "Unknown"
    scvi.model.SCANVI.setup_anndata(data, labels_key="label", unlabeled_category="Unknown", batch_key="sample_id")
    scvi.settings.seed = 0
    lvae = scvi.model.SCANVI(data, n_hidden=32, n_latent=6, encode_covariates=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lvae.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False, batch_size=64)
    model = sg.models.from_scvi(lvae)
    assert model.model_class == "SCANVI"
    assert model.covariates.cat_keys == ["sample_id"]
    sub = data[:40].copy()
    sg.tl.attribute(sub, model, key_added="attr")
    ref = _captum_reference(lvae, sub, on_counts=False)
    assert _row_l1(sub, "attr", ref).max() <= 1e-2


def test_embed_needs_covariates(trained):
    adata, vae, _ = trained
    model = sg.models.from_scvi(vae)
    x = np.log1p(adata.X[:5].toarray())
    with pytest.raises(ValueError, match=r"embed_cells\(x, adata.obs\)"):
        model.embed(x)
    assert model.embed_cells(x, adata.obs.iloc[:5]).shape == (5, 6)
