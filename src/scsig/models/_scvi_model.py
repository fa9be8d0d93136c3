r"""scvi-tools models (scVI, scANVI, ...) as attribution backends.

The attributed function is the latent mean of the model's ``z_encoder`` (``qz.loc``), as a
function of the genes only. scVI's encoder is a stack of blocks
``Linear -> [BatchNorm1d] -> [LayerNorm] -> ReLU -> [Dropout]`` and a linear mean head. With
``encode_covariates=True`` the first Linear also takes the cell's continuous covariates and the
one-hot codes of its batch and categorical covariates (the deeper Linears take the one-hot codes
too when covariates are injected deeply). Those inputs are held fixed at each cell's own values:
for a fixed covariate vector :math:`e`, :math:`W [x; e] + b = W_x x + (W_e e + b)`, so each group of
cells that shares its covariates sees a plain :class:`torch.nn.Sequential` whose Linears carry the
folded bias :math:`W_e e + b`. Attributions are computed group by group on those Sequentials (the
fast path covers them exactly); nothing is attributed to covariates, and the library size is not
an input of the encoder at all.

A saved model folder (``model.pt``) is read without scvi-tools and without arbitrary unpickling:
its pickle needs a few numpy/pandas container types, which are allow-listed for
``torch.load(weights_only=True)``; the encoder is rebuilt from the state dict and the saved
initialization parameters.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ._base import FoundationModel, Preprocessing

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pandas as pd
    import torch
    from torch import nn

__all__ = ["ScviModel"]

_INPUTS = ("encoder", "model", "counts")


@dataclass
class _Covariates:
    """The encoder's covariate inputs and where a cell's values come from in ``adata.obs``."""

    cont_keys: list[str] = field(default_factory=list)  # continuous covariates (first layer only)
    cat_keys: list[str] = field(default_factory=list)  # obs columns of the one-hot covariates, in order
    cat_levels: list[list[str]] = field(default_factory=list)  # their levels, in code order
    embed_key: str | None = None  # obs column of a batch represented by an embedding
    embed_levels: list[str] = field(default_factory=list)
    embedding: np.ndarray | None = None  # (n_levels, dim) float32
    deep: bool = False  # one-hot codes also enter the deeper Linears

    @property
    def any(self) -> bool:
        return bool(self.cont_keys or self.cat_keys or self.embed_key)

    def width_first(self) -> int:
        emb = 0 if self.embedding is None else self.embedding.shape[1]
        return len(self.cont_keys) + emb + sum(len(lv) for lv in self.cat_levels)

    def width_deep(self) -> int:
        return sum(len(lv) for lv in self.cat_levels) if self.deep else 0


class ScviModel(FoundationModel):
    """A scvi-tools encoder (``z_encoder`` -> latent mean) with its covariates held fixed per cell.

    Made by :func:`scsig.models.from_scvi` or :func:`scsig.models.load` on a saved scvi-tools
    model folder; not meant to be built by hand. ``encoder`` is the encoder of cells whose
    covariates are all at their first level (and continuous covariates at 0), the only encoder
    of a model without encoder covariates; :meth:`cell_groups` gives every cell its own.
    """

    fast_path_auto = True
    """``engine="auto"`` takes the exact fast path for these encoders (each group's is a plain Sequential)."""

    def __init__(
        self,
        linears: list[tuple[torch.Tensor, torch.Tensor | None]],
        posts: list[list[nn.Module]],
        head: tuple[torch.Tensor, torch.Tensor | None],
        gene_order: Sequence[str],
        covariates: _Covariates,
        *,
        preprocessing: Preprocessing,
        name: str,
        source: str | None,
        model_class: str,
        log1p_inside: bool = False,
    ) -> None:
        import torch

        self._log1p_inside = log1p_inside
        self._weights = [torch.nn.Parameter(w.detach().float().clone(), requires_grad=False) for w, _ in linears]
        self._biases = [None if b is None else b.detach().float().clone() for _, b in linears]
        self._posts = posts
        self._head = head
        self.covariates = covariates
        self.model_class = model_class
        n_genes = len(gene_order)
        first_extra = self._weights[0].shape[1] - n_genes
        if first_extra != covariates.width_first():
            msg = (
                f"The encoder's first layer takes {self._weights[0].shape[1]} inputs, but the model has {n_genes} genes "
                f"and {covariates.width_first()} covariate columns; the checkpoint does not match its saved settings."
            )
            raise ValueError(msg)
        encoder = self._sequential(np.zeros(first_extra, np.float32), self._deep_vector(None))
        super().__init__(
            encoder,
            gene_order,
            preprocessing=preprocessing,
            name=name,
            source=source,
            checksum=self._hash(),
        )

    # ---------------------------------------------------------------- building encoders

    def _deep_vector(self, codes: Sequence[int] | None) -> np.ndarray:
        width = self.covariates.width_deep()
        vec = np.zeros(width, np.float32)
        if codes is not None and width:
            offset = 0
            for levels, code in zip(self.covariates.cat_levels, codes, strict=True):
                vec[offset + code] = 1.0
                offset += len(levels)
        return vec

    def _sequential(self, first: np.ndarray, deep: np.ndarray) -> nn.Sequential:
        """The encoder of cells whose covariate columns are ``first`` (layer 0) and ``deep`` (later layers).

        Cached per covariate vector, so that repeated runs reuse the fast path's folded plans.
        """
        cache = self.__dict__.setdefault("_group_encoders", {})
        key = (first.astype(np.float32).tobytes(), deep.astype(np.float32).tobytes())
        if key not in cache:
            if len(cache) >= 4096:  # many distinct continuous covariates: do not grow without bound
                cache.clear()
            cache[key] = self._build_sequential(first, deep)
        return cache[key]

    def _build_sequential(self, first: np.ndarray, deep: np.ndarray) -> nn.Sequential:
        import torch

        mods: list[nn.Module] = [_log1p_module()] if self._log1p_inside else []
        for i, (weight, bias) in enumerate(zip(self._weights, self._biases, strict=True)):
            extra = first if i == 0 else deep
            n_in = weight.shape[1] - extra.shape[0]
            lin = torch.nn.utils.skip_init(torch.nn.Linear, n_in, weight.shape[0], bias=True)
            # the gene (or hidden) columns are shared by all groups; only the bias differs
            lin.weight = torch.nn.Parameter(weight[:, :n_in], requires_grad=False) if extra.shape[0] else weight
            folded = torch.zeros(weight.shape[0]) if bias is None else bias.clone()
            if extra.shape[0]:
                folded = folded + weight.detach()[:, n_in:] @ torch.as_tensor(extra)
            lin.bias = torch.nn.Parameter(folded, requires_grad=False)
            mods.append(lin)
            mods.extend(self._posts[i])
        hw, hb = self._head
        head = torch.nn.utils.skip_init(torch.nn.Linear, hw.shape[1], hw.shape[0], bias=hb is not None)
        head.weight = torch.nn.Parameter(hw.detach().float().clone(), requires_grad=False)
        if hb is not None:
            head.bias = torch.nn.Parameter(hb.detach().float().clone(), requires_grad=False)
        mods.append(head)
        return torch.nn.Sequential(*mods).eval()

    def _hash(self) -> str:
        h = hashlib.sha256()
        tensors = [
            *self._weights,
            *(b for b in self._biases if b is not None),
            *(t for t in self._head if t is not None),
        ]
        for mods in self._posts:
            for m in mods:
                tensors.extend(m.state_dict().values())
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        if self.covariates.embedding is not None:
            h.update(self.covariates.embedding.tobytes())
        return h.hexdigest()[:16]

    # ---------------------------------------------------------------- per-cell covariates

    @property
    def has_covariates(self) -> bool:
        """Whether the encoder takes covariates (then each cell needs its own from ``adata.obs``)."""
        return self.covariates.any

    def _codes(self, obs: pd.DataFrame, key: str, levels: list[str]) -> np.ndarray:
        if key not in obs.columns:
            msg = (
                f"The model's encoder takes the covariate {key!r}, but adata.obs has no column {key!r}. Add it "
                f"(levels known to the model: {levels[:20]}) so each cell is encoded with its own covariates."
            )
            raise KeyError(msg)
        values = obs[key]
        if values.isna().any():
            msg = f"adata.obs[{key!r}] has missing values in {int(values.isna().sum())} cells; the encoder needs a level for each."
            raise ValueError(msg)
        lookup = {str(lv): i for i, lv in enumerate(levels)}
        strings = values.astype(str).to_numpy()
        codes = np.array([lookup.get(s, -1) for s in strings], dtype=np.int64)
        if (codes < 0).any():
            unknown = sorted(set(strings[codes < 0]))
            msg = (
                f"adata.obs[{key!r}] has levels the model was not trained on: {unknown[:10]}. The encoder has no "
                f"input for them; known levels: {levels[:20]}{' ...' if len(levels) > 20 else ''}. Map those cells to a "
                "known level (or subset them away), or train the model with them (e.g. scvi-tools' load_query_data)."
            )
            raise ValueError(msg)
        return codes

    def cell_groups(self, obs: pd.DataFrame) -> tuple[np.ndarray, list[nn.Sequential]]:
        """Group cells by their covariates; one plain encoder per group.

        Parameters
        ----------
        obs
            The cells' annotations (``adata.obs``), holding the covariate columns of the model's registry.

        Returns
        -------
        The group of each cell (``(n_obs,)`` int) and the encoder of each group: the Sequential whose
        Linears carry that group's covariates folded into their biases.
        """
        cov = self.covariates
        n = len(obs)
        if not cov.any:
            return np.zeros(n, dtype=np.int64), [self.encoder]
        parts = []
        if cov.cont_keys:
            missing = [k for k in cov.cont_keys if k not in obs.columns]
            if missing:
                msg = f"The model's encoder takes the continuous covariates {missing}, but adata.obs lacks them; add them."
                raise KeyError(msg)
            cont = obs[cov.cont_keys].to_numpy(dtype=np.float32)
            if not np.isfinite(cont).all():
                msg = f"The continuous covariates {cov.cont_keys} have missing or infinite values; the encoder needs a value for each cell."
                raise ValueError(msg)
            parts.append(cont)
        embed_codes = self._codes(obs, cov.embed_key, cov.embed_levels) if cov.embed_key else None
        if embed_codes is not None:
            parts.append(embed_codes[:, None].astype(np.float32))
        cat_codes = [self._codes(obs, k, lv) for k, lv in zip(cov.cat_keys, cov.cat_levels, strict=True)]
        parts.extend(c[:, None].astype(np.float32) for c in cat_codes)
        table = np.concatenate(parts, axis=1)
        rows, inverse = np.unique(table, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
        encoders = []
        for row in rows:
            first = []
            i = 0
            if cov.cont_keys:
                first.append(row[: len(cov.cont_keys)])
                i = len(cov.cont_keys)
            if embed_codes is not None:
                first.append(cov.embedding[int(row[i])])
                i += 1
            codes = [int(c) for c in row[i:]]
            onehot = []
            for levels, code in zip(cov.cat_levels, codes, strict=True):
                v = np.zeros(len(levels), np.float32)
                v[code] = 1.0
                onehot.append(v)
            first.extend(onehot)
            first_vec = np.concatenate(first).astype(np.float32) if first else np.zeros(0, np.float32)
            encoders.append(self._sequential(first_vec, self._deep_vector(codes)))
        return inverse.astype(np.int64), encoders

    def embed(self, x: Any, *, batch_size: int = 1024) -> np.ndarray:
        """Latent means of preprocessed cells; for a model without encoder covariates only (else :meth:`embed_cells`)."""
        if self.has_covariates:
            msg = (
                "This model's encoder takes covariates "
                f"({', '.join([*self.covariates.cont_keys, *self.covariates.cat_keys] or [self.covariates.embed_key])}); "
                "use model.embed_cells(x, adata.obs) so each cell is encoded with its own."
            )
            raise ValueError(msg)
        return super().embed(x, batch_size=batch_size)

    def embed_cells(self, x: Any, obs: pd.DataFrame, *, batch_size: int = 1024) -> np.ndarray:
        """Latent means of preprocessed cells with their own covariates (``obs`` rows match ``x`` rows)."""
        from scipy import sparse

        groups, encoders = self.cell_groups(obs)
        out = None
        for g, enc in enumerate(encoders):
            idx = np.flatnonzero(groups == g)
            sub = FoundationModel(enc, self.gene_order, preprocessing=self.preprocessing).embed(
                x[idx] if sparse.issparse(x) else np.asarray(x)[idx], batch_size=batch_size
            )
            if out is None:
                out = np.zeros((x.shape[0], sub.shape[1]), dtype=np.float32)
            out[idx] = sub
        return out

    def describe(self) -> dict[str, Any]:
        """Provenance record (h5ad-safe), with the covariates held fixed."""
        record = super().describe()
        record["encoder"] = f"{self.model_class} z_encoder (latent mean)"
        cov = self.covariates
        record["covariates"] = ",".join([*cov.cont_keys, *([cov.embed_key] if cov.embed_key else []), *cov.cat_keys])
        return record

    def save(self, folder: str, *, overwrite: bool = False) -> None:
        """Not supported: save the scvi-tools model with its own ``model.save`` and load that folder."""
        msg = (
            "scvi-tools models are saved with scvi-tools (model.save(folder)); sg.models.load(folder) reads them back."
        )
        raise NotImplementedError(msg)


# -------------------------------------------------------------------- shared pieces


def _preprocessing(*, log_variational: bool, input: str) -> Preprocessing:
    if input not in _INPUTS:
        msg = (
            f"input={input!r} is not known; use 'encoder' (what scVI's encoder sees), 'model' (counts, with scVI's "
            "log1p inside the attributed function) or 'counts' (sc-signature's SCVIWrapper)."
        )
        raise ValueError(msg)
    log1p = bool(log_variational) and input == "encoder"
    return Preprocessing(target_sum=None, log1p=log1p, requires_counts=True)


def _log1p_module() -> nn.Module:
    import torch

    class Log1p(torch.nn.Module):
        """scVI's ``log_variational`` transform as the first step of the attributed function."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log1p(x)

    return Log1p()


def _covariates_from_registry(
    registry: dict, *, encode: bool, deep: bool, batch_embedding: np.ndarray | None
) -> _Covariates:
    """Read the encoder's covariates from an scvi-tools registry (a plain dict)."""
    cov = _Covariates(deep=deep)
    if not encode:
        return cov
    fields = registry.get("field_registries", {})

    def state(name: str) -> dict:
        return (fields.get(name) or {}).get("state_registry") or {}

    cont = state("extra_continuous_covs")
    if cont.get("columns") is not None:
        cov.cont_keys = [str(c) for c in cont["columns"]]
    batch = state("batch")
    batch_levels = [str(v) for v in batch.get("categorical_mapping", [])]
    batch_key = str(batch.get("original_key", "batch"))
    if batch_embedding is not None:
        cov.embed_key, cov.embed_levels, cov.embedding = batch_key, batch_levels, batch_embedding
    elif len(batch_levels) > 1:  # scvi-tools gives a single level no input column
        cov.cat_keys.append(batch_key)
        cov.cat_levels.append(batch_levels)
    cats = state("extra_categorical_covs")
    for key in cats.get("field_keys", []) or []:
        levels = [str(v) for v in cats["mappings"][key]]
        if len(levels) > 1:
            cov.cat_keys.append(str(key))
            cov.cat_levels.append(levels)
    return cov


def _name_for(model_class: str, name: str | None) -> str:
    return name or model_class.lower()
