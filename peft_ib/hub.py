"""The one module that wraps methods of a class peft_ib does not own: PEFT's model card, for IB-LoRA adapters only.

(Registering the adapter type, PEFT's own style, is registry.py's job.)

PEFT picks the `PeftModel` class by task type, so an IB-LoRA adapter lives in the class every LoRA adapter lives in,
and nothing in PEFT lets a tuner write its own card. Two methods of `PeftModel` decide the README:
- `create_or_update_model_card(output_dir)`, PEFT's card hook, called by `save_pretrained`;
- `_upload_modified_files(working_dir, repo_id, ...)`, transformers' private upload step: `push_to_hub` (inherited
  from transformers' `PushToHubMixin`) saves the adapter, overwrites the README with the card already on the Hub
  (or a generic one), then calls it.
`install_card_hook` wraps these two; each wrapper hands an adapter that is not IB-LoRA to the original unchanged.
It is installed by the first IB-LoRA adapter a process builds (`IBLoraModel`), not by `import peft_ib`, so a process
that never builds one runs PEFT untouched. `tests/test_hub.py` pins the PEFT and transformers code it relies on.
`trainer.push_to_hub()` needs none of this: Trainer's own hook, `create_model_card`, writes the card there
(`IBSFTTrainer.create_model_card`).
"""

import functools
import os

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel

from .config import IBLORA


def install_card_hook() -> None:
    """
    Make `PeftModel.save_pretrained` and `PeftModel.push_to_hub` write `hub_cards.adapter_card` as README.md when
    the adapter is an IB-LoRA one (`peft_type == "IBLORA"`); other adapters keep PEFT's card. Idempotent.

    The card is rendered afresh from the adapter's config each time, since a README describes the weights next to
    it; on push, with the repo id in its loading snippet. From a README already in the folder only what holds for any
    weights is kept: `datasets`, `license` and extra `tags` (e.g. `push_to_hub(tags=...)`). Training curves and
    Pass@k^(m) results belong to specific weights: `hub_cards.trainer_card` (called by
    `IBSFTTrainer.create_model_card`, hence by `trainer.push_to_hub()`) and `hub_cards.write_adapter_card` write them.
    """
    if getattr(PeftModel.create_or_update_model_card, "_ib_card_hook", False):
        return
    save_card, upload = PeftModel.create_or_update_model_card, PeftModel._upload_modified_files

    @functools.wraps(save_card)
    def create_or_update_model_card(self, output_dir):
        if self.active_peft_config.peft_type != IBLORA:
            return save_card(self, output_dir)
        write_ib_card(self, output_dir)

    @functools.wraps(upload)
    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        if self.active_peft_config.peft_type == IBLORA:
            write_ib_card(self, working_dir, repo_id=repo_id)
        return upload(self, working_dir, repo_id, *args, **kwargs)

    create_or_update_model_card._ib_card_hook = True
    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel._upload_modified_files = _upload_modified_files


def write_ib_card(model: PeftModel, output_dir: str, repo_id: str | None = None) -> None:
    """Write the IB-LoRA card of `model`'s active adapter as `output_dir`/README.md (see `install_card_hook`)."""
    from hub_cards import write_adapter_card  # here, so that building an adapter does not load matplotlib

    readme = os.path.join(output_dir, "README.md")
    kept = ModelCard.load(readme).data if os.path.exists(readme) else ModelCardData()
    write_adapter_card(
        output_dir,
        model.active_peft_config,
        repo_id=repo_id,
        datasets=kept.datasets,
        license=kept.license,
        tags=[tag for tag in kept.tags or [] if not tag.startswith("base_model:")],
    )
