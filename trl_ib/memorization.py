"""The memorization diagnostic of IB-FT (docs/METHOD.md, "The memorization diagnostic"); `ib-ft memorization` runs it
on a dataset (trl_ib/cli/memorization.py).

Min-K% Prob (Shi et al., 2023) of one example: the mean negative log-likelihood, in nats per token, of the K% least
likely RESPONSE tokens under a model. Lower score = more strongly memorized.

    from trl_ib.memorization import score_min_k, representation_gap
    scores = score_min_k(model, tokenizer, [{"prompt": "Write f.\\n", "completion": "def f(): ..."}], k=0.2)

Examples are dicts with `prompt` / `completion`.
Tokenization is TRL's prompt-completion rule: the response tokens are those of tokenizer(prompt + completion) after
its common prefix with tokenizer(prompt), no EOS appended.
"""

import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from matplotlib import rcParams
from matplotlib.figure import Figure
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.data_utils import common_prefix_length
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
from trl.trainer.utils import selective_log_softmax

from peft_ib import IBLoraConfig
from peft_ib.model import block_output, find_decoder_blocks

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def fraction_count(fraction: float, total: int) -> int:
    """floor(fraction * total), the product rounded to 9 decimals first so that 0.29 * 100 counts 29, not 28."""
    return math.floor(round(fraction * total, 9))


def num_lowest(num_tokens: int, k: float) -> int:
    """
    How many tokens Min-K% averages: floor(k * num_tokens), at least 1 (the reference implementation takes the
    floor, which would average no token at all below 1/k tokens).
    """
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k={k!r}: the fraction of least likely tokens must be in (0, 1].")
    return max(1, fraction_count(k, num_tokens))


def most_memorized_first(scores: Sequence[float]) -> list[int]:
    """Example indices by ascending score (most memorized first); ties: lower index first."""
    return sorted(range(len(scores)), key=lambda i: (scores[i], i))


def tokenize_example(tokenizer: PreTrainedTokenizerBase, example: dict) -> dict[str, list[int]]:
    """`input_ids` of prompt + completion and `labels` equal to them on response tokens, -100 on the prompt."""
    if "prompt" not in example or "completion" not in example:
        raise ValueError(f"example keys {sorted(example)}: need 'prompt' and 'completion'.")
    prompt_ids = tokenizer(example["prompt"])["input_ids"]
    input_ids = tokenizer(example["prompt"] + example["completion"])["input_ids"]
    prompt_len = common_prefix_length(prompt_ids, input_ids)
    if prompt_len == len(input_ids):
        raise ValueError(f"example {example!r} has no response token after tokenization.")
    return {"input_ids": input_ids, "labels": [-100] * prompt_len + input_ids[prompt_len:]}


def _forward_batches(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict], batch_size: int, desc: str
) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """(batch, logits) per right-padded batch, in eval mode without gradients; batch["labels"] is -100 off-response."""
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be an int >= 1.")
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id or 0)  # padding is masked: any id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc=desc, unit="batch"):
            stop = min(start + batch_size, len(examples))
            rows = [tokenize_example(tokenizer, examples[i]) for i in range(start, stop)]
            batch = {name: tensor.to(device) for name, tensor in collator(rows).items()}
            with torch.inference_mode():
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            yield batch, logits
    finally:
        model.train(was_training)


def response_logprobs(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict], batch_size: int = 8
) -> list[torch.Tensor]:
    """Per example, the float32 log-probabilities (num_response_tokens,) of its response tokens, in nats."""
    logprobs = []
    for batch, logits in _forward_batches(model, tokenizer, examples, batch_size, "response log-probs"):
        targets = batch["labels"][:, 1:]  # (B, N-1): position t predicts token t + 1
        token_logprobs = selective_log_softmax(logits[:, :-1].float(), targets.clamp(min=0))  # (B, N-1)
        logprobs += [row[mask].cpu() for row, mask in zip(token_logprobs, targets != -100)]
    return logprobs


def score_min_k(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict],
    k: float = 0.2,
    batch_size: int = 8,
) -> list[float]:
    """Min-K% Prob per example: mean NLL (nats) of its `num_lowest(n, k)` least likely response tokens."""
    num_lowest(1, k)  # validate k before any forward
    scores = []
    for logprobs in response_logprobs(model, tokenizer, examples, batch_size):
        lowest = torch.sort(logprobs).values[: num_lowest(len(logprobs), k)]
        scores.append(-lowest.mean().item())
    return scores


