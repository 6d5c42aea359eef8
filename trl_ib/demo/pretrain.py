"""The demo's base model: a tiny Llama built in code, pre-trained on D_code until it memorizes it.

Pre-training is plain language modeling (every token, EOS appended) on the full text prompt + canonical solution of
every D_code problem, for many epochs: the model then assigns D_code a much lower Min-K% score than fresh problems
of the same family, which is the memorization barrier the demo then fine-tunes against.
"""

from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from trl_ib.builtin import tiny_llama, train_tokenizer


def pretrain(
    texts: list[str], output_dir: str | Path, max_steps: int = 600, learning_rate: float = 3e-3, seed: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """
    Train a tokenizer on `texts`, build a tiny Llama, language-model it on `texts` for `max_steps` steps of 32 texts,
    and save both to `output_dir`. Returns (model, tokenizer).
    """
    tokenizer = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(seed)
    model = tiny_llama(len(tokenizer))  # 4 blocks of width 64, about 0.2M parameters
    args = SFTConfig(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=32,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        weight_decay=0.0,
        logging_steps=max(1, max_steps // 10),
        save_strategy="no",
        report_to="none",
        seed=seed,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=False,
    )
    trainer = SFTTrainer(model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tokenizer)
    trainer.train()
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return model.eval(), tokenizer
