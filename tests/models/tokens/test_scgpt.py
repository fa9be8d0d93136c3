"""scGPT: the published folder layout, the expected binning and bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import scsig as sg
from scsig.models._scgpt import ScGPTEncoder, expected_bins


def _random_bins(values: np.ndarray, n_bins: int, rng: np.random.Generator, n_draws: int) -> np.ndarray:
    """``n_draws`` runs of scGPT's published binning of one cell's expressed values, random tie-breaking included."""
    edges = np.quantile(values, np.linspace(0, 1, n_bins - 1))
    left = np.digitize(values, edges)
    right = np.digitize(values, edges, right=True)
    return np.ceil(rng.random((n_draws, values.size)) * (right - left) + left)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expected_bins_are_the_mean_of_the_random_binning(seed):
    rng = np.random.default_rng(seed)
    values = np.log1p(rng.poisson(rng.gamma(0.5, 3.0, size=80)) + 1.0)  # many ties, as in counts
    draws = _random_bins(values, 11, rng, 20000).mean(axis=0)
    expected = expected_bins(values, 11)
    assert len(np.unique(values)) < values.size  # ties present
    assert not np.allclose(expected, np.round(expected))  # some values lie on bin edges
    np.testing.assert_allclose(expected, draws, atol=0.05)
    assert expected.min() >= 1
    assert expected.max() <= 10


def test_expected_bins_do_not_depend_on_gene_order():
    rng = np.random.default_rng(3)
    values = rng.poisson(3.0, size=50) + 1.0
    perm = rng.permutation(50)
    np.testing.assert_array_equal(expected_bins(values[perm], 51), expected_bins(values, 51)[perm])


def test_loads_the_published_layout(tmp_path, scgpt_folder):
    genes = scgpt_folder(tmp_path / "m", n_genes=12, flash=True)
    model = sg.models.load(tmp_path / "m")
    assert isinstance(model.encoder, ScGPTEncoder)
    assert sorted(model.gene_order) == sorted(genes)
    vocab = json.loads((tmp_path / "m" / "vocab.json").read_text())
    assert [vocab[g] for g in model.gene_order] == sorted(vocab[g] for g in genes)  # vocabulary-id order
    # the Wqkv weights became the attention's in_proj weights
    raw = torch.load(tmp_path / "m" / "best_model.pt", weights_only=True)
    torch.testing.assert_close(
        model.encoder.transformer_encoder.layers[1].self_attn.in_proj_weight,
        raw["transformer_encoder.layers.1.self_attn.Wqkv.weight"],
    )
    emb = model.embed(np.eye(12, dtype=np.float32)[:3] * 5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_embedding_matches_a_reference_nn_transformer(tmp_path, scgpt_folder):
    """The hand-written attention equals torch's TransformerEncoderLayer on the same (unpadded) tokens."""
    scgpt_folder(tmp_path / "m", n_genes=12)
    enc = sg.models.load(tmp_path / "m").encoder.double()
    genes = torch.tensor([[1, 4, 7, 9]])
    vals = torch.tensor([[3.0, 1.0, 2.5, 7.0]], dtype=torch.float64)
    ours = enc.embed_tokens(genes, vals, torch.zeros_like(genes, dtype=torch.bool), torch.zeros((1, 0)))
    ids = torch.cat([torch.tensor([[enc.cls_id]]), enc.gene_token_ids[genes]], dim=1)
    h = enc.encoder(ids) + enc.value_encoder(torch.cat([torch.tensor([[-2.0]], dtype=torch.float64), vals], dim=1))
    for layer in enc.transformer_encoder.layers:
        h = layer(h)
    z = h[:, 0] / h[:, 0].norm(dim=1, keepdim=True)
    torch.testing.assert_close(ours, z, rtol=1e-10, atol=1e-12)


