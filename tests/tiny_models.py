"""Tiny models and a tokenizer trained on the fly, so no test downloads anything."""

from pathlib import Path

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaForCausalLM, PreTrainedTokenizerFast

from trl_ib import builtin

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "def mul(a, b):\n    return a * b\n",
    "Write a function that returns the sum of a list.\n",
    "module top(input a, input b, output y); assign y = a & b; endmodule\n",
] * 8

# A minimal chat template for `train_tokenizer`'s tokenizers: one line per turn, add_generation_prompt opens the
# assistant's turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message.role }}>{{ message.content }}</{{ message.role }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def train_tokenizer(
    directory: str | Path, vocab_size: int = 300, corpus: list[str] = CORPUS
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on `corpus`, saved to `directory` and returned."""
    tokenizer = builtin.train_tokenizer(corpus, vocab_size=vocab_size)
    tokenizer.save_pretrained(directory)
    return tokenizer


def tiny_llama(vocab_size: int = 300, num_layers: int = 4, hidden: int = 32, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return builtin.tiny_llama(vocab_size, hidden_size=hidden, num_layers=num_layers, max_positions=256)


def tiny_gpt2(vocab_size: int = 300, num_layers: int = 4, hidden: int = 32, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=num_layers,
        n_head=4,
        n_positions=256,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def batch(vocab_size: int = 300, batch_size: int = 3, seq: int = 12, seed: int = 1) -> dict[str, torch.Tensor]:
    """input_ids / attention_mask with right padding on all but the first row, labels with a masked prompt."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(2, vocab_size, (batch_size, seq), generator=g)
    attention_mask = torch.ones(batch_size, seq, dtype=torch.long)
    for row in range(1, batch_size):
        attention_mask[row, seq - 2 * row :] = 0
    input_ids[attention_mask == 0] = 0
    labels = input_ids.clone()
    labels[:, :4] = -100  # prompt
    labels[attention_mask == 0] = -100
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


class ToyBlock(nn.Module):
    """A residual block h + tanh(W h), for hand-built models whose blocks sit where no path search looks."""

    def __init__(self, hidden):
        super().__init__()
        self.proj = nn.Linear(hidden, hidden)

    def forward(self, h):
        return h + torch.tanh(self.proj(h))
