"""scsig's scFoundation loader checked against scFoundation's published code, fetched at run time.

The published code (biomap-research/scFoundation, ``model/``) is never part of this repository: the script
downloads the files below at pinned commits into a temporary folder (``urllib``), or reads them from
``--source DIR``, a folder laid out like the repository (``DIR/model/load.py``, ``DIR/model/pretrainmodels/...``).

| file | commit | what was read |
| --- | --- | --- |
| ``model/load.py`` | ``948a8cc`` | the official file at that commit |
| ``model/get_embedding.py`` | ``69b0710`` | the official file (newest stored version; older ones have no ``--pool_type``) |
| ``model/pretrainmodels/__init__.py`` | ``948a8cc`` | the official file |
| ``model/pretrainmodels/select_model.py`` | ``948a8cc`` | the official file |
| ``model/pretrainmodels/mae_autobin.py`` | ``948a8cc`` | see below |
| ``model/pretrainmodels/transformer.py`` | ``948a8cc`` | see below |

``mae_autobin.py`` and ``transformer.py`` are not in the code library's copy of the official repository, but
``select_model.py`` at ``948a8cc`` imports them (``.mae_autobin``, ``.transformer``), so they exist at that commit
at these paths and are pinned there. What was read instead: ``mae_autobin.py`` as vendored by xbbq/scf
(``model/pretrainmodels/mae_autobin.py`` at ``fed0997``; the same code as Starlitnightly/omicverse's
``omicverse/externel/biollm/repo/scfoundation/model/pretrainmodels/mae_autobin.py`` at ``164bea3``), and
``pytorchTransformerModule`` (post-norm ``nn.TransformerEncoderLayer``s with ``batch_first=True``, then a
``LayerNorm``) as several stored copies of scFoundation's code carry it; bio-info-guy/scFoundationFlash
``model/pretrainmodels/transformer.py`` at ``0ec822e`` keeps it as its non-flash branch. Where an official file
differs from these copies in what an edit touches, the script stops and names the edit.

Not fetched: ``model/pretrainmodels/performer.py`` (official, ``948a8cc``) builds the MAE decoder, never on
the cell-embedding path, and needs ``local_attention`` and a ``pretrainmodels/reversible.py`` the code library
does not hold. A stub ``PerformerModule`` goes into ``sys.modules`` instead (a few linear layers, so the
checkpoint carries decoder keys as the real one does), and so does an ``einops`` stub when einops is not
installed (``mae_autobin.py`` imports it; unused on this path).

Edits, applied at run time as literal substitutions and printed: ``.cuda()`` removed (CPU), the hard-coded
19,264 genes (19,266 tokens) set to the test model's, and, for the float64 run only, the ``.float()`` of the
values made dtype-preserving (torch's default dtype is float64 during that run). ``get_embedding.py`` then
runs as its own command line (``runpy``) in a folder holding ``models/models.ckpt`` (random-weight
``MaeAutobin``s built with the published ``select_model``, saved in the released checkpoint's layout) and
``OS_scRNA_gene_index.19264.tsv``. It is compared with ``sg.models.load`` (embeddings: ``tgthighres``
t4/f2/a0.5, ``pool_type`` all/max, float32 and float64), and captum's ``IntegratedGradients`` over the
published module's value input with scsig's attributions; plus batch invariance, the config under
``strict_config=True``, cells of one and two counts, and the test suite's scFoundation writer read by the
published ``convertconfig`` + ``select_model``.

    python benchmarks/published_scfoundation.py                    # downloads the pinned files (needs internet)
    python benchmarks/published_scfoundation.py --source DIR       # a local copy laid out like the repository
    python benchmarks/published_scfoundation.py --source DIR --quick   # one small model, about 10 s
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import runpy
import shutil
import sys
import tempfile
import types
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

REPO = "biomap-research/scFoundation"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
FILES = {
    "model/load.py": "948a8ccb950d096148cf03418d870acdcadebd7b",
    "model/get_embedding.py": "69b0710660aded7e071d4f67e9f3ac03b096e587",
    "model/pretrainmodels/__init__.py": "948a8ccb950d096148cf03418d870acdcadebd7b",
    "model/pretrainmodels/select_model.py": "948a8ccb950d096148cf03418d870acdcadebd7b",
    "model/pretrainmodels/mae_autobin.py": "948a8ccb950d096148cf03418d870acdcadebd7b",
    "model/pretrainmodels/transformer.py": "948a8ccb950d096148cf03418d870acdcadebd7b",
}
PUBLISHED_GENES = 19264
SOURCE_HINT = (
    "pass --source DIR, a folder laid out like the repository (DIR/model/load.py, DIR/model/pretrainmodels/...)"
)


def fetch(dest: Path, files: dict[str, str] = FILES, *, base: str = RAW, repo: str = REPO, timeout: float = 30):
    """Download ``files`` (path -> commit) from ``base`` into ``dest``, keeping the repository layout.

    Returns the written paths. Raises ``RuntimeError`` naming the URL and the ``--source`` way round when a
    download fails (no internet, a 404).
    """
    written = {}
    for path, commit in files.items():
        url = base.format(repo=repo, commit=commit, path=path)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                data = response.read()
        except urllib.error.HTTPError as exc:
            msg = f"downloading {url} failed: HTTP {exc.code} {exc.reason}; get the file by hand and {SOURCE_HINT}."
            raise RuntimeError(msg) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            msg = f"downloading {url} failed ({reason}); offline? Copy the files listed in FILES from github.com/{repo} and {SOURCE_HINT}."
            raise RuntimeError(msg) from exc
        target = dest / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        written[path] = target
    return written


def copy_source(source: Path, dest: Path, files: dict[str, str] = FILES) -> dict[str, Path]:
    """Copy ``files`` from a local folder laid out like the repository into ``dest``."""
    missing = [p for p in files if not (source / p).is_file()]
    if missing:
        msg = f"--source {source} lacks {missing}; give the repository's root: {SOURCE_HINT.split(', ', 1)[1]}."
        raise FileNotFoundError(msg)
    written = {}
    for path in files:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        written[path] = Path(shutil.copyfile(source / path, dest / path))
    return written


@dataclass(frozen=True)
class Edit:
    """A literal substitution in a published file; ``count`` is how often ``old`` must occur."""

    path: str
    old: str
    new: str
    why: str
    count: int


def edits(n_genes: int, *, float64: bool) -> list[Edit]:
    """The run-time edits of the published text for a model of ``n_genes`` genes."""
    emb = "model/get_embedding.py"
    out = [
        Edit("model/load.py", "return model.cuda(),config", "return model,config", "CPU instead of the GPU", 2),
        Edit(emb, ".unsqueeze(0).cuda()", ".unsqueeze(0)", "CPU instead of the GPU", 4),
    ]
    if n_genes != PUBLISHED_GENES:
        out += [
            Edit(emb, "shape[1]<19264", f"shape[1]<{n_genes}", "the test model's gene count", 1),
            Edit(emb, "shape[1]>=19264", f"shape[1]>={n_genes}", "the test model's gene count", 1),
            Edit(emb, "torch.arange(19266,", f"torch.arange({n_genes + 2},", "the test model's token count", 2),
        ]
    if float64:
        out.append(
            Edit(emb, "torch.unsqueeze(x, 2).float()", "torch.unsqueeze(x, 2).to(torch.get_default_dtype())",
                 "float64 run: keep the values' dtype (published: float32)", 1)
        )  # fmt: skip
    return out


def apply_edits(text: str, path: str, todo: list[Edit]) -> str:
    """Apply the edits of ``path`` to ``text``; a count that does not match stops the run."""
    for edit in (e for e in todo if e.path == path):
        found = text.count(edit.old)
        if found != edit.count:
            msg = (
                f"{path}: expected {edit.count} occurrence(s) of {edit.old!r}, found {found}; the published file "
                "differs from the pinned version, so this edit no longer applies."
            )
            raise RuntimeError(msg)
        text = text.replace(edit.old, edit.new)
    return text


def prepare_tree(fetched: Path, dest: Path, gene_counts) -> tuple[Path, list[Edit]]:
    """Patched copies in ``dest/model``: ``get_embedding_<n>.py`` (and ``_f64``) per gene count; the edits."""
    done = []
    for path in FILES:
        text = (fetched / path).read_text(encoding="utf-8")
        variants = {path: False} if path != "model/get_embedding.py" else {
            f"model/get_embedding_{n}{'_f64' if f64 else ''}.py": (n, f64) for n in gene_counts for f64 in (0, 1)
        }  # fmt: skip
        for target, how in variants.items():
            todo = edits(how[0] if how else PUBLISHED_GENES, float64=bool(how and how[1]))
            (dest / target).parent.mkdir(parents=True, exist_ok=True)
            (dest / target).write_text(apply_edits(text, path, todo), encoding="utf-8")
            done += [e for e in todo if e.path == path and e not in done]
    return dest / "model", done


class _StubPerformer(torch.nn.Module):
    """Stands in for the published performer decoder, never run on the cell-embedding path."""

    def __init__(self, max_seq_len, dim, depth, heads, dim_head=64, ff_dropout=0.0, attn_dropout=0.0, **kwargs):
        super().__init__()
        self.max_seq_len = max_seq_len
        self.layers = torch.nn.ModuleList([torch.nn.Linear(dim, dim) for _ in range(depth)])
        self.norm = torch.nn.LayerNorm(dim)

    def forward(self, *args, **kwargs):
        msg = "stub: the performer decoder is not on the cell-embedding path"
        raise NotImplementedError(msg)


def _unused(*args, **kwargs):
    msg = "stub: einops is not used on the cell-embedding path"
    raise NotImplementedError(msg)


def install_stubs() -> list[str]:
    """Put the performer decoder (and einops when missing) into ``sys.modules``; returns what was stubbed."""
    performer = types.ModuleType("pretrainmodels.performer")
    performer.PerformerModule = _StubPerformer
    sys.modules["pretrainmodels.performer"] = performer
    done = ["pretrainmodels.performer.PerformerModule (decoder: a few linear layers, forward raises)"]
    if importlib.util.find_spec("einops") is None:
        einops = types.ModuleType("einops")
        einops.rearrange = einops.repeat = _unused
        sys.modules["einops"] = einops
        done.append("einops.rearrange/repeat (not installed; unused on this path)")
    return done


# --------------------------------------------------------------------------- models and cells


def published_config(n_genes, dim, depth, heads, bin_num):
    """The nested config as the released checkpoint holds it (fields of the real 01B config)."""
    seq_len = n_genes + 2
    model_cfg = {
        "mask_gene_name": False, "gene_num": seq_len, "seq_len": seq_len,
        "encoder": {"hidden_dim": dim, "depth": depth, "heads": heads, "dim_head": dim // heads, "seq_len": seq_len,
                    "module_type": "transformer", "norm_first": False},
        "decoder": {"hidden_dim": 8, "depth": 1, "heads": 2, "dim_head": 4, "module_type": "performer",
                    "seq_len": seq_len, "norm_first": False},
        "n_class": 104, "pad_token_id": 103, "mask_token_id": 102, "bin_num": bin_num, "bin_alpha": 1.0,
        "rawcount": True, "model": "mae_autobin",
    }  # fmt: skip
    dataset_cfg = {"rnaseq": {"num_tokens": 13, "bin_type": "auto_bin", "mae_encoder_max_seq_len": 15000,
                              "mask_prob": 0.3}}  # fmt: skip
    return {"model": "mae_autobin", "model_config": {"mae_autobin": model_cfg}, "dataset_config": dataset_cfg}


def build(pub, work: Path, n_genes=400, dim=32, depth=2, heads=4, bin_num=10, seed=0) -> list[str]:
    """A published ``MaeAutobin`` with random weights in ``work/models`` (models.ckpt + the gene list)."""
    torch.manual_seed(seed)
    nested = published_config(n_genes, dim, depth, heads, bin_num)
    model = pub.select_model({**nested["model_config"]["mae_autobin"], **nested["dataset_config"]["rnaseq"]})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif p.dim() == 2 and "emb" not in name.split(".")[-2]:
                p.copy_(torch.randn_like(p) / p.shape[1] ** 0.5)
            else:
                p.copy_(torch.randn_like(p))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    folder = work / "models"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {key: {"config": nested, "state_dict": state} for key in ("gene", "cell", "rde")}, folder / "models.ckpt"
    )
    genes = [f"GENE{i:05d}" for i in range(n_genes)]
    table = pd.DataFrame({"index": range(n_genes), "gene_name": genes})
    for where in (folder, work):  # scsig reads the model folder, the published script its working folder
        table.to_csv(where / "OS_scRNA_gene_index.19264.tsv", sep="\t", index=False)
    return genes


def cells(genes, lengths, seed=1, extra=0) -> pd.DataFrame:
    """Raw counts over a shuffled subset of the model's genes (+ ``extra`` genes the model lacks)."""
    rng = np.random.default_rng(seed)
    n = len(genes)
    x = np.zeros((len(lengths), n))
    for i, k in enumerate(lengths):
        idx = rng.choice(n, size=k, replace=False)
        x[i, idx] = rng.integers(1, 60, size=k) * (rng.random(k) < 0.2) * 10 + rng.integers(1, 6, size=k)
    keep = np.flatnonzero(x.any(axis=0) | (rng.random(n) < 0.3))[: n - extra - 1]  # fewer columns than the model
    df = pd.DataFrame(x[:, keep], columns=[genes[j] for j in keep])
    for e in range(extra):
        df[f"NOTMODEL{e}"] = rng.integers(0, 40, size=len(lengths))
    df = df[list(rng.permutation(df.columns))]
    df.index = [f"c{i}" for i in range(len(lengths))]
    return df


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------- the published code, run


