"""Sampling n completions per prompt with `model.generate`, batched for throughput.

What `generate_samples` does beyond a `generate` call per prompt (measured in benchmarks/bench_generate.py):
- requests are sorted by prompt length, so a batch holds prompts of about the same length (little padding);
- a batch mixes prompts (`batch_size` rows) instead of holding the n samples of one prompt;
- greedy decoding (temperature 0) decodes each prompt once and repeats its completion n times: the n samples
  of a greedy decoder are the same sequence;
- the stop-sequence criterion is built once, not on every `generate` call (building it scans the vocabulary), and
  looks at the new tokens only, as `cut_at_stop` does: a stop sequence that starts in the prompt (a chat prompt
  ends with "```python\n", so an answer starting with "```\n" completes "\n```\n") does not end generation;
- `generate` stops a batch as soon as every row has produced a stop sequence or the end-of-sequence token.
"""

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from .code_eval.extraction import cut_at_stop
from .prompting import PromptFormat


class StopInNewTokens(StoppingCriteria):
    """`StopStringCriteria` over the tokens after the first `prompt_length` (set before each `generate` call)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_sequences: Sequence[str]):
        self.criteria, self.prompt_length = StopStringCriteria(tokenizer, stop_sequences), 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs) -> torch.BoolTensor:
        return self.criteria(input_ids[:, self.prompt_length :], scores)


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    stop_sequences: Sequence[str] | None = None,
    batch_size: int = 16,
    prompt_format: PromptFormat = PromptFormat(),
    progress: bool = False,
) -> list[list[str]]:
    """Sample `num_samples` completions per prompt, each cut before its first stop sequence.

    Args:
        prompts: the problems' prompts; `prompt_format.render` turns each into the text the model continues.
        stop_sequences: None takes `prompt_format.stop_sequences`.
        batch_size: rows per `generate` call.
        progress: show a bar over samples with the generation speed in new tokens/s.

    Returns:
        completions[problem][sample], shape (len(prompts), num_samples); text only, no special tokens.
    """
    stop_sequences = prompt_format.stop_sequences if stop_sequences is None else list(stop_sequences)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    copies = num_samples if temperature > 0 else 1  # greedy: one decode per prompt stands for all n samples
    texts = [prompt_format.render(prompt, tokenizer) for prompt in prompts]
    add_special_tokens = prompt_format.mode == "completion"  # a chat template writes its own special tokens
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    requests = sorted((index for index in range(len(texts)) for _ in range(copies)), key=lambda i: -lengths[i])
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # built once: `generate(stop_strings=...)` rebuilds this table over the whole vocabulary on every call
    stop = StopInNewTokens(tokenizer, stop_sequences) if stop_sequences else None
    stopping = StoppingCriteriaList([stop]) if stop is not None else None
    completions: list[list[str]] = [[] for _ in texts]
    was_training = model.training
    model.eval()
    bar = tqdm(total=len(texts) * num_samples, unit="sample", desc="generating", disable=not progress)
    start, new_token_count = time.perf_counter(), 0
    # new tokens must follow every prompt directly; the caller's side is restored in `finally`
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for first in range(0, len(requests), batch_size):
            batch = requests[first : first + batch_size]
            inputs = tokenizer(
                [texts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            ).to(model.device)
            if stop is not None:
                stop.prompt_length = inputs["input_ids"].shape[1]  # left padded: the new tokens follow this column
            with torch.inference_mode():
                output = model.generate(
                    **inputs, **sampling, max_new_tokens=max_new_tokens, pad_token_id=pad_token_id,
                    stopping_criteria=stopping,
                )  # fmt: skip
            new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (batch, <= max_new_tokens)
            new_token_count += int((new_tokens != pad_token_id).sum())
            for index, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                completions[index] += [cut_at_stop(text, stop_sequences)] * (num_samples // copies)
            bar.update(len(batch) * num_samples // copies)
            bar.set_postfix_str(f"{new_token_count / (time.perf_counter() - start):.0f} tokens/s")
    finally:
        bar.close()
        model.train(was_training)
        tokenizer.padding_side = padding_side  # the caller's tokenizer (a trainer's processing_class) is left as found
    return completions
