"""The demo's base model: a tiny Llama built in code, pre-trained on D_code until it memorizes it.

Pre-training is plain language modeling (every token, EOS appended) on the full text prompt + canonical solution of
every D_code problem, for many epochs: the model then assigns D_code a much lower Min-K% score than fresh problems
of the same family, which is the memorization barrier the demo then fine-tunes against.
"""

from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from trl_ib.builtin import SPECIAL_TOKENS, tiny_llama


def train_tokenizer(texts: list[str], vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """
    `trl_ib.builtin.train_tokenizer` (byte-level BPE, <pad> = 0, <eos> = 1), plus one token per digit (constants are
    read digit by digit) and "\\n" always a token of its own: a HumanEval prompt ends in "\\n", and the completion's
    indentation must not merge with it, or the prompt alone tokenizes differently than in training.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>")


def pretrain(
    texts: list[str], output_dir: str | Path, max_steps: int = 600, learning_rate: float = 3e-3, seed: int = 0
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """
    Train a tokenizer on `texts`, build a tiny Llama, language-model it on `texts` for `max_steps` steps of 32 texts,
    and save both to `output_dir`. Returns (model, tokenizer).
    """
    tokenizer = train_tokenizer(texts)
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