def import_published(model_dir: Path) -> types.SimpleNamespace:
    """Import the patched ``load.py`` and ``pretrainmodels`` from ``model_dir`` (after :func:`install_stubs`)."""
    sys.path.insert(0, str(model_dir))
    import load  # the published model/load.py (patched copy)
    from pretrainmodels import select_model

    return types.SimpleNamespace(
        model_dir=model_dir, select_model=select_model, load_model_frommmf=load.load_model_frommmf,
        gatherData=load.gatherData, convertconfig=load.convertconfig,
    )  # fmt: skip


def published_embeddings(pub, work: Path, df, n_genes, *, res="t4", pool="all", float64=False) -> np.ndarray:
    """Run the published ``get_embedding.py`` command line on ``df`` (raw counts) in ``work``; its embeddings."""
    tag = f"{res}_{pool}_{'f64' if float64 else 'f32'}"
    out = work / f"out_{tag}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    data = work / f"cells_{tag}.csv"
    df.to_csv(data)
    script = pub.model_dir / f"get_embedding_{n_genes}{'_f64' if float64 else ''}.py"
    argv = [str(script), "--data_path", str(data), "--save_path", str(out), "--tgthighres", res,
            "--pool_type", pool, "--version", "ce", "--output_type", "cell", "--input_type", "singlecell"]  # fmt: skip
    saved = sys.argv, Path.cwd(), torch.get_default_dtype()
    try:
        sys.argv = argv
        os.chdir(work)  # it reads ./models/models.ckpt and ./OS_scRNA_gene_index.19264.tsv
        torch.set_default_dtype(torch.float64 if float64 else torch.float32)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved[0]
        os.chdir(saved[1])
        torch.set_default_dtype(saved[2])
    (result,) = out.glob("*.npy")
    return np.load(result).reshape(len(df), -1)


