"""The built-in default of `ib-ft train`: a small shipped code dataset, a tokenizer trained on it and a tiny Llama.

Nothing is downloaded: the model is built from a config and the tokenizer is trained on the fly.
"""

from importlib.resources import files

from datasets import Dataset, load_dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>"]


def code_dataset() -> Dataset:
    """96 prompt/completion pairs of small Python functions (trl_ib/data/code_sft.jsonl)."""
    return load_dataset("json", data_files=str(files("trl_ib") / "data" / "code_sft.jsonl"), split="train")


def train_tokenizer(texts: list[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """
    A byte-level BPE tokenizer trained on `texts`, with <pad> (id 0) and <eos> (id 1). Digits are single tokens and
    "\\n" is always a token of its own: a prompt ends in "\\n" and the completion's indentation must not merge with
    it, or the prompt alone would tokenize differently than in training (and generation from it collapses).
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


def tiny_llama(vocab_size: int, hidden_size: int = 64, num_layers: int = 4, max_positions: int = 512) -> LlamaForCausalLM:
    """A randomly initialized Llama with `num_layers` blocks of width `hidden_size` (4 heads, 2 KV heads)."""
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=max_positions, pad_token_id=0, bos_token_id=1, eos_token_id=1,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)
