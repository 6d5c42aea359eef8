"""Read the IB terms of the last training forward from any model that holds an IB-LoRA adapter.

For a plain PyTorch loop:

    out = model(**batch)                      # training mode, batch has labels
    loss = out.loss + peft_ib.ib_loss(model)  # ce + alpha * (KL + beta * ce_ib)
"""

import torch
from torch import nn

from .model import IBLoraModel, IBTerms


def find_ib_model(model: nn.Module) -> IBLoraModel:
    """The IBLoraModel inside `model` (a PeftModel, a DDP/FSDP wrapper, or the tuner itself)."""
    for module in model.modules():
        if isinstance(module, IBLoraModel):
            return module
    raise ValueError(
        f"{type(model).__name__} holds no IB-LoRA adapter: wrap it with get_peft_model(model, IBLoraConfig(...))."
    )


def ib_terms(model: nn.Module, adapter_name: str | None = None) -> IBTerms:
    """IBTerms (per-block KL and ce_ib sums and counts) of the last forward of `model`."""
    terms = find_ib_model(model)._last_ib_terms
    if adapter_name is None and len(terms) == 1:
        return next(iter(terms.values()))
    if adapter_name in terms:
        return terms[adapter_name]
    raise RuntimeError(
        "No IB terms: the last forward was not a training forward (model.train(), labels given) with an active, "
        "enabled IB-LoRA adapter" + (f" named {adapter_name!r}." if adapter_name else ".")
    )


def ib_loss(model: nn.Module, adapter_name: str | None = None) -> torch.Tensor:
    """alpha * (KL + beta * ce_ib) of the last training forward, normalized over that forward's tokens."""
    return ib_terms(model, adapter_name).loss()