def scsig_embed(folder, df, *, float64, **kw):
    """scsig's embedding of ``df`` (the float64 one through the encoder cast to double)."""
    import scsig as sg
    from scsig.models._scfoundation import load_scfoundation

    model = load_scfoundation(folder, **kw)
    adata = AnnData(X=sparse.csr_matrix(df.values.astype(np.float32)), obs=pd.DataFrame(index=df.index),
                    var=pd.DataFrame(index=df.columns))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = sg.pp.prepare(adata, model, min_overlap=1).X
    if not float64:
        return model.embed(x), model, x
    with torch.no_grad():
        return model.encoder.double()(torch.as_tensor(x.toarray(), dtype=torch.float64)).numpy(), model, x


# --------------------------------------------------------------------------- checks


def check_embeddings(pub, work, df, n_genes, label, resolutions=("t4", "f2", "a0.5")) -> list:
    """Published command line against ``sg.models.load``, every pool and resolution, float32 and float64."""
    out = []
    for pool in ("all", "max"):
        for res in resolutions:
            ref32 = published_embeddings(pub, work, df, n_genes, res=res, pool=pool)
            ours32, _, _ = scsig_embed(work / "models", df, float64=False, pool=pool, resolution=res)
            ref64 = published_embeddings(pub, work, df, n_genes, res=res, pool=pool, float64=True)
            ours64, _, _ = scsig_embed(work / "models", df, float64=True, pool=pool, resolution=res)
            out.append((rel(ours32, ref32), rel(ours64, ref64)))
            print(f"[{label}] embedding pool={pool} res={res}: float32 max rel {out[-1][0]:.1e}, "
                  f"float64 max rel {out[-1][1]:.1e}  shape {ours32.shape}")  # fmt: skip
    return out


