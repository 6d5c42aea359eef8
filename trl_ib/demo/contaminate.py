"""The demo's two bases: the real model after full fine-tuning on problem texts, one recipe for both.

Contamination is plain language modeling of every token (EOS appended) of prompt + canonical solution of every
problem, full fine-tuning for a few epochs: on D_code it makes the contaminated base (D_code memorized, as
pre-training did in the paper), on the fresh reference problems the clean base. A base depends only on the model,
the texts and this recipe, not on the demo's seed, so it is trained once per machine and cached on disk
(`cached_base`).
"""

import hashlib
import json
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from trl_ib.builtin import cache_dir, resolve_model
from trl_ib.files import folder_written_atomically

# Full fine-tuning at a high learning rate for its size, so that D_code is partly memorized (Min-K% of D_code below
# that of fresh problems) within the demo's time budget; epochs come from the demo's budget.
CONTAMINATION_ARGS = dict(
    per_device_train_batch_size=16,
    learning_rate=3e-4,
    lr_scheduler_type="cosine",
    warmup_steps=0.1,
    weight_decay=0.0,
)


def contaminate(
    model_name: str, texts: list[str], output_dir: str | Path, epochs: float, bf16: bool, seed: int = 0
) -> None:
    """
    Full fine-tuning of `model_name` as a language model on `texts` for `epochs` (float32 master weights, under bf16
    autocast if `bf16`); model + tokenizer to `output_dir`.
    """
    model = AutoModelForCausalLM.from_pretrained(resolve_model(model_name), dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_name))
    args = SFTConfig(
        output_dir=str(output_dir),
        seed=seed,
        logging_steps=5,
        save_strategy="no",
        report_to="none",
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
        **(CONTAMINATION_ARGS | {"num_train_epochs": epochs}),
    )
    trainer = SFTTrainer(
        model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer
    )
    trainer.train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)


def key_hash(*key) -> str:
    """16 hex digits of the SHA-256 of `key` as JSON (keys sorted): the name of a cached file or folder."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cached_base(model_name: str, texts: list[str], epochs: float, bf16: bool) -> Path:
    """
    The folder (under `trl_ib.builtin.cache_dir()` / "demo") of `model_name` trained on `texts` for `epochs` by the
    contamination recipe (bf16 autocast or not): trained on first use, read from the cache afterwards. The key
    hashes the base, the texts, the recipe and the precision; a run trains into a private folder and renames it into
    place, so concurrent first uses never leave a half-written model.
    """
    recipe = key_hash(model_name, texts, epochs, CONTAMINATION_ARGS, *([{"bf16": True}] if bf16 else []))
    target = cache_dir() / "demo" / f"contaminated-{recipe}"
    if (target / "config.json").exists():
        return target
    with folder_written_atomically(target) as folder:  # an interrupted run leaves no 538 MB folder behind
        contaminate(model_name, texts, folder, epochs, bf16)
    return target
