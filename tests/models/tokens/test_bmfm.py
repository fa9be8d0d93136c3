"""BMFM-RNA (scBERT): the published folder layout, its own forward, exactness against captum and bad input."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import types
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import scsig as sg
from scsig.attribution import TargetModule
from scsig.attribution._tokens import token_attributions
from scsig.models._bmfm import BmfmEncoder, load_bmfm

if TYPE_CHECKING:
    from pathlib import Path

GENE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[CLS_1]", "[CLS_2]"]
# the expressions vocabulary orders its special tokens differently: their rows in the value encoder differ
EXPR_SPECIALS = ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "[CLS_1]", "[CLS_2]"]


@contextmanager
def _bmfm_classes():
    """Stand-ins for bmfm_targets' config classes, importable under their published module names while pickling."""
    names = ["bmfm_targets", "bmfm_targets.config", "bmfm_targets.config.model_config"]
    names += ["bmfm_targets.config.tokenization_config", "bmfm_targets.config.training_config"]
    mods = {n: types.ModuleType(n) for n in names}

    def make(module: str, name: str) -> type:
        cls = type(name, (), {"__init__": lambda self, **kw: self.__dict__.update(kw), "__module__": module})
        setattr(mods[module], name, cls)
        return cls

    classes = {
        "SCBertConfig": make("bmfm_targets.config.model_config", "SCBertConfig"),
        "FieldInfo": make("bmfm_targets.config.tokenization_config", "FieldInfo"),
        "LabelColumnInfo": make("bmfm_targets.config.tokenization_config", "LabelColumnInfo"),
        "TrainerConfig": make("bmfm_targets.config.training_config", "TrainerConfig"),
    }
    sys.modules.update(mods)
    try:
        yield classes
    finally:
        for n in names:
            sys.modules.pop(n, None)


