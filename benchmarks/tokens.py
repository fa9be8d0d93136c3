"""The token engine against captum on the same token-transformer module (scGPT or BMFM-RNA architecture, random weights).

For each of ``--cells`` synthetic cells (``--expressed`` expressed genes out of ``--genes``), times

- the token engine (``scsig.attribution._tokens.token_attributions``: cells sorted by length, cells x
  steps rows per pass, padding masked), and
- captum's ``IntegratedGradients`` on a dense-input module over all genes whose token set is that
  cell's (one cell per call, all steps in one batch: captum cannot batch cells with different tokens),

both with 50 Gauss-Legendre steps, the self-similarity target and the same float32 module, and prints
seconds per 1,000 cells and the largest relative row-L1 difference between the two (and of the float32
engine against a float64 run of itself).

    python benchmarks/tokens.py                                        # small config
    python benchmarks/tokens.py --size real --cells 2 --expressed 300   # scGPT's sizes (d 512, 12 layers)
    python benchmarks/tokens.py --arch bmfm                             # BMFM-RNA's scBERT, small config
    python benchmarks/tokens.py --arch bmfm --size real --cells 2 --expressed 100  # its sizes (768, 12 layers)
    python benchmarks/tokens.py --size real --data kang --cells 8 --steps 10 --captum-batch 8 --no-float64
        # scGPT's sizes on the bundled Kang cells; captum also on 8-cell batches padded to the longest

scGPT's cells are log1p values (what its value encoder takes after binning is replaced by the expected bin);
BMFM-RNA's are raw counts, which its loader's recipe turns into log1p counts per 10,000.
"""

from __future__ import annotations

import argparse
import copy
import resource
import time

import numpy as np
import torch
from scipy import sparse

SIZES = {
    "scgpt": {
        "small": {"d_model": 64, "n_heads": 4, "d_hid": 128, "n_layers": 2},
        "real": {"d_model": 512, "n_heads": 8, "d_hid": 512, "n_layers": 12},
    },
    "scfoundation": {
        "small": {"dim": 64, "heads": 4, "depth": 2},
        "real": {"dim": 768, "heads": 12, "depth": 12},
    },
    "bmfm": {
        "small": {"d_model": 64, "n_heads": 4, "d_ff": 256, "n_layers": 2},
        "real": {"d_model": 768, "n_heads": 12, "d_ff": 3072, "n_layers": 12},
    },
}


def _encoder(arch: str, size: str, n_genes: int) -> torch.nn.Module:
    if arch == "scfoundation":
        from scsig.models._scfoundation import ScFoundationEncoder

        return ScFoundationEncoder(
            n_genes=n_genes, bin_num=100, bin_alpha=1.0, seq_len=n_genes + 2, **SIZES[arch][size]
        )  # fmt: skip
    if arch == "bmfm":
        from scsig.models._bmfm import BmfmEncoder

        return BmfmEncoder(
            n_tokens=n_genes + 5, gene_token_ids=np.arange(5, n_genes + 5), cls_id=2, sep_id=3, pad_id=0,
            cls_row=2, sep_row=3, pad_row=0, n_special=6, **SIZES[arch][size],
        )  # fmt: skip
    from scsig.models._scgpt import ScGPTEncoder

    return ScGPTEncoder(
        n_tokens=n_genes + 3,
        gene_token_ids=np.arange(n_genes),
        cls_id=n_genes + 1,
        pad_id=n_genes,
        max_seq_len=1200,
        **SIZES[arch][size],
    )


def _model(arch: str, size: str, n_genes: int):
    from scsig.models import FoundationModel, Preprocessing

    torch.manual_seed(0)
    enc = _encoder(arch, size, n_genes)
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.5 / max(p.shape[-1], 1) ** 0.5)
        for m in enc.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.fill_(1.0)
    genes = [f"g{i}" for i in range(n_genes)]
    if arch in ("bmfm", "scfoundation"):  # their encoders take raw counts
        recipe = Preprocessing(target_sum=None, log1p=False, requires_counts=True)
    else:
        recipe = Preprocessing(target_sum=1e4, log1p=True)
    return FoundationModel(enc.eval(), genes, preprocessing=recipe)


