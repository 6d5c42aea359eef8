"""Read the IB terms of the last forward that computed them, from any model that holds an IB-LoRA adapter.

In a training forward with labels the adapter adds the IB penalty to the model output's `loss`, so a plain PyTorch
loop (or transformers' Trainer) trains IB-FT as it is:

    out = model(**batch)                 # training mode, batch has labels
    out.loss.backward()                  # ce + alpha * (KL + beta * ce_ib)
    terms = peft_ib.ib_terms(model)      # for logging: terms.kl(), terms.ce_ib(), sums and counts per IB block
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
    """IBTerms (per-block KL and ce_ib sums and counts) of the last forward of `model` that computed them."""
    terms = find_ib_model(model)._last_ib_terms
    if adapter_name is None and len(terms) == 1:
        return next(iter(terms.values()))
    if adapter_name in terms:
        return terms[adapter_name]
    raise RuntimeError(
        "No IB terms" + (f" for adapter {adapter_name!r}" if adapter_name else "") + ": the last forward of this "
        "model computed none. An IB-LoRA adapter computes them in a forward given labels, in training mode "
        "(model.train()) or inside IBLoraModel.collect_ib_terms() (IBSFTTrainer's evaluation), with the adapter "
        "enabled and active."
    )


def ib_loss(model: nn.Module, adapter_name: str | None = None) -> torch.Tensor:
    """
    alpha * (KL + beta * ce_ib) of the last forward, normalized over that forward's tokens, for a loop that builds
    its own loss after setting `find_ib_model(model).ib_penalty_in_loss = False`. Refused when the penalty is already
    in that forward's output `loss` (the default), since adding it again would count it twice; its value is then
    `ib_terms(model).loss()`.
    """
    terms = ib_terms(model, adapter_name)
    if terms.in_loss:
        raise RuntimeError(
            "peft_ib.ib_loss: the IB penalty of the last forward is already in the model output's `loss` (adding it "
            "again counts it twice). Backpropagate `outputs.loss` as it is; to build your own loss instead, set "
            "`peft_ib.find_ib_model(model).ib_penalty_in_loss = False` once and add `peft_ib.ib_loss(model)`. To "
            "read the penalty's value: `peft_ib.ib_terms(model).loss()`."
        )
    return terms.loss()
