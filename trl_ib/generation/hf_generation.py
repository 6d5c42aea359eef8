"""Sampling n completions per prompt with `model.generate`, batched for throughput.

What `generate_samples` does beyond a `generate` call per prompt (each compared in benchmarks/bench_generate.py):
- requests are sorted by prompt length, so a batch holds prompts of about the same length (little padding);
- a batch mixes prompts (`batch_size` rows) instead of holding the n samples of one prompt;
- greedy decoding (temperature 0) decodes each prompt once and repeats its completion n times: the n samples
  of a greedy decoder are the same sequence;
- the stop-sequence criterion is built once, not on every `generate` call (building it scans the vocabulary), and
  looks at the new tokens only, as `cut_at_stop` does: a stop sequence that starts in the prompt (a chat prompt
  ends with "```python\n", so an answer starting with "```\n" completes "\n```\n") does not end generation;
- `generate` stops a batch as soon as every row has produced a stop sequence or the end-of-sequence token;
- sampling draws each token over the top-k candidates (`trl_ib.generation.sampling`), not over the whole vocabulary: the
  distribution of `generate`'s own temperature, top-k and top-p, at a fraction of their cost;
- the n samples of a prompt share one prefill (`prompt_cache`): each distinct prompt of a batch runs through the
  model once, all but its last token, and its KV cache is copied to the rows that sample it; `generate` then runs
  the last token and decodes from there;
- the output layer gets its input contiguous (`contiguous_output_layer_input`): at prefill `generate` hands it the
  last position's slice of the hidden states, and `torch.matmul` folds that (rows, 1, H) view into one matrix
  product only while the weight requires grad; for a frozen weight (any PeftModel, a merged adapter) it runs a
  batched product over `rows` copies of the (vocab, H) weight instead; the contiguous input gives the same numbers
  at the cost of a (rows, H) copy.

`sample_batches` is the same loop one batch at a time, for callers that save as they go (`ib-ft eval` appends each
batch to samples.jsonl, so a killed run resumes) or split the work over processes (data parallel). With a `seed`,
each batch draws from its own generator state, seeded by (seed, batch index): a batch gives the same samples whether
it runs alone, after a resume, or on another process, so none of these change the results.
"""

import hashlib
import inspect
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from ..code_eval.extraction import cut_at_stop
from .prompting import PromptFormat
from .sampling import TEMPERATURE, TOP_P, sampling_arguments


