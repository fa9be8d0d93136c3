"""The comparisons of ``published_bmfm.py``: scsig's BMFM-RNA loader against the published modules it imported.

``pub`` maps names to the published objects (``SCBertConfig``, ``FieldInfo``, ``MultiFieldCollator``, ...);
nothing here is published code. Run through ``python benchmarks/published_bmfm.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import sparse

if TYPE_CHECKING:
    from pathlib import Path

torch.set_num_threads(1)

POOLS = ("first_token", "pooling_layer", "mean_pooling")
SPECIALS = ["[UNK]", "[SEP]", "[PAD]", "[CLS]", "[MASK]", "[CLS_CELL_TYPE]", "[CLS_DISEASE]", "[CLS_TISSUE_TYPE]"]
SPECIALS += [f"[CLS_{i}]" for i in range(1, 21)]  # the published special tokens, in their order
CKPT = "biomed.rna.bert.tiny.ckpt"


def _sub_tokenizer(tokens: list[str], out: Path) -> None:
    """A WordLevel sub-tokenizer as the published vocabularies are built, saved with ``save_pretrained``."""
    from tokenizers import Tokenizer, decoders, normalizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=None, lowercase=False
    )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        additional_special_tokens=SPECIALS[5:],
    )
    fast.save_pretrained(str(out))


def _randomize(model: torch.nn.Module) -> None:
    """Random weights of a trained-looking scale (not the initializer's zeros and ones)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(torch.randn_like(p) * (0.5 if p.ndim == 1 else 1.0 / max(p.shape[-1], 1) ** 0.5))


def build_folder(pub: dict, folder: Path, n_genes: int, seed: int, hidden=32, layers=2, heads=4) -> list[str]:
    """A random checkpoint and tokenizer written by the published classes, in the published folder layout."""
    rng = np.random.default_rng(seed)
    genes = [f"GENE{i}" for i in range(n_genes)]
    tmp = folder.parent / "sub_tokenizers"
    _sub_tokenizer(SPECIALS + list(rng.permutation(genes)), tmp / "tokenizers" / "genes")
    _sub_tokenizer(SPECIALS + [str(i) for i in range(50)], tmp / "tokenizers" / "expressions")
    mft = pub["MultiFieldTokenizer"].from_pretrained(str(tmp))
    mft.save_pretrained(folder)
    wced = {"wced": {"vocab_field": "genes", "logit_outputs": ["mse", "is_zero_bce"]}}
    encoder = {"kind": "mlp_with_special_token_embedding", "zero_as_special_token": True}
    fields = [
        pub["FieldInfo"](field_name="genes"),
        pub["FieldInfo"](
            field_name="expressions",
            tokenization_strategy="continuous_value_encoder",
            encoder_kwargs=encoder,
            decode_modes=wced,
        ),
    ]
    for f in fields:
        f.update_vocab_size(mft)
    config = pub["SCBertConfig"](
        fields=fields,
        label_columns=[pub["LabelColumnInfo"](label_column_name="cell_type", n_unique_values=3)],
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        hidden_size=hidden,
        hidden_act="gelu",
        pad_token_id=0,
        attention="torch",
        use_cache=True,
        tie_word_embeddings=False,  # as SCModelConfigBase declares; transformers 4 would tie at construction
    )
    torch.manual_seed(seed)
    model = pub["SCBertForMultiTaskModeling"](config)
    _randomize(model)
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.setdefault("model.cls.predictions.transform.dense.weight", torch.randn(hidden, hidden))  # off the path
    trainer_config = pub["TrainerConfig"](losses=[{"field_name": "expressions", "name": "mse"}])
    labels = {"cell_type": {"T": 0, "B": 1, "NK": 2}}
    hyper = {"model_config": config, "trainer_config": trainer_config, "label_dict": labels}
    ckpt = {  # what a Lightning checkpoint holds besides the weights, for scsig's allow-list to read
        "epoch": 3,
        "global_step": 1000,
        "pytorch-lightning_version": "2.5.1",
        "state_dict": state,
        "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {"total": {"ready": 4, "completed": 3}}}},
        "callbacks": {"ModelCheckpoint{'monitor': 'validation/loss'}": {"best_model_score": torch.tensor(0.5)}},
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(3)}},
                "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.99), "params": [0]}],
            }
        ],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hyper,
    }
    torch.save(ckpt, folder / CKPT)
    return genes