class PublishedValues(torch.nn.Module):
    """The published cell path for one cell with its token set fixed; input: the gene tokens' values."""

    def __init__(self, pub_model, pos_ids, extras, pool):
        super().__init__()
        self.pub, self.pos_ids, self.extras, self.pool = pub_model, pos_ids, extras, pool

    def embed(self, vals):
        b = vals.shape[0]
        x = torch.cat([vals, self.extras.expand(b, -1)], dim=1)
        h = self.pub.token_emb(x.unsqueeze(2), output_weight=0) + self.pub.pos_emb(self.pos_ids.expand(b, -1))
        g = self.pub.encoder(h, torch.zeros(x.shape, dtype=torch.bool))
        if self.pool == "max":
            return g.max(dim=1).values
        return torch.cat([g[:, -1], g[:, -2], g[:, :-2].max(dim=1).values, g[:, :-2].mean(dim=1)], dim=1)

    def forward(self, vals, ref):
        return torch.sum(torch.abs(ref * self.embed(vals)), dim=1)


def published_tokens(pub, counts: np.ndarray):
    """The published script's token values and positions of one cell (model gene order, ``t4``), float64."""
    total = counts.sum()
    vals = np.log1p(counts / total * 1e4)
    x = torch.tensor([*vals, 4.0, np.log10(total)], dtype=torch.float64)[None]
    labels = x > 0
    xg, _ = pub.gatherData(x, labels, 103)
    pos, _ = pub.gatherData(torch.arange(x.shape[1])[None], labels, 103)
    return xg, pos