def _tokenizer(folder: Path, tokens: list[str], specials: list[str]) -> None:
    """A sub-tokenizer as the published MultiFieldTokenizer saves it (``save_pretrained`` of a fast WordLevel
    tokenizer: tokenizer.json, tokenizer_config.json, special_tokens_map.json; no vocab file)."""
    folder.mkdir(parents=True)
    vocab = {t: i for i, t in enumerate(tokens)}
    flags = {"single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
    added = [{"id": vocab[t], "content": t, **flags} for t in specials]
    special = {t: {"id": t, "ids": [vocab[t]], "tokens": [t]} for t in ("[CLS]", "[SEP]")}
    single = [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    single.append({"SpecialToken": {"id": "[SEP]", "type_id": 0}})
    pair = [*single, {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": "[SEP]", "type_id": 1}}]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": False, "handle_chinese_chars": False,
                       "strip_accents": False, "lowercase": False},
        "pre_tokenizer": None,
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": True},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }  # fmt: skip
    (folder / "tokenizer.json").write_text(json.dumps(tok, indent=2))
    named = {
        "unk_token": "[UNK]",
        "sep_token": "[SEP]",
        "pad_token": "[PAD]",
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
    }
    extra = [t for t in specials if t not in named.values()]
    config = {
        "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added},
        "additional_special_tokens": extra, "clean_up_tokenization_spaces": False, "extra_special_tokens": {},
        "model_max_length": 1000000000000000019884624838656, "tokenizer_class": "PreTrainedTokenizerFast", **named,
    }  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    smap = {
        k: {"content": v, **{f: flags[f] for f in ("lstrip", "normalized", "rstrip", "single_word")}}
        for k, v in named.items()
    }
    smap["additional_special_tokens"] = [{"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False} for t in extra]  # fmt: skip
    (folder / "special_tokens_map.json").write_text(json.dumps(smap, indent=2))


def _vocab(folder: Path, field: str) -> dict[str, int]:
    """A sub-tokenizer's vocabulary, read from its tokenizer.json."""
    return json.loads((folder / "tokenizers" / field / "tokenizer.json").read_text())["model"]["vocab"]


def write_bmfm_folder(
    folder: Path,
    *,
    n_genes: int = 30,
    d: int = 16,
    heads: int = 2,
    layers: int = 2,
    seed: int = 0,
    config_extra: dict | None = None,
    encoder_kwargs: dict | None = None,
    extra_object: object = None,
    pooling_method: object = "pooling_layer",
    pooler: bool = True,
) -> list[str]:
    """A BMFM-RNA folder with random weights, laid out as on Hugging Face; returns the gene names.

    The checkpoint is what BMFM's Lightning training saves: ``state_dict`` (``model.`` + the module's keys)
    and ``hyper_parameters`` with the pickled ``model_config``, ``trainer_config`` (its ``pooling_method``,
    ``"pooling_layer"`` by default as in BMFM's ``TrainerConfig``; ``None`` writes no trainer_config) and
    ``label_dict``. ``pooler=False`` leaves out the pooler, as in a masked-language-model checkpoint.
    """
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape: torch.randn(*shape, generator=gen) * 0.5  # noqa: E731
    genes = [f"G{i}" for i in range(n_genes)]
    gene_tokens = GENE_SPECIALS + list(np.random.default_rng(seed).permutation(genes))  # shuffled ids
    _tokenizer(folder / "tokenizers" / "genes", gene_tokens, GENE_SPECIALS)
    _tokenizer(folder / "tokenizers" / "expressions", EXPR_SPECIALS + [str(i) for i in range(10)], EXPR_SPECIALS)
    n_special = len(EXPR_SPECIALS) + 1  # + the zero token
    p = "model.scbert."
    state = {
        f"{p}embeddings.genes_embeddings.weight": rnd(len(gene_tokens), d),
        f"{p}embeddings.expressions_embeddings.dense_1.weight": rnd(128, 1),
        f"{p}embeddings.expressions_embeddings.dense_1.bias": rnd(128),
        f"{p}embeddings.expressions_embeddings.dense_2.weight": rnd(d, 128) / 8,
        f"{p}embeddings.expressions_embeddings.dense_2.bias": rnd(d),
        f"{p}embeddings.expressions_embeddings.special_token_embeddings.weight": rnd(n_special, 128),
        f"{p}embeddings.LayerNorm.weight": 1 + 0.1 * rnd(d), f"{p}embeddings.LayerNorm.bias": 0.1 * rnd(d),
        "model.cls.predictions.transform.dense.weight": rnd(d, d),  # heads: not on the embedding path
    }  # fmt: skip
    shapes = {
        "attention.self.query": (d, d), "attention.self.key": (d, d), "attention.self.value": (d, d),
        "attention.output.dense": (d, d), "intermediate.dense": (4 * d, d), "output.dense": (d, 4 * d),
    }  # fmt: skip
    for i in range(layers):
        for name, (o, n_in) in shapes.items():
            state[f"{p}encoder.layer.{i}.{name}.weight"] = rnd(o, n_in) / n_in**0.5
            state[f"{p}encoder.layer.{i}.{name}.bias"] = 0.1 * rnd(o)
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[f"{p}encoder.layer.{i}.{ln}.weight"] = 1 + 0.1 * rnd(d)
            state[f"{p}encoder.layer.{i}.{ln}.bias"] = 0.1 * rnd(d)
    if pooler:
        state.update({f"{p}pooler.dense.weight": rnd(d, d) / d**0.5, f"{p}pooler.dense.bias": rnd(d)})
    with _bmfm_classes() as cls:
        kwargs = {"kind": "mlp_with_special_token_embedding", "zero_as_special_token": True}
        fields = [
            cls["FieldInfo"](field_name="genes", is_input=True, tokenization_strategy="tokenize", pretrained_embedding=None),
            cls["FieldInfo"](
                field_name="expressions", is_input=True, tokenization_strategy="continuous_value_encoder",
                encoder_kwargs=encoder_kwargs or kwargs, num_special_tokens=len(EXPR_SPECIALS),
                decode_modes={"wced": {"vocab_field": "genes"}},
            ),
        ]  # fmt: skip
        config = {
            "fields": fields, "label_columns": [cls["LabelColumnInfo"](label_column_name="cell_type")],
            "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": 4 * d, "hidden_act": "gelu",
            "hidden_size": d, "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": None,
            "attention": "torch", "is_decoder": False, "torch_dtype": torch.float32,
        }  # fmt: skip
        config.update(config_extra or {})
        hyper = {"model_config": cls["SCBertConfig"](**config), "label_dict": {"cell_type": {"T": 0, "B": 1}}}
        if pooling_method is not None:
            losses = [{"field_name": "expressions", "name": "mse", "wced_target": "input_genes"}]
            hyper["trainer_config"] = cls["TrainerConfig"](
                pooling_method=pooling_method, losses=losses, warmup_steps=10
            )
        if extra_object is not None:
            hyper["extra"] = extra_object
        ckpt = {
            "epoch": 3,
            "global_step": 10,
            "pytorch-lightning_version": "2.5.0",
            "state_dict": state,
            "hparams_name": "kwargs",
        }
        torch.save({**ckpt, "hyper_parameters": hyper}, folder / "biomed.rna.bert.tiny.ckpt")
    return genes


def _counts(n_cells: int, n_genes: int, seed: int = 0, rate: float = 1.0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    return sparse.csr_matrix(rng.poisson(rng.gamma(0.6, rate, size=(n_cells, n_genes))).astype(np.float64))


def _published_embedding(
    folder: Path, enc: BmfmEncoder, counts: np.ndarray, order: list[str], length: int, max_length: int | None = None
):
    """One cell as BMFM's collator and scBERT build it, written out independently of scsig's code.

    ``log_normalize`` over all the cell's counts, then the tokenizer's cut to ``max_length - 2`` genes in
    the order of ``adata.var`` (here ``order``) and ``[CLS] genes... [SEP]``, padded to ``length`` with an
    additive float mask; value tokens encoded as ``-(id + 1)`` of the expressions vocabulary; naive attention.
    """
    gv, ev = _vocab(folder, "genes"), _vocab(folder, "expressions")
    keep = np.flatnonzero(counts > 0)
    c = counts[keep]
    vals = np.log1p(c / (c.sum() + 1) * 1e4)
    if max_length is not None:
        keep, vals = keep[: max_length - 2], vals[: max_length - 2]
    ids = [gv["[CLS]"], *[gv[order[g]] for g in keep], gv["[SEP]"]]
    ex = [-(ev["[CLS]"] + 1), *vals, -(ev["[SEP]"] + 1)]
    n_pad = length - len(ids)
    ids, ex = ids + [gv["[PAD]"]] * n_pad, ex + [-(ev["[PAD]"] + 1)] * n_pad
    mask = torch.tensor([1.0] * (len(keep) + 2) + [0.0] * n_pad, dtype=torch.float64)
    emb = enc.embeddings
    v = torch.tensor(ex, dtype=torch.float64)
    special = (v < 0) | (v == 0)
    row = (-(v + 1)).long().clamp(min=0)
    lrelu = torch.nn.functional.leaky_relu
    h = torch.where(
        special[:, None],
        emb.expressions_embeddings.special_token_embeddings(row),
        lrelu(emb.expressions_embeddings.dense_1(v[:, None])),
    )
    x = emb.genes_embeddings(torch.tensor(ids)) + emb.expressions_embeddings.dense_2(lrelu(h))
    x = emb.LayerNorm(x)[None]
    add = (1.0 - mask)[None, None, None, :] * torch.finfo(torch.float64).min
    for layer in enc.encoder.layer:
        att = layer.attention.self
        q, k, val = (m(x).view(1, length, enc.n_heads, -1).transpose(1, 2) for m in (att.query, att.key, att.value))
        scores = q @ k.transpose(-1, -2) / (enc.d_model // enc.n_heads) ** 0.5 + add
        ctx = (torch.softmax(scores, dim=-1) @ val).transpose(1, 2).reshape(1, length, -1)
        x = layer.attention.output.LayerNorm(layer.attention.output.dense(ctx) + x)
        ff = layer.output.dense(torch.nn.functional.gelu(layer.intermediate.dense(x)))
        x = layer.output.LayerNorm(ff + x)
    return x[0]


def _pooled(h: torch.Tensor, counts: np.ndarray, pool: str, enc) -> torch.Tensor:
    """The cell embedding BMFM pools from the token outputs ``h`` of ``[CLS] genes... [SEP]``."""
    if pool == "first_token":
        return h[0]
    if pool == "pooling_layer":
        return torch.tanh(enc.pooler.dense(h[0]))
    return h[1 : int((counts > 0).sum()) + 2].mean(dim=0)  # the genes and [SEP]


def _assert_published_embedding(folder, model, pool: str, *, n_cells: int, seed: int, length: int) -> None:
    """The model's (float64) embeddings of random cells equal the re-implemented published forward's."""
    enc = model.encoder.double()
    counts = _counts(n_cells, model.n_genes, seed=seed, rate=3.0).toarray()
    ours = enc(torch.as_tensor(counts))
    for i in range(n_cells):
        h = _published_embedding(folder, enc, counts[i], model.gene_order, length=length)
        torch.testing.assert_close(ours[i], _pooled(h, counts[i], pool, enc), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("pool", ["first_token", "pooling_layer", "mean_pooling"])
def test_loads_the_published_layout_and_reproduces_its_forward(tmp_path, pool):
    genes = write_bmfm_folder(tmp_path / "m", n_genes=30)
    model = load_bmfm(tmp_path / "m", pool=pool)
    assert isinstance(model.encoder, BmfmEncoder)
    assert sorted(model.gene_order) == sorted(genes)
    vocab = _vocab(tmp_path / "m", "genes")
    assert [vocab[g] for g in model.gene_order] == sorted(vocab[g] for g in genes)  # vocabulary-id order
    _assert_published_embedding(tmp_path / "m", model, pool, n_cells=3, seed=4, length=40)


def test_forward_is_deterministic_and_padding_correct(tmp_path):
    write_bmfm_folder(tmp_path / "m", n_genes=60)
    enc = load_bmfm(tmp_path / "m").encoder.double()
    short = np.zeros((1, 60))
    short[0, [3, 50]] = [2, 5]
    x = np.vstack([_counts(3, 60, seed=6, rate=30.0).toarray(), short])
    alone = enc(torch.as_tensor(short))
    batched = enc(torch.as_tensor(x))
    torch.testing.assert_close(batched[3:], alone, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(enc(torch.as_tensor(x)), batched, rtol=0, atol=0)


@pytest.mark.parametrize("target", ["self_similarity", "embedding_distance"])
def test_equals_captum_on_a_dense_wrapper(tmp_path, captum_ig, target):
    write_bmfm_folder(tmp_path / "m", n_genes=30)
    model = sg.models.load(tmp_path / "m")
    model.encoder.double()
    x = _counts(5, 30, seed=5, rate=2.0)
    attr, t_in, t_base, dropped = token_attributions(TargetModule(model.encoder, target), model, x, n_steps=16)
    ref = captum_ig(model, x, target, n_steps=16)
    assert not dropped.any()
    assert np.abs(ref).sum() > 0
    rel = np.abs(attr.toarray() - ref).sum(axis=1) / np.abs(ref).sum(axis=1)
    assert rel.max() <= 1e-5


def test_completeness_converges_and_batches_are_invariant(tmp_path):
    write_bmfm_folder(tmp_path / "m", n_genes=60)
    model = load_bmfm(tmp_path / "m")
    model.encoder.double()
    module = TargetModule(model.encoder, "embedding_distance")
    x = _counts(2, 60, seed=1, rate=3.0)
    gaps = []
    for steps in (4, 32, 512):
        attr, t_in, t_base, _ = token_attributions(module, model, x, n_steps=steps)
        gaps.append(np.max(np.abs(np.asarray(attr.sum(axis=1)).ravel() - (t_in - t_base)) / np.abs(t_in - t_base)))
    assert gaps[0] > gaps[2]
    assert gaps[2] < 1e-3
    short = np.zeros((1, 60))
    short[0, [5, 17, 40]] = [1.0, 4.0, 2.0]
    both = sparse.vstack([_counts(3, 60, seed=3, rate=20.0), sparse.csr_matrix(short)]).tocsr()
    alone = token_attributions(module, model, sparse.csr_matrix(short), n_steps=8)[0].toarray()
    batched = token_attributions(module, model, both, n_steps=8)[0].toarray()[3:]
    assert np.diff(both.indptr).max() > 10 * 3
    np.testing.assert_allclose(batched, alone, rtol=1e-10, atol=1e-14)


def test_too_long_cells_keep_their_most_expressed_genes_normalized_by_all_their_counts(tmp_path):
    write_bmfm_folder(tmp_path / "m", n_genes=40)
    model = load_bmfm(tmp_path / "m", max_length=12, pool="first_token")  # 10 genes
    enc = model.encoder.double()
    counts = np.arange(1.0, 41.0)[None, ::-1].copy()  # gene 0 is the most expressed
    genes, vals, _, dropped = enc.tokenize(sparse.csr_matrix(counts))
    np.testing.assert_array_equal(genes[0], np.arange(10))
    assert dropped.tolist() == [30]
    # BMFM's log_normalize runs on the whole cell before the tokenizer cuts it (max_mfi_data_len=None)
    np.testing.assert_allclose(vals[0], np.log1p(1e4 * counts[0, :10] / (counts.sum() + 1)), rtol=1e-12)
    # decreasing along the model's order: BMFM's first genes in the data's order are the most expressed
    ref = _published_embedding(tmp_path / "m", enc, counts[0], model.gene_order, length=16, max_length=12)
    torch.testing.assert_close(enc(torch.as_tensor(counts))[0], ref[0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize(
    ("pooling_method", "pooler", "expected"),
    [
        ("pooling_layer", True, "pooling_layer"),  # BMFM's TrainerConfig default
        ("mean_pooling", True, "mean_pooling"),
        (0, True, "first_token"),  # a position: the [CLS] token
        (None, True, "pooling_layer"),  # no trainer_config: BMFM's default
        ("pooling_layer", False, "first_token"),  # no trained pooler: BMFM's embeddings are the [CLS] output
    ],
)
def test_default_cell_embedding_is_the_checkpoints_pooling_method(tmp_path, pooling_method, pooler, expected):
    write_bmfm_folder(tmp_path / "m", n_genes=30, pooling_method=pooling_method, pooler=pooler)
    model = sg.models.load(tmp_path / "m")
    assert model.encoder.pool == expected
    _assert_published_embedding(tmp_path / "m", model, expected, n_cells=2, seed=3, length=32)
    assert load_bmfm(tmp_path / "m", pool="mean_pooling").encoder.pool == "mean_pooling"  # pool= overrides it
    write_bmfm_folder(tmp_path / "n", n_genes=5, pooling_method=[0, 1])
    with pytest.raises(ValueError, match=r"trainer_config.pooling_method=\[0, 1\] is not a cell embedding.*pass pool="):
        sg.models.load(tmp_path / "n")


def test_attribute_end_to_end_and_independent_of_var_order(tmp_path):
    genes = write_bmfm_folder(tmp_path / "m", n_genes=30)
    model = sg.models.load(tmp_path / "m")
    x = _counts(6, 30, seed=8, rate=3.0).astype(np.float32)
    adata = AnnData(X=x, obs=pd.DataFrame(index=[f"c{i}" for i in range(6)]), var=pd.DataFrame(index=genes))
    sg.tl.attribute(adata, model, n_steps=256, completeness_key="gap")
    layer = adata.layers["attr_ig"].toarray()
    np.testing.assert_allclose(layer.sum(axis=1), 1000.0, rtol=1e-5)
    assert (layer[adata.X.toarray() == 0] == 0).all()
    assert adata.uns["scsig"]["layers"]["attr_ig"]["engine"] == "tokens"
    perm = np.random.default_rng(2).permutation(30)
    shuffled = adata[:, perm].copy()
    sg.tl.attribute(shuffled, model, n_steps=256, key_added="again")
    np.testing.assert_allclose(shuffled.layers["again"].toarray(), layer[:, perm], rtol=1e-4, atol=1e-3)


def test_unsafe_pickle_needs_allow_pickle(tmp_path):
    class Unsafe:
        def __reduce__(self):
            return (os.getcwd, ())  # harmless here, but arbitrary code: must not run without consent

    write_bmfm_folder(tmp_path / "m", n_genes=5, extra_object=Unsafe())
    with pytest.raises(Exception, match=r"'posix.getcwd'.*pass allow_pickle=True"):
        sg.models.load(tmp_path / "m")
    assert sg.models.load(tmp_path / "m", allow_pickle=True).n_genes == 5
    # objects of the packages a training run leaves in hyper_parameters become inert records
    write_bmfm_folder(tmp_path / "p", n_genes=5, extra_object={"path": pathlib.PurePosixPath("/data/x.h5ad")})
    assert sg.models.load(tmp_path / "p").n_genes == 5


def test_missing_files_are_named(tmp_path):
    write_bmfm_folder(tmp_path / "m", n_genes=5)
    import shutil

    shutil.rmtree(tmp_path / "m" / "tokenizers" / "expressions")
    with pytest.raises(FileNotFoundError, match=r"\['tokenizers/expressions'\] missing"):
        sg.models.load(tmp_path / "m")
    write_bmfm_folder(tmp_path / "n", n_genes=5)
    (tmp_path / "n" / "biomed.rna.bert.tiny.ckpt").rename(tmp_path / "n" / "weights.bin")
    with pytest.raises(FileNotFoundError, match=r"exactly one BMFM-RNA checkpoint \(\*\.ckpt\), not \[\]"):
        load_bmfm(tmp_path / "n")
    (tmp_path / "n" / "tokenizers" / "genes" / "tokenizer.json").unlink()
    (tmp_path / "n" / "weights.bin").rename(tmp_path / "n" / "m.ckpt")
    with pytest.raises(FileNotFoundError, match="none of tokenizer.json, vocab.json or vocab.txt"):
        load_bmfm(tmp_path / "n")


@pytest.mark.parametrize(
    ("extra", "kwargs", "match"),
    [
        ({"position_embedding_type": "absolute"}, None, r"position_embedding_type='absolute' is not supported"),
        ({"hidden_act": "swish"}, None, r"hidden_act='swish' is not known"),
        ({}, {"kind": "scale_adapt", "n_sin_basis": 48}, r"encoder_kwargs.kind='scale_adapt'"),
    ],
)
def test_configs_scsig_does_not_read_are_refused(tmp_path, extra, kwargs, match):
    write_bmfm_folder(tmp_path / "m", n_genes=5, config_extra=extra, encoder_kwargs=kwargs)
    with pytest.raises(ValueError, match=match):
        sg.models.load(tmp_path / "m")


def test_max_length_must_leave_room_for_genes_and_genes_subset(tmp_path):
    genes = write_bmfm_folder(tmp_path / "m", n_genes=8)
    with pytest.raises(ValueError, match=r"max_length=2 leaves no room for genes"):
        load_bmfm(tmp_path / "m", max_length=2)
    sub = load_bmfm(tmp_path / "m", genes=genes[:4])
    assert sub.gene_order == genes[:4]
    with pytest.raises(ValueError, match=r"1 of the genes= are not in"):
        load_bmfm(tmp_path / "m", genes=["nope"])


def test_cells_without_genes(tmp_path):
    genes = write_bmfm_folder(tmp_path / "m", n_genes=12)
    model = sg.models.load(tmp_path / "m")
    assert model.embed(np.zeros((3, 12), dtype=np.float32)).shape == (3, 16)  # [CLS] and [SEP] only
    assert tuple(model.encoder(torch.zeros((0, 12))).shape) == (0, 16)
    x = _counts(3, 12, seed=9, rate=3.0).toarray()
    x[1] = 0
    adata = AnnData(X=sparse.csr_matrix(x.astype(np.float32)), var=pd.DataFrame(index=genes))
    with pytest.warns(UserWarning, match="1 cells have zero counts"):
        sg.tl.attribute(adata, model, n_steps=256, batch_size=1)
    sums = np.asarray(adata.layers["attr_ig"].sum(axis=1)).ravel()
    np.testing.assert_allclose(sums, [1000.0, 0.0, 1000.0], rtol=1e-5)
