"""Export an IB-LoRA adapter as a plain LoRA adapter (peft_type LORA) for serving with vLLM, TGI or stock PEFT.

The IB encoders are only used in training, so dropping them and relabelling the config loses nothing at
inference: the exported adapter gives the same logits as the IB-LoRA adapter in eval mode.
`ib-ft export` (trl_ib/cli/export.py) runs it from the command line.
"""

import os
from dataclasses import fields
from pathlib import Path

from huggingface_hub import HfApi
from peft import LoraConfig, PeftConfig, PeftModel, get_peft_model_state_dict
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from peft.utils.save_and_load import load_peft_weights
from safetensors.torch import save_file

from .config import IBLoraConfig

ENCODER_KEY = "lora_ib_encoders"


def to_lora_config(config: IBLoraConfig) -> LoraConfig:
    """The LoraConfig with every LoRA field of `config` and none of the IB fields."""
    lora_fields = {f.name for f in fields(LoraConfig) if f.init} - {"peft_type"}
    return LoraConfig(**{name: getattr(config, name) for name in lora_fields})


def export_lora(
    adapter: PeftModel | str | os.PathLike,
    save_directory: str | os.PathLike,
    adapter_name: str = "default",
    push_to_hub: str | None = None,
) -> Path:
    """
    Write `adapter` (an IB-LoRA PeftModel, or a local path / Hub id of a saved IB-LoRA adapter) as a plain LoRA
    adapter in `save_directory`; push it to the Hub repo `push_to_hub` if given. Returns the directory.
    """
    if isinstance(adapter, PeftModel):
        config = adapter.peft_config[adapter_name]
        state_dict = get_peft_model_state_dict(adapter, adapter_name=adapter_name)
    else:
        config = PeftConfig.from_pretrained(str(adapter))
        state_dict = load_peft_weights(str(adapter))
    if not isinstance(config, IBLoraConfig):
        peft_type = getattr(config.peft_type, "value", config.peft_type)  # "LORA", not "PeftType.LORA"
        raise ValueError(f"export_lora expects an IB-LoRA adapter (peft_type IBLORA), got peft_type {peft_type}.")
    lora_state = {k: v.contiguous() for k, v in state_dict.items() if ENCODER_KEY not in k}
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    lora_config = to_lora_config(config)
    lora_config.inference_mode = True  # as PEFT's save_pretrained writes it, whether exported from a model or a path
    lora_config.save_pretrained(out)
    save_file(lora_state, out / SAFETENSORS_WEIGHTS_NAME, metadata={"format": "pt"})
    _write_card(out, config, source=None if isinstance(adapter, PeftModel) else str(adapter))
    if push_to_hub:
        api = HfApi()
        api.create_repo(push_to_hub, exist_ok=True)
        api.upload_folder(repo_id=push_to_hub, folder_path=out, commit_message="Export IB-LoRA adapter as plain LoRA")
    return out


def _write_card(out: Path, config: IBLoraConfig, source: str | None) -> None:
    from hub_cards import export_card

    export_card(config, ib_adapter=source).save(out / "README.md")