def captum_reference(pub, work, x, n_steps, pool) -> np.ndarray:
    """Captum's integrated gradients over the published module's value input, cell by cell (float64)."""
    from captum.attr import IntegratedGradients

    with contextlib.redirect_stdout(io.StringIO()):
        model, _ = pub.load_model_frommmf(str(work / "models" / "models.ckpt"), "cell")
    model.eval().double()
    aligned = x.toarray().astype(np.float64)
    out = np.zeros_like(aligned)
    for i in range(aligned.shape[0]):
        xg, pos = published_tokens(pub, aligned[i])
        vals, extras = xg[:, :-2].clone(), xg[:, -2:].clone()
        mod = PublishedValues(model, pos, extras, pool)
        with torch.no_grad():
            ref = mod.embed(vals)
        ig = IntegratedGradients(mod, multiply_by_inputs=True)
        a = ig.attribute(vals, baselines=torch.zeros_like(vals), additional_forward_args=(ref,), n_steps=n_steps,
                         method="gausslegendre")  # fmt: skip
        out[i, pos[0, :-2].numpy()] = a.detach().numpy()[0]
    return out


def check_attributions(pub, work, df, genes, n_steps=32, pool="all") -> tuple[float, float]:
    """scsig's raw attributions (float64) and ``sg.tl.attribute``'s layer (float32) against captum's."""
    import scsig as sg
    from scsig.attribution import TargetModule
    from scsig.attribution._tokens import token_attributions
    from scsig.models._scfoundation import load_scfoundation

    _, model, x = scsig_embed(work / "models", df, float64=True, pool=pool)
    ours = token_attributions(TargetModule(model.encoder), model, x, n_steps=n_steps)[0].toarray()
    ref = captum_reference(pub, work, x, n_steps, pool)
    worst = float(max(np.abs(ours[i] - ref[i]).sum() / np.abs(ref[i]).sum() for i in range(ref.shape[0])))
    print(f"attributions ({pool}, float64, {n_steps} steps): max relative row-L1 vs captum on the published module "
          f"{worst:.1e} over {ref.shape[0]} cells (lengths {np.diff(x.indptr).tolist()})")  # fmt: skip
    adata = AnnData(X=sparse.csr_matrix(df.values.astype(np.float32)), obs=pd.DataFrame(index=df.index),
                    var=pd.DataFrame(index=df.columns))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sg.tl.attribute(adata, load_scfoundation(work / "models", pool=pool), n_steps=n_steps, min_overlap=1,
                        progress=False)  # fmt: skip
    layer = adata.layers["attr_ig"].toarray()
    col = {g: j for j, g in enumerate(genes)}
    expect = np.zeros_like(layer)
    for j, g in enumerate(df.columns):
        if g in col:
            expect[:, j] = np.abs(ref[:, col[g]])
    expect = expect / expect.sum(axis=1, keepdims=True) * 1000
    e2e = float((np.abs(layer - expect).sum(axis=1) / 1000).max())
    print(f"sg.tl.attribute (float32) vs |captum| rescaled to 1,000: max relative row-L1 {e2e:.1e}")
    return worst, e2e


