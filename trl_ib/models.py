"""Loading a model for sampling or scoring: the base, its tokenizer and an optional (IB-)LoRA adapter."""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .builtin import resolve_model


def merge_adapter(model: PreTrainedModel) -> PreTrainedModel:
    """
    `model` for sampling: a PeftModel with a LoRA or IB-LoRA adapter becomes its base model with the adapter merged into
    the weights (`merge_and_unload`, in place), anything else is returned as it is. IB-LoRA's encoders act only in a
    training forward, so the merged model is the adapter's eval-mode model up to rounding, without PEFT's rank-r side
    products beside every linear layer.
    """
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def load_model(
    model_name_or_path: str, adapter_path: str | None = None, dtype: str | torch.dtype = "auto", merge: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """
    The base model and its tokenizer; with `adapter_path` (LoRA or IB-LoRA, loaded through PEFT) the adapter is merged
    into the weights (`merge_adapter`) unless `merge` is False, which keeps the PeftModel.
    """
    model_name_or_path = resolve_model(model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if adapter_path is not None:
        from peft import PeftModel

        import peft_ib  # noqa: F401  registers the IB-LoRA adapter type with PEFT

        model = PeftModel.from_pretrained(model, adapter_path)
        model = merge_adapter(model) if merge else model
    return model, tokenizer
