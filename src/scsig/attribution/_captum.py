"""The general attribution path: captum on any torch encoder."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from ._targets import TargetModule

__all__ = ["captum_attributions"]


def captum_attributions(
    module: TargetModule,
    inputs: torch.Tensor,
    *,
    method: str = "ig",
    n_steps: int = 50,
    internal_batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw (signed) attributions of ``module``'s target for a dense batch, with a zero baseline.

    Returns
    -------
    attributions
        ``(n_cells, n_genes)`` signed attributions.
    t_input
        Target at the inputs, ``(n_cells,)``.
    t_baseline
        Target at the baseline, ``(n_cells,)``.
    """
    from captum.attr import DeepLift, InputXGradient, IntegratedGradients

    baselines = torch.zeros_like(inputs)
    reference = module.reference(inputs, baselines)
    inputs = inputs.detach().requires_grad_(requires_grad=True)
    if method == "ig":
        attr = IntegratedGradients(module, multiply_by_inputs=True).attribute(
            inputs,
            baselines=baselines,
            target=0,
            additional_forward_args=(reference,),
            n_steps=n_steps,
            method="gausslegendre",
            internal_batch_size=internal_batch_size,
        )
    elif method == "dl":
        with warnings.catch_warnings():  # captum announces its temporary hooks on every call
            warnings.filterwarnings("ignore", message="Setting forward, backward hooks", category=UserWarning)
            attr = DeepLift(module, multiply_by_inputs=True).attribute(
                inputs, baselines=baselines, target=0, additional_forward_args=(reference,)
            )
    elif method == "ixg":
        attr = InputXGradient(module).attribute(inputs, target=0, additional_forward_args=(reference,))
    else:  # validated by the caller
        msg = f"Unknown method {method!r}."
        raise ValueError(msg)
    with torch.no_grad():
        t_in = module(inputs, reference)[:, 0]
        t_base = module(baselines, reference)[:, 0]
    return attr.detach(), t_in.detach(), t_base.detach()