def check_batch(work, genes) -> tuple[float, float]:
    """A 3-gene cell alone and batched with a 300-gene one: attributions and embeddings, float64 and float32."""
    from scsig.attribution import TargetModule
    from scsig.attribution._tokens import token_attributions
    from scsig.models._scfoundation import load_scfoundation

    rng = np.random.default_rng(5)
    x = np.zeros((2, len(genes)))
    x[0, rng.choice(len(genes), 3, replace=False)] = [1, 4, 9]
    x[1, rng.choice(len(genes), 300, replace=False)] = rng.integers(1, 30, 300)
    xs = sparse.csr_matrix(x)
    result = []
    for float64 in (True, False):
        model = load_scfoundation(work / "models")
        if float64:
            model.encoder.double()
        mod = TargetModule(model.encoder)
        both = token_attributions(mod, model, xs, n_steps=16)[0].toarray()
        alone = np.vstack([token_attributions(mod, model, xs[i], n_steps=16)[0].toarray() for i in range(2)])
        if float64:
            with torch.no_grad():
                e_both = model.encoder(torch.as_tensor(x)).numpy()
                e_alone = np.vstack([model.encoder(torch.as_tensor(x[i : i + 1])).numpy() for i in range(2)])
        else:
            e_both, e_alone = model.embed(xs), np.vstack([model.embed(xs[i]) for i in range(2)])
        result.append((rel(both, alone), rel(e_both, e_alone)))
        print(f"batch invariance (3 and 300 genes, {'float64' if float64 else 'float32'}): attributions max rel "
              f"{result[-1][0]:.1e}, embeddings max rel {result[-1][1]:.1e}")  # fmt: skip
    return result[0]


def check_strict(work) -> None:
    import scsig as sg

    try:
        sg.models.load(work / "models")
    except Exception as exc:  # noqa: BLE001  (reported, not raised: the run goes on with strict_config=False)
        print(f"sg.models.load on the published config FAILED: {type(exc).__name__}: {exc}")
        return
    print("sg.models.load reads the published config with strict_config=True")


def check_small_cells(pub, work, genes) -> None:
    """Cells of one count (log10(1) = 0: the published script drops the S token) and of two counts."""
    for picked, what in (([3], "1 count"), ([3, 7], "2 counts")):
        df = pd.DataFrame(np.zeros((1, len(genes))), columns=genes, index=["c0"])
        df.iloc[0, picked] = 1
        for pool in ("all", "max"):
            try:
                ref = published_embeddings(pub, work, df, len(genes), pool=pool, float64=True)
            except Exception as exc:  # noqa: BLE001  (the published script's own failure is the finding)
                print(f"cell of {what}, pool={pool}: the published script fails: {type(exc).__name__}: {exc}")
                continue
            ours, _, _ = scsig_embed(work / "models", df, float64=True, pool=pool)
            print(f"cell of {what}, pool={pool}: max rel {rel(ours, ref):.1e}")


def check_test_writer(pub, tmp: Path) -> None:
    """The test suite's scFoundation writer, read by the published ``convertconfig`` + ``select_model``."""
    path = Path(__file__).resolve().parents[1] / "tests" / "models" / "tokens" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_scf_test_writer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.write_scfoundation_folder(tmp / "writer", n_genes=30, dim=16, heads=2, depth=2)
    raw = torch.load(tmp / "writer" / "models.ckpt", weights_only=True)
    for key in ("cell", "rde", "gene"):
        data = pub.convertconfig(raw[key])
        res = pub.select_model(data["config"]).load_state_dict(data["model_state_dict"], strict=False)
        odd = [k for k in [*res.missing_keys, *res.unexpected_keys] if not k.startswith("decoder.")]
        print(f"test writer's models.ckpt[{key!r}] in the published select_model: encoder keys missing or "
              f"unexpected: {odd or 'none'}")  # fmt: skip