def _cells(n_cells: int, n_genes: int, expressed: int, *, log1p: bool, seed: int = 0) -> sparse.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = np.zeros((n_cells, n_genes))
    for row in rows:
        k = int(rng.integers(expressed // 2, expressed + 1))
        row[rng.choice(n_genes, size=k, replace=False)] = rng.poisson(2.0, size=k) + 1
    return sparse.csr_matrix(np.log1p(rows) if log1p else rows)


def _captum(model, x: sparse.csr_matrix, n_steps: int) -> np.ndarray:
    from captum.attr import IntegratedGradients

    enc = model.encoder
    genes, vals, extras, _ = enc.tokenize(x)
    dtype = next(enc.parameters()).dtype
    out = np.zeros(x.shape)

    class Dense(torch.nn.Module):
        def __init__(self, g: np.ndarray, ext: np.ndarray) -> None:
            super().__init__()
            self.g, self.ext = torch.as_tensor(g), torch.as_tensor(ext, dtype=dtype)[None]

        def embed(self, dense: torch.Tensor) -> torch.Tensor:
            v = dense[:, self.g]
            n = v.shape[0]
            pad = torch.zeros_like(v, dtype=torch.bool)
            return enc.embed_tokens(self.g.expand(n, -1), v, pad, self.ext.expand(n, -1))

        def forward(self, dense: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
            return (self.embed(dense) * ref).abs().sum(dim=1)

    for i, (g, v) in enumerate(zip(genes, vals, strict=True)):
        module = Dense(g, extras[i])
        dense = torch.zeros((1, x.shape[1]), dtype=dtype)
        dense[0, g] = torch.as_tensor(v, dtype=dtype)
        with torch.no_grad():
            ref = module.embed(dense)
        ig = IntegratedGradients(module)
        attr = ig.attribute(
            dense, baselines=dense * 0, additional_forward_args=(ref,), n_steps=n_steps, method="gausslegendre"
        )
        out[i] = attr.detach().double().numpy()[0]
    return out


def _captum_padded(model, x: sparse.csr_matrix, n_steps: int, batch: int) -> np.ndarray:
    """Captum on batches of ``batch`` cells padded to the batch's longest cell (as scGPT's DataCollator pads), padding masked."""
    from captum.attr import IntegratedGradients

    from scsig.models._tokens import pad_tokens

    enc = model.encoder
    genes, vals, extras, _ = enc.tokenize(x)
    dtype = next(enc.parameters()).dtype
    out = np.zeros(x.shape)

    def embed(v, g, pad, ext):
        return enc.embed_tokens(g, v, pad, ext)

    def forward(v, g, pad, ext, ref):
        return (embed(v, g, pad, ext) * ref).abs().sum(dim=1)

    ig = IntegratedGradients(forward)
    for lo in range(0, len(genes), batch):
        g, v, pad = pad_tokens(genes[lo : lo + batch], vals[lo : lo + batch], dtype=dtype)
        ext = torch.as_tensor(extras[lo : lo + batch], dtype=dtype)
        with torch.no_grad():
            ref = embed(v, g, pad, ext)
        attr = ig.attribute(
            v, baselines=v * 0, additional_forward_args=(g, pad, ext, ref), n_steps=n_steps, method="gausslegendre"
        )
        attr = attr.detach().double().numpy()
        for j, (gi, ai) in enumerate(zip(genes[lo : lo + batch], attr, strict=True)):
            out[lo + j, gi] = ai[: len(gi)]
    return out


def _kang(n_cells: int, arch: str, size: str):
    """The first ``n_cells`` bundled Kang cells and a random-weight model over Kang's genes."""
    import scsig as sg

    adata = sg.datasets.kang_ifnb()
    model = _model(arch, size, adata.n_vars)
    model.gene_order = list(adata.var_names)
    counts = sparse.csr_matrix(adata.X[:n_cells])
    return model, model.preprocessing.apply(counts)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.abs(a - b).sum(axis=1) / np.maximum(np.abs(b).sum(axis=1), 1e-30)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=sorted(SIZES), default="scgpt")
    parser.add_argument("--size", choices=["real", "small"], default="small")
    parser.add_argument("--cells", type=int, default=100)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--expressed", type=int, default=200)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--data", choices=["synthetic", "kang"], default="synthetic", help="kang: the bundled Kang cells"
    )
    parser.add_argument(
        "--captum-batch", type=int, default=0, help="also time captum on padded batches of this many cells (0: not)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="timed runs of each method, taking turns (median)")
    parser.add_argument("--no-captum", action="store_true", help="time the engine only")
    parser.add_argument("--no-float64", action="store_true", help="skip the float64 engine run (slow at real sizes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from scsig.attribution import TargetModule
    from scsig.attribution._tokens import token_attributions

    if args.data == "kang":
        model, x = _kang(args.cells, args.arch, args.size)
    else:
        model = _model(args.arch, args.size, args.genes)
        x = _cells(args.cells, args.genes, args.expressed, log1p=args.arch == "scgpt")  # BMFM, scFoundation: counts
    module = TargetModule(model.encoder, "self_similarity")
    runs = {
        "engine": lambda: token_attributions(module, model, x, n_steps=args.steps)[0].toarray(),
    }
    if not args.no_captum:
        runs["captum"] = lambda: _captum(model, x, args.steps)
    if args.captum_batch:
        runs["padded"] = lambda: _captum_padded(model, x, args.steps, args.captum_batch)
    # warm-up on two cells and two steps (the first large allocations of a process are slow), then the
    # methods take turns, --repeats times each; the median time counts
    token_attributions(module, model, x[:2], n_steps=2)
    if not args.no_captum:
        _captum(model, x[:2], 2)
    times: dict[str, list[float]] = {k: [] for k in runs}
    results = {}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
            if name == "engine" and not times["engine"][1:]:  # before any timed captum run raised the peak
                peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # model, data, the engine's passes
    t_ours, ours = float(np.median(times["engine"])), results["engine"]
    if not args.no_captum:
        t_captum, ref = float(np.median(times["captum"])), results["captum"]
    if args.captum_batch:
        t_padded, padded = float(np.median(times["padded"])), results["padded"]
    if not args.no_float64:
        model64 = copy.deepcopy(model)
        model64.encoder.double()
        ours64 = token_attributions(TargetModule(model64.encoder), model64, x, n_steps=args.steps)[0].toarray()
    per = 1000 / args.cells
    print(
        f"{args.arch} {args.size} config, {args.cells} cells, {np.diff(x.indptr).mean():.0f} expressed genes per cell, {args.steps} steps, {args.threads} threads, median of {args.repeats} run(s)"
    )
    print(f"token engine: {t_ours * per:.1f} s per 1,000 cells; peak memory {peak_gb:.2f} GB")
    if not args.no_captum:
        print(
            f"captum, one cell per call: {t_captum * per:.1f} s per 1,000 cells ({t_captum / t_ours:.1f}x the engine's time)"
        )
        print(f"max relative row-L1: engine vs captum (float32) {_rel(ours, ref):.2e}")
    if args.captum_batch:
        print(
            f"captum, {args.captum_batch} cells per call padded to the longest: {t_padded * per:.1f} s per 1,000 cells "
            f"({t_padded / t_ours:.1f}x the engine's time; max relative row-L1 to the engine {_rel(ours, padded):.2e})"
        )
    if not args.no_float64:
        print(f"max relative row-L1: float32 vs float64 engine {_rel(ours, ours64):.2e}")


if __name__ == "__main__":
    main()
