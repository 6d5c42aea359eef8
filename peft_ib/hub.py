"""Make PEFT write the IB-LoRA model card (hub_cards) for IB-LoRA adapters, on save and on push."""

import functools
import os

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel


def install_card_hook() -> None:
    """
    Make `PeftModel.save_pretrained` and `PeftModel.push_to_hub` write `hub_cards.adapter_card` as README.md when
    the adapter is an IB-LoRA one (`peft_type == "IBLORA"`); other adapters keep PEFT's card. Idempotent.

    Two methods are wrapped, because transformers' `push_to_hub` (inherited by `PeftModel`) overwrites the README
    that `save_pretrained` wrote with the card already on the Hub (or a generic one) before uploading:
    - `create_or_update_model_card(output_dir)`, called by `save_pretrained`;
    - `_upload_modified_files(working_dir, repo_id, ...)`, called by `push_to_hub` just before the commit; the card
      is rewritten there with the repo id in its loading snippet.

    The card is rendered afresh from the adapter's config each time, since a README describes the weights next to
    it. From a README already in the folder only what holds for any weights is kept: `datasets`, `license` and
    extra `tags` (e.g. `push_to_hub(tags=...)`). Training curves and Pass@k^(m) results belong to specific weights:
    `hub_cards.trainer_card` (called by `IBSFTTrainer.create_model_card`, hence by `trainer.push_to_hub()`) and
    `hub_cards.write_adapter_card` write them.
    """
    if getattr(PeftModel.create_or_update_model_card, "_ib_card_hook", False):
        return
    save_card, upload = PeftModel.create_or_update_model_card, PeftModel._upload_modified_files

    @functools.wraps(save_card)
    def create_or_update_model_card(self, output_dir, repo_id=None):
        if self.active_peft_config.peft_type != "IBLORA":
            return save_card(self, output_dir)
        from hub_cards import write_adapter_card  # here, so that `import peft_ib` does not load matplotlib

        readme = os.path.join(output_dir, "README.md")
        kept = ModelCard.load(readme).data if os.path.exists(readme) else ModelCardData()
        write_adapter_card(
            output_dir,
            self.active_peft_config,
            repo_id=repo_id,
            datasets=kept.datasets,
            license=kept.license,
            tags=[tag for tag in kept.tags or [] if not tag.startswith("base_model:")],
        )

    @functools.wraps(upload)
    def _upload_modified_files(self, working_dir, repo_id, *args, **kwargs):
        if self.active_peft_config.peft_type == "IBLORA":
            self.create_or_update_model_card(working_dir, repo_id=repo_id)
        return upload(self, working_dir, repo_id, *args, **kwargs)

    create_or_update_model_card._ib_card_hook = True
    PeftModel.create_or_update_model_card = create_or_update_model_card
    PeftModel._upload_modified_files = _upload_modified_files