def test_missing_and_extra_files(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5)
    (tmp_path / "m" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match=r"holds files an scGPT folder does not: \['notes.txt'\]"):
        sg.models.load(tmp_path / "m")
    (tmp_path / "m" / "best_model.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"\['best_model.pt'\] missing"):
        sg.models.load(tmp_path / "m")


def test_unknown_config_field_is_named(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5, extra_args={"use_rotary": True})
    with pytest.raises(ValueError, match=r"does not know: \['use_rotary'\]"):
        sg.models.load(tmp_path / "m")
    from scsig.models._scgpt import load_scgpt

    assert load_scgpt(tmp_path / "m", strict_config=False).n_genes == 5


def test_max_length_must_leave_room_for_genes(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5, max_seq_len=1)
    with pytest.raises(ValueError, match=r"max_seq_len=1 leaves no room for genes"):
        sg.models.load(tmp_path / "m")


def test_weights_that_do_not_fit_the_config(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5, layers=2)
    args = json.loads((tmp_path / "m" / "args.json").read_text())
    (tmp_path / "m" / "args.json").write_text(json.dumps({**args, "nlayers": 3}))
    with pytest.raises(ValueError, match=r"does not fit args.json: missing \['transformer_encoder.layers.2"):
        sg.models.load(tmp_path / "m")


def test_tiny_vocabulary_overlap_warns(tmp_path, scgpt_folder):
    genes = scgpt_folder(tmp_path / "m", n_genes=40)
    model = sg.models.load(tmp_path / "m")
    names = genes[:6] + [f"other{i}" for i in range(30)]
    rng = np.random.default_rng(0)
    adata = AnnData(
        X=sparse.csr_matrix(rng.poisson(2.0, size=(4, 36)).astype(np.float32)),
        var=pd.DataFrame(index=names),
    )
    with pytest.warns(UserWarning, match=r"sees only 6 of its 40 genes"):
        sg.tl.attribute(adata, model, n_steps=64, min_overlap=1)
    assert adata.layers["attr_ig"][:, 6:].nnz == 0


def test_category_values_need_a_bin_index_for_cls(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5, style="category", extra_args={"pad_value": -2})
    with pytest.raises(ValueError, match=r"pad_value=-2.0 must be a bin index \(0 to 52\)"):
        sg.models.load(tmp_path / "m")


def test_missing_architecture_field_is_named(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5)
    args = json.loads((tmp_path / "m" / "args.json").read_text())
    del args["d_hid"]
    (tmp_path / "m" / "args.json").write_text(json.dumps(args))
    with pytest.raises(ValueError, match=r"lacks the architecture field\(s\) \['d_hid'\]"):
        sg.models.load(tmp_path / "m")


def test_weights_of_the_wrong_width_are_a_clear_error(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=5, d=16)
    args = json.loads((tmp_path / "m" / "args.json").read_text())
    (tmp_path / "m" / "args.json").write_text(json.dumps({**args, "embsize": 24, "d_hid": 48}))
    with pytest.raises(ValueError, match=r"best_model.pt does not fit args.json \(size mismatch"):
        sg.models.load(tmp_path / "m")


def test_vocabulary_without_appended_special_tokens(tmp_path, scgpt_folder):
    """scGPT appends ``<eoc>`` (and any missing special token) to the vocabulary before sizing the embedding."""
    scgpt_folder(tmp_path / "m", n_genes=8)
    vocab = json.loads((tmp_path / "m" / "vocab.json").read_text())
    del vocab["<eoc>"]  # the checkpoint still embeds 8 + 3 tokens
    (tmp_path / "m" / "vocab.json").write_text(json.dumps(vocab))
    model = sg.models.load(tmp_path / "m")
    assert model.encoder.encoder.embedding.num_embeddings == 11
    vocab["G0"] = 40
    (tmp_path / "m" / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"token ids up to 40, but best_model.pt embeds only 11 tokens"):
        sg.models.load(tmp_path / "m")


def test_values_are_binned_as_the_collator_does_whatever_n_bins_says(tmp_path, scgpt_folder):
    """scGPT's DataCollator calls ``binning(..., n_bins=51)``: args.json's ``n_bins`` does not change the bins."""
    scgpt_folder(tmp_path / "m", n_genes=200, n_bins=11)
    with pytest.warns(UserWarning, match=r"n_bins=11, but scGPT's collator bins values into 51 bins"):
        model = sg.models.load(tmp_path / "m")
    x = sparse.csr_matrix(np.arange(1.0, 201.0)[None])  # 200 distinct values
    values, _ = model.encoder.token_values(x)
    np.testing.assert_array_equal(values.toarray()[0], expected_bins(np.arange(1.0, 201.0), 51))
    assert values.max() == 50
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked for: no warning
        model = sg.models.load_scgpt(tmp_path / "m", n_bins=11)  # cells binned as args.json says
    values, _ = model.encoder.token_values(x)
    np.testing.assert_array_equal(values.toarray()[0], expected_bins(np.arange(1.0, 201.0), 11))


def test_pre_norm_in_args_is_embedded_as_embed_data_does(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "a", n_genes=12)
    scgpt_folder(tmp_path / "b", n_genes=12, extra_args={"pre_norm": True})
    with pytest.warns(UserWarning, match=r"pre_norm=true; scGPT's embed_data builds the model with pre_norm=False"):
        b = sg.models.load(tmp_path / "b")
    a = sg.models.load(tmp_path / "a")
    x = np.zeros((2, 12), dtype=np.float32)
    x[0, [1, 5, 7]], x[1, [2, 3]] = [1.0, 2.0, 3.0], [4.0, 1.0]
    np.testing.assert_array_equal(a.embed(x), b.embed(x))


def test_pre_norm_layer_is_scgpts_flash_scheme():
    """``pre_norm=True``: scGPT's flash-attention layer normalizes each sublayer's input and adds the residual to it."""
    from scsig.models._tokens import block_forward

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
    x = torch.randn(1, 5, 8, dtype=torch.float64)
    ours = block_forward(layer, x, torch.zeros((1, 5), dtype=torch.bool), norm="pre_residual_normed")
    h = layer.norm1(x)
    h = h + layer.self_attn(h, h, h, need_weights=False)[0]
    h = layer.norm2(h)
    h = h + layer.linear2(torch.relu(layer.linear1(h)))
    torch.testing.assert_close(ours, h, rtol=1e-10, atol=1e-12)


def test_batch_norm_layers_are_named_and_left_out_as_embed_data_does(tmp_path, scgpt_folder):
    scgpt_folder(tmp_path / "m", n_genes=8)
    state = torch.load(tmp_path / "m" / "best_model.pt", weights_only=True)
    before = sg.models.load(tmp_path / "m").embed(np.eye(8, dtype=np.float32)[:2] * 3)
    state["dsbn.bns.0.running_mean"] = torch.ones(16)  # a domain-specific batch norm, as use_batch_labels models have
    torch.save(state, tmp_path / "m" / "best_model.pt")
    with pytest.warns(UserWarning, match=r"batch-norm layers on the embedding path \(\['dsbn'\]\)"):
        after = sg.models.load(tmp_path / "m").embed(np.eye(8, dtype=np.float32)[:2] * 3)
    np.testing.assert_array_equal(after, before)


@pytest.mark.parametrize("norm", ["post", "pre", "pre_residual_normed"])
def test_last_layer_for_cls_only_equals_the_full_layer(norm):
    """``first_only=True`` (scGPT's last layer, whose only output used is ``<cls>``) is the full layer's first row."""
    from scsig.models._tokens import block_forward

    torch.manual_seed(1)
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True).double().eval()
    x = torch.randn(3, 6, 8, dtype=torch.float64)
    pad = torch.zeros((3, 6), dtype=torch.bool)
    pad[1, 3:], pad[2, 5:] = True, True
    full = block_forward(layer, x, pad, norm=norm)
    first = block_forward(layer, x, pad, norm=norm, first_only=True)
    assert first.shape == (3, 1, 8)
    torch.testing.assert_close(first, full[:, :1], rtol=1e-12, atol=1e-13)