def _contiguous_input(module: torch.nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: the module's first positional input, made contiguous."""
    if args and isinstance(args[0], torch.Tensor) and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


@contextmanager
def contiguous_output_layer_input(model: PreTrainedModel) -> Iterator[None]:
    """While the block runs, `model`'s output layer (if it has one) receives its input as a contiguous tensor."""
    get_output_layer = getattr(model, "get_output_embeddings", None)  # absent from models that only `generate`
    output_layer = get_output_layer() if get_output_layer is not None else None
    handle = output_layer.register_forward_pre_hook(_contiguous_input) if output_layer is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def cache_keyword(model: PreTrainedModel) -> str:
    """The keyword `model`'s forward and `generate` take a KV cache by: `cache` where the installed transformers
    names it so (`past_key_values` is then deprecated), else `past_key_values`."""
    forward = getattr(model, "get_base_model", lambda: model)().forward  # a PeftModel's forward takes **kwargs
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def prompt_cache(model: PreTrainedModel, inputs: dict, rows: torch.LongTensor) -> DynamicCache | None:
    """The KV cache of each prompt in `inputs` but its last token, computed once per prompt and copied to `rows`.

    Args:
        inputs: the tokenized distinct prompts, left padded: input_ids and attention_mask, (prompts, length).
        rows: (batch,) the prompt each row of the `generate` call samples from.

    Returns:
        A cache of (batch, length - 1) positions, numbered as `generate` numbers left-padded prompts, for
        `generate` (keyword `cache_keyword(model)`) with the rows' full prompts; None where nothing is shared (no
        prompt repeats, or prompts one token long).
    """
    input_ids, mask = inputs["input_ids"], inputs["attention_mask"]
    if len(rows) == len(input_ids) or input_ids.shape[1] < 2:
        return None
    position_ids = mask.long().cumsum(-1) - 1
    position_ids.masked_fill_(mask == 0, 1)
    cache = DynamicCache(config=model.config)
    model(
        input_ids=input_ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=position_ids[:, :-1],
        use_cache=True,
        logits_to_keep=1,
        **{cache_keyword(model): cache},
    )
    cache.batch_select_indices(rows)
    return cache


class StopInNewTokens(StoppingCriteria):
    """`StopStringCriteria` over the tokens after the first `prompt_length` (set before each `generate` call)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_sequences: Sequence[str]):
        self.criteria, self.prompt_length = StopStringCriteria(tokenizer, stop_sequences), 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor | None, **kwargs) -> torch.BoolTensor:
        return self.criteria(input_ids[:, self.prompt_length :], scores)


def batch_seed(seed: int, batch_index: int) -> int:
    """The generator seed of batch `batch_index` of a run seeded with `seed` (no two (seed, batch) pairs share one,
    so runs with neighbouring seeds draw independent samples)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{batch_index}".encode()).digest()[:8], "little")


def sample_batches(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    max_new_tokens: int = 512,
    stop_sequences: Sequence[str] | None = None,
    batch_size: int = 16,
    prompt_format: PromptFormat = PromptFormat(),
    progress: bool = False,
    seed: int | None = None,
    done: Collection[tuple[int, int]] = (),
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[list[tuple[int, int, str]]]:
    """Generate `num_samples` completions per prompt, yielding one batch at a time.

    The batches are fixed by the prompts, `num_samples`, `temperature` and `batch_size` alone. This process
    generates batch b when b % world_size == rank and not all of its (problem, sample) pairs are in `done`.

    Args:
        seed: None draws from the global torch generator as it stands (the samples then depend on what ran before);
            an int seeds each batch from (seed, batch index), so any subset of batches reproduces.
        done: (problem, sample) pairs already generated (a resumed run): batches made only of these are skipped.

    Yields:
        [(problem, sample, completion), ...] for every sample a batch produced (greedy decoding: all n samples of
        each of its prompts), completions cut before their first stop sequence.
    """
    stop_sequences = prompt_format.stop_sequences if stop_sequences is None else list(stop_sequences)
    sampling = sampling_arguments(getattr(model, "generation_config", None), temperature, top_p)
    copies = num_samples if temperature > 0 else 1  # greedy: one decode per prompt stands for all n samples
    texts = [prompt_format.render(prompt, tokenizer) for prompt in prompts]
    add_special_tokens = prompt_format.mode == "completion"  # a chat template writes its own special tokens
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]]
    # (problem, copy) in length order; a stable sort keeps copy 0..copies-1 of a problem in order
    requests = sorted(
        ((index, copy) for index in range(len(texts)) for copy in range(copies)), key=lambda r: -lengths[r[0]]
    )
    samples_of = {copy: [copy] for copy in range(copies)} if copies > 1 else {0: list(range(num_samples))}
    done = set(done)
    batches = [
        (number, requests[first : first + batch_size])
        for number, first in enumerate(range(0, len(requests), batch_size))
        if number % world_size == rank
        and not all(
            (index, sample) in done
            for index, copy in requests[first : first + batch_size]
            for sample in samples_of[copy]
        )
    ]
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # built once: `generate(stop_strings=...)` rebuilds this table over the whole vocabulary on every call
    stop = StopInNewTokens(tokenizer, stop_sequences) if stop_sequences else None
    stopping = StoppingCriteriaList([stop]) if stop is not None else None
    was_training = model.training
    model.eval()
    total = sum(len(batch) for _, batch in batches) * num_samples // copies
    bar = tqdm(total=total, unit="sample", desc="generating", disable=not progress)
    start, new_token_count = time.perf_counter(), 0
    # new tokens must follow every prompt directly; the caller's side is restored in `finally`
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        for number, batch in batches:
            distinct = {index: row for row, index in enumerate(dict.fromkeys(index for index, _ in batch))}
            prompt_inputs = tokenizer(
                [texts[index] for index in distinct],
                return_tensors="pt",
                padding=True,
                add_special_tokens=add_special_tokens,
            ).to(model.device)
            rows = torch.tensor([distinct[index] for index, _ in batch], device=model.device)
            inputs = {name: tensor[rows] for name, tensor in prompt_inputs.items()}  # (batch, length)
            if stop is not None:
                stop.prompt_length = inputs["input_ids"].shape[1]  # left padded: the new tokens follow this column
            if seed is not None:
                torch.manual_seed(batch_seed(seed, number))
            with torch.inference_mode(), contiguous_output_layer_input(model):
                output = model.generate(
                    **inputs,
                    **sampling,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_token_id,
                    stopping_criteria=stopping,
                    **{cache_keyword(model): prompt_cache(model, prompt_inputs, rows)},
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (batch, <= max_new_tokens)
            new_token_count += int((new_tokens != pad_token_id).sum())
            texts_out = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            rows = [
                (index, sample, cut_at_stop(text, stop_sequences))
                for (index, copy), text in zip(batch, texts_out)
                for sample in samples_of[copy]
            ]
            bar.update(len(rows))
            bar.set_postfix_str(f"{new_token_count / (time.perf_counter() - start):.0f} tokens/s")
            yield rows
    finally:
        bar.close()
        model.train(was_training)
        tokenizer.padding_side = padding_side  # the caller's tokenizer (a trainer's processing_class) is left as found


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    max_new_tokens: int = 512,
    stop_sequences: Sequence[str] | None = None,
    batch_size: int = 16,
    prompt_format: PromptFormat = PromptFormat(),
    progress: bool = False,
    seed: int | None = None,
) -> list[list[str]]:
    """Sample `num_samples` completions per prompt, each cut before its first stop sequence.

    Args:
        prompts: the problems' prompts; `prompt_format.render` turns each into the text the model continues.
        stop_sequences: None takes `prompt_format.stop_sequences`.
        batch_size: rows per `generate` call.
        progress: show a bar over samples with the generation speed in new tokens/s.
        seed: None draws from the global torch generator; an int seeds each batch (see `sample_batches`).

    Returns:
        completions[problem][sample], shape (len(prompts), num_samples); text only, no special tokens.
    """
    completions = [[""] * num_samples for _ in prompts]
    batches = sample_batches(
        model,
        tokenizer,
        prompts,
        num_samples,
        temperature,
        top_p,
        max_new_tokens,
        stop_sequences,
        batch_size,
        prompt_format,
        progress,
        seed,
    )
    for rows in batches:
        for index, sample, completion in rows:
            completions[index][sample] = completion
    return completions