def _published_model(pub: dict, folder: Path, f64: bool):
    ckpt = torch.load(folder / CKPT, map_location="cpu", weights_only=False)
    config = ckpt["hyper_parameters"]["model_config"]
    model = pub["SCBertForMultiTaskModeling"](config)
    state = {k[len("model.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.scbert")}
    model.load_state_dict(state, strict=False)
    model.eval()
    if f64:
        model.double()
    collator = pub["MultiFieldCollator"](
        tokenizer=pub["load_tokenizer"](str(folder)),
        fields=config.fields,
        padding="max_length",
        pad_to_multiple_of=16,
        truncation=True,
        max_mfi_data_len=None,
        log_normalize_transform=True,
        max_length=None,
    )
    return model, collator


def _rows(pub: dict, x: sparse.csr_matrix, var: list[str], lo: int, hi: int) -> list:
    """The published dataset's rows: every stored entry of the cell, in the order of the data's genes."""
    out = []
    for i in range(lo, hi):
        a, b = x.indptr[i], x.indptr[i + 1]
        data = {"genes": [var[j] for j in x.indices[a:b]], "expressions": list(x.data[a:b])}
        out.append(pub["MultiFieldInstance"](data=data, metadata={"cell_name": f"c{i}"}))
    return out


def published_embed(pub, folder, x, var, pooling, max_length: int, f64: bool, batch_size: int = 8) -> np.ndarray:
    """The published predict path: dataset rows, ``MultiFieldCollator``, the model, ``get_embeddings_from_outputs``."""
    model, collator = _published_model(pub, folder, f64)
    collator.max_length = max_length
    x = sparse.csr_matrix(x)
    out = []
    for lo in range(0, x.shape[0], batch_size):
        batch = collator(_rows(pub, x, var, lo, min(lo + batch_size, x.shape[0])))
        mask = batch["attention_mask"]
        with torch.no_grad():
            outputs = model(input_ids=batch["input_ids"], attention_mask=mask, output_hidden_states=True)
            emb = pub["get_embeddings_from_outputs"](outputs, mask, pooling_method=pooling)
        out.append(emb.double().numpy())
    return np.vstack(out)


class PublishedValues(torch.nn.Module):
    """The published model with one cell's token set fixed; input: the cell's gene values (1 x n_tokens)."""

    def __init__(self, pub, model, input_ids, mask, positions, pooling):
        super().__init__()
        self.pub, self.model, self.ids, self.mask, self.pos, self.pooling = (
            pub,
            model,
            input_ids,
            mask,
            positions,
            pooling,
        )

    def embed(self, v: torch.Tensor) -> torch.Tensor:
        n = v.shape[0]
        ids = self.ids.expand(n, -1, -1).clone()
        ids[:, 1, self.pos] = v
        mask = self.mask.expand(n, -1)
        outputs = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        return self.pub["get_embeddings_from_outputs"](outputs, mask, pooling_method=self.pooling)

    def forward(self, v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return torch.sum(torch.abs(ref * self.embed(v)), dim=1)


def published_ig(pub, folder, counts, var, pooling, max_length: int, n_steps: int) -> np.ndarray:
    """captum's IntegratedGradients over the expression value input of the published module (float64)."""
    from captum.attr import IntegratedGradients

    model, collator = _published_model(pub, folder, f64=True)
    collator.max_length = max_length
    x = sparse.csr_matrix(counts)
    out = np.zeros(counts.shape)
    for i in range(x.shape[0]):
        batch = collator(_rows(pub, x, var, i, i + 1))
        ids, mask = batch["input_ids"].double(), batch["attention_mask"]
        pos = torch.arange(1, int(mask.sum()) - 1)
        vals = ids[:, 1, pos].clone()
        wrap = PublishedValues(pub, model, ids, mask, pos, pooling)
        with torch.no_grad():
            ref = wrap.embed(vals)
        ig = IntegratedGradients(wrap, multiply_by_inputs=True)
        attr = ig.attribute(
            vals,
            baselines=torch.zeros_like(vals),
            additional_forward_args=(ref,),
            n_steps=n_steps,
            method="gausslegendre",
        )
        out[i, x.indices[x.indptr[i] : x.indptr[i + 1]][: len(pos)]] = attr.detach().numpy()[0]
    return out


def counts_matrix(n_genes: int, sizes: list[int], seed: int) -> np.ndarray:
    """Cells with ``sizes`` expressed genes, integer counts with a heavy-ish tail."""
    rng = np.random.default_rng(seed)
    x = np.zeros((len(sizes), n_genes))
    for i, k in enumerate(sizes):
        cols = rng.choice(n_genes, size=k, replace=False)
        x[i, cols] = rng.integers(1, 60, size=k) * rng.choice([1, 1, 1, 7], size=k)
    return x


def rel_max(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    return float(np.abs(a - b).max() / np.abs(b).max())


def rel_l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise sum |a - b| / sum |b|."""
    return np.abs(a - b).sum(axis=1) / np.maximum(np.abs(b).sum(axis=1), 1e-300)


def check_embeddings(pub, ctx: dict, report: dict) -> None:
    """``sg.models.load`` and ``load_bmfm(pool=...)`` against the published predict path, float32 and float64."""
    import scsig as sg
    from scsig.models._bmfm import load_bmfm

    folder, counts, var, xm, max_length = ctx["folder"], ctx["counts"], ctx["var"], ctx["xm"], ctx["max_length"]
    default = sg.models.load(folder).encoder.pool
    for dtype, f64 in ((torch.float32, False), (torch.float64, True)):
        name = str(dtype).replace("torch.", "")
        pub_z = {pool: published_embed(pub, folder, counts, var, pool, max_length, f64) for pool in POOLS}
        for pool in POOLS:
            enc = load_bmfm(folder, max_length=max_length, pool=pool).encoder.to(dtype)
            ours = enc(torch.as_tensor(xm, dtype=dtype)).detach().double().numpy()
            report[f"embedding {pool}, {name}: max |diff| / max |z|"] = rel_max(ours, pub_z[pool])
        # the checkpoint's TrainerConfig says pooling_layer (the published default), which the inference returns
        ours = sg.models.load(folder).encoder.to(dtype)(torch.as_tensor(xm, dtype=dtype)).detach().double().numpy()
        report[f"sg.models.load default pooling ({default!r}) vs published inference, {name}"] = rel_max(
            ours, pub_z["pooling_layer"]
        )


def check_ig(pub, ctx: dict, report: dict, n_steps: int) -> None:
    """scsig's integrated gradients against captum's on the published module's value input (float64)."""
    from scsig.attribution import TargetModule
    from scsig.attribution._tokens import token_attributions
    from scsig.models._bmfm import load_bmfm

    folder, counts, var, xm, max_length = ctx["folder"], ctx["counts"], ctx["var"], ctx["xm"], ctx["max_length"]
    for pool in POOLS:
        m = load_bmfm(folder, max_length=max_length, pool=pool)
        m.encoder.double()
        attr, *_ = token_attributions(
            TargetModule(m.encoder, "self_similarity"), m, sparse.csr_matrix(xm), n_steps=n_steps
        )
        ref = published_ig(pub, folder, counts, var, pool, max_length, n_steps=n_steps)[:, ctx["perm"]]
        report[f"IG {pool} ({n_steps} steps): max relative row-L1 vs captum on the published module"] = float(
            rel_l1(attr.toarray(), ref).max()
        )


def check_batch(ctx: dict, report: dict, n_steps: int) -> None:
    """A 3-gene cell alone and batched with a 300-gene cell (scsig, float64, mean pooling)."""
    from scsig.attribution import TargetModule
    from scsig.attribution._tokens import token_attributions
    from scsig.models._bmfm import load_bmfm

    xm = ctx["xm"]
    m = load_bmfm(ctx["folder"], max_length=ctx["max_length"], pool="mean_pooling")
    m.encoder.double()
    mod = TargetModule(m.encoder, "self_similarity")
    alone = token_attributions(mod, m, sparse.csr_matrix(xm[:1]), n_steps=n_steps)[0].toarray()
    batched = token_attributions(mod, m, sparse.csr_matrix(xm[:2]), n_steps=n_steps)[0].toarray()[:1]
    report["batch invariance (3 genes alone vs next to 300), IG max |diff| / max |a|"] = rel_max(batched, alone)
    e_alone = m.encoder(torch.as_tensor(xm[:1])).detach().numpy()
    e_both = m.encoder(torch.as_tensor(xm[:2])).detach().numpy()[:1]
    report["batch invariance, embedding max |diff|"] = float(np.abs(e_alone - e_both).max())


def check_long_cell(pub, ctx: dict, report: dict, short_len: int = 64) -> None:
    """A 300-gene cell through a model of ``short_len`` tokens (float64, first_token).

    The published code keeps the first ``short_len - 2`` genes in the data's order and normalizes by all the
    cell's counts; the genes are sorted by that cell's counts so that both keep the same genes. Also prints
    how far the published embedding moves when N is the kept genes' counts only (scsig's former rule).
    """
    from scsig.models._bmfm import load_bmfm

    folder, var, model_genes = ctx["folder"], ctx["var"], ctx["gene_order"]
    cell = np.zeros(len(var))
    cell[np.flatnonzero(ctx["counts"][1])] = np.random.default_rng(5).permutation(300) + 1.0  # distinct counts
    order = np.argsort(-cell, kind="stable")
    var_sorted = [var[j] for j in order]
    long_counts = cell[None, order]
    pub_z = published_embed(pub, folder, long_counts, var_sorted, "first_token", short_len, True)
    col = {g: j for j, g in enumerate(var_sorted)}
    enc = load_bmfm(folder, max_length=short_len, pool="first_token").encoder.double()
    ours = enc(torch.as_tensor(long_counts[:, [col[g] for g in model_genes]])).detach().numpy()
    report[f"long cell (300 genes, max_length={short_len}), first_token, f64: max |diff| / max |z|"] = rel_max(
        ours, pub_z
    )
    kept_only = long_counts.copy()
    kept_only[:, short_len - 2 :] = 0
    pub_kept = published_embed(pub, folder, kept_only, var_sorted, "first_token", short_len, True)
    report["long cell: published embedding with N over the kept genes only (the former rule) vs all"] = rel_max(
        pub_kept, pub_z
    )


def check_stored_zeros(pub, ctx: dict, report: dict, n_zeros: int) -> None:
    """How far explicitly stored zeros move the published embedding (they become zero tokens; scsig drops them)."""
    from scsig.models._bmfm import load_bmfm

    folder, counts, var, max_length = ctx["folder"], ctx["counts"], ctx["var"], ctx["max_length"]
    dense = counts[[2, 5] if counts.shape[0] > 5 else [2]]  # cells of 40 and 17 genes
    rng = np.random.default_rng(7)
    r, c = np.nonzero(dense)
    zr = np.repeat(np.arange(dense.shape[0]), n_zeros)
    zc = np.concatenate([rng.choice(np.flatnonzero(row == 0), size=n_zeros, replace=False) for row in dense])
    data = np.r_[dense[r, c], np.zeros(len(zr))]
    stored = sparse.csr_matrix((data, (np.r_[r, zr], np.r_[c, zc])), shape=dense.shape)
    assert stored.nnz == len(r) + len(zr), "the explicit zeros were not kept"
    plain = published_embed(pub, folder, sparse.csr_matrix(dense), var, "pooling_layer", max_length, True)
    with_zeros = published_embed(pub, folder, stored, var, "pooling_layer", max_length, True)
    key = f"stored zeros ({n_zeros} per cell): published embedding moves by max |diff| / max |z|"
    report[key] = rel_max(with_zeros, plain)
    enc = load_bmfm(folder, max_length=max_length, pool="pooling_layer").encoder.double()
    ours = enc(torch.as_tensor(stored[:, ctx["perm"]].toarray())).detach().numpy()
    report[f"stored zeros ({n_zeros} per cell): scsig's embedding vs published without the zeros"] = rel_max(
        ours, plain
    )


def run_checks(pub: dict, work: Path, quick: bool = False) -> dict:
    """Build the random checkpoint, run every check and print the numbers; returns them."""
    import scsig as sg

    folder = work / "model"
    folder.mkdir()
    genes = build_folder(pub, folder, n_genes=400, seed=0)
    print("model folder:", sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()))
    var = list(np.random.default_rng(1).permutation(genes))  # the data's gene order differs from the vocabulary's
    sizes = [3, 300, 40] if quick else [3, 300, 40, 1, 120, 17]
    counts = counts_matrix(len(var), sizes, seed=2)
    gene_order = list(sg.models.load(folder).gene_order)
    col = {g: j for j, g in enumerate(var)}
    perm = np.array([col[g] for g in gene_order])
    ctx = {"folder": folder, "counts": counts, "var": var, "xm": counts[:, perm], "perm": perm}
    ctx.update(max_length=512, gene_order=gene_order)  # no cell is cut at 512: the crop is checked separately
    n_steps = 16 if quick else 50
    report: dict[str, float] = {}
    check_embeddings(pub, ctx, report)
    check_ig(pub, ctx, report, n_steps)
    check_batch(ctx, report, n_steps)
    check_long_cell(pub, ctx, report)
    for n_zeros in (1, 5):
        check_stored_zeros(pub, ctx, report, n_zeros)
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value:.2e}")
    return report