def resolve_block(model: PreTrainedModel, layer: int | float) -> torch.nn.Module:
    """The decoder block `layer` names, with IBLoraConfig.ib_layers' rule (a PeftModel: its base model's block)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _, blocks = find_decoder_blocks(base)
    index = IBLoraConfig(ib_layers=layer).resolve_ib_layers(len(blocks))
    if len(index) != 1:
        raise ValueError(f"layer={layer!r}: the representation gap reads one block; pass an int or a float.")
    return blocks[index[0]]


def pooled_hidden_states(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict],
    layer: int | float = IBLoraConfig.ib_layers,
    batch_size: int = 8,
) -> torch.Tensor:
    """(num_examples, hidden) float32 output of block `layer`, mean-pooled over each example's response tokens."""
    block = resolve_block(model, layer)
    captured = []  # the block's output of the current forward
    hook = block.register_forward_hook(lambda _m, _i, out: captured.append(block_output(out)))
    pooled = []
    try:
        for batch, _ in _forward_batches(model, tokenizer, examples, batch_size, "hidden states"):
            hidden = captured.pop().float()  # (B, N, H)
            mask = (batch["labels"] != -100).unsqueeze(-1).float()  # (B, N, 1)
            pooled.append(((hidden * mask).sum(1) / mask.sum(1)).cpu())
    finally:
        hook.remove()
    return torch.cat(pooled)


def extreme_groups(scores: Sequence[float], fraction: float) -> tuple[list[int], list[int]]:
    """
    Indices of the most memorized (lowest scores) and least memorized (highest scores) examples, `num_lowest(n,
    fraction)` each; ties go to the lower index first in both orders.
    """
    if not 0.0 < fraction <= 0.5:
        raise ValueError(f"fraction={fraction!r}: each group is a fraction of the examples in (0, 0.5].")
    size = num_lowest(len(scores), fraction)
    descending = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return most_memorized_first(scores)[:size], descending[:size]


def centroid_gap(memorized: torch.Tensor, unmemorized: torch.Tensor) -> dict[str, float]:
    """
    L2 distance and angle (degrees) between the centroids of two groups of representations (n_a, H) and (n_b, H).
    E.g. [[1, 0], [3, 0]] vs [[0, 2]]: centroids (2, 0) and (0, 2), l2 = sqrt(8), angle = 90.
    """
    a, b = memorized.double().mean(0), unmemorized.double().mean(0)
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=0).clamp(-1.0, 1.0)
    return {"l2": torch.linalg.vector_norm(a - b).item(), "angle_degrees": math.degrees(math.acos(cosine.item()))}


def representation_gap(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[dict],
    scores: Sequence[float],
    fraction: float = 0.1,
    layer: int | float = IBLoraConfig.ib_layers,
    batch_size: int = 8,
) -> dict[str, float]:
    """
    `centroid_gap` between the block-`layer` representations of the `fraction` most and least memorized examples by
    `scores` (pass the base model's scores to compare a model before and after fine-tuning on the same groups).
    """
    if len(scores) != len(examples):
        raise ValueError(f"len(scores)={len(scores)} but len(examples)={len(examples)}: need one score per example.")
    memorized, unmemorized = extreme_groups(scores, fraction)
    hidden = pooled_hidden_states(model, tokenizer, [examples[i] for i in memorized + unmemorized], layer, batch_size)
    return centroid_gap(hidden[: len(memorized)], hidden[len(memorized) :])


def drop_top_memorized(scores: Sequence[float], fraction: float) -> list[int]:
    """Indices kept, in order, after dropping floor(fraction * n) lowest-score examples (ties: lower index first)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction={fraction!r}: the fraction of examples to drop must be in [0, 1).")
    dropped = set(most_memorized_first(scores)[: fraction_count(fraction, len(scores))])
    return [i for i in range(len(scores)) if i not in dropped]


def summarize(scores: Sequence[float]) -> dict[str, float]:
    """count, mean, std and the QUANTILES (linear interpolation) of a score distribution."""
    values = torch.tensor(scores, dtype=torch.float64)
    summary = {"count": len(scores), "mean": values.mean().item(), "std": values.std(correction=0).item()}
    summary |= {f"q{round(q * 100):02d}": torch.quantile(values, q).item() for q in QUANTILES}
    return summary | {"median": summary["q50"]}


def plot_distributions(
    distributions: dict[str, Sequence[float]], path: str | Path, k: float = 0.2, bins: int = 30
) -> None:
    """Overlaid density histograms (shared bins) of named Min-K% score distributions, medians dashed; to `path`."""
    if not distributions:
        raise ValueError("distributions is empty: pass at least one {label: scores}.")
    every = [s for scores in distributions.values() for s in scores]
    edges = torch.linspace(min(every), max(every) + 1e-9, bins + 1).tolist()
    figure = Figure(figsize=(6, 4), layout="tight")  # object API: no pyplot, no process-wide backend
    axes = figure.subplots()
    for color, (label, scores) in zip(rcParams["axes.prop_cycle"].by_key()["color"], distributions.items()):
        axes.hist(scores, bins=edges, density=True, alpha=0.35, color=color, label=f"{label} (n={len(scores)})")
        axes.axvline(summarize(scores)["median"], color=color, linestyle="--")
    axes.set_xlabel(f"Min-{k:.0%} Prob (nats); lower = more memorized")
    axes.set_ylabel("density")
    axes.legend()
    figure.savefig(path, dpi=120)