MODELS = {  # label: build() arguments, cell lengths, extra genes, integrated-gradient steps
    "400 genes, width 32": ({"n_genes": 400}, [3, 12, 40, 120, 300], {"seed": 1, "extra": 5}, 32),
    "300 genes, width 64, 3 layers, 8 heads, 100 bins": (
        {"n_genes": 300, "dim": 64, "depth": 3, "heads": 8, "bin_num": 100, "seed": 7}, [3, 50, 250],
        {"seed": 4, "extra": 2}, 20),
    "19,264 genes, width 8": (
        {"n_genes": 19264, "dim": 8, "depth": 1, "heads": 2, "bin_num": 10, "seed": 3}, [5, 200, 2000],
        {"seed": 2, "extra": 3}, 16),
}  # fmt: skip


def run(pub, tmp: Path, quick: bool) -> dict[str, float]:
    """Every check on every model (the first model only, one resolution, with ``quick``); the worst numbers."""
    worst = dict.fromkeys(("emb32", "emb64", "attr64", "layer32", "batch_attr64", "batch_emb64"), 0.0)
    for k, (label, (kw, lengths, cell_kw, steps)) in enumerate(MODELS.items()):
        if quick and k:
            break
        work = tmp / f"model{k}"
        genes = build(pub, work, **kw)
        df = cells(genes, lengths, **cell_kw)
        if k == 0:
            check_strict(work)
        res = ("t4",) if quick else ("t4", "f2", "a0.5")
        for e32, e64 in check_embeddings(pub, work, df, len(genes), label, res):
            worst["emb32"], worst["emb64"] = max(worst["emb32"], e32), max(worst["emb64"], e64)
        for pool in ("all", "max") if k == 0 else ("all",):
            a64, l32 = check_attributions(pub, work, df, genes, n_steps=8 if quick else steps, pool=pool)
            worst["attr64"], worst["layer32"] = max(worst["attr64"], a64), max(worst["layer32"], l32)
        if k == 0:
            worst["batch_attr64"], worst["batch_emb64"] = check_batch(work, genes)
            check_small_cells(pub, work, genes)
            check_test_writer(pub, tmp)
    return worst


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="a local copy laid out like the repository, instead of GitHub")
    parser.add_argument("--quick", action="store_true", help="the 400-gene model only, resolution t4, 8 steps")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"published code: {REPO}")
    for path, commit in FILES.items():
        print(f"  {path} @ {commit}")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.source is None:
            print(f"source: downloaded from {RAW.format(repo=REPO, commit='<commit>', path='<path>')}")
            fetch(tmp / "fetched")
        else:
            print(f"source: --source {args.source.resolve()}")
            copy_source(args.source, tmp / "fetched")
        counts = [kw["n_genes"] for kw, *_ in MODELS.values()][: 1 if args.quick else None]
        model_dir, done = prepare_tree(tmp / "fetched", tmp / "patched", counts)
        print("edits of the published text (literal substitutions, occurrences checked):")
        for e in done:
            print(f"  {e.path}: {e.old!r} -> {e.new!r} x{e.count} ({e.why})")
        print("stubs in sys.modules: " + "; ".join(install_stubs()))
        worst = run(import_published(model_dir), tmp, args.quick)
    quick = "(--quick: one model, 8 steps; docs/token_models.md quotes the full run)"
    print(f"\nworst over the models {quick if args.quick else '(as docs/token_models.md quotes them)'}:")
    print(f"  embeddings: float32 {worst['emb32']:.1e}, float64 {worst['emb64']:.1e} (max relative)")
    print(f"  raw attributions vs captum on the published module (float64): {worst['attr64']:.1e} (row-L1)")
    print(f"  sg.tl.attribute layer vs captum rescaled to 1,000 (float32): {worst['layer32']:.1e} (row-L1)")
    print(f"  batch invariance (float64): attributions {worst['batch_attr64']:.1e}, "
          f"embeddings {worst['batch_emb64']:.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
