"""Top-k / top-p sampling drawn over the top-k candidates only, for `model.generate`.

`generate` samples a token by a chain over the whole vocabulary, per step and row: temperature, top-k (transformers'
default k = 50 applies unless the model's generation_config says otherwise), top-p by sorting all V scores, then a
softmax and a multinomial draw over all V, which for a large vocabulary is a visible share of a decode step
(benchmarks/README.md compares the two).

`TopKTopPSampler` does the same chain over the k candidates: one `topk` over V (two when scores tie at the k-th),
then top-p, the softmax and the draw over those k values. It returns scores that are 0 at the drawn token and -inf
elsewhere, and `generate` runs in greedy mode (`do_sample=False`), whose argmax takes the drawn token. The
distribution is `generate`'s own:
- top-k keeps every token scoring at least the k-th highest score, ties included (as `TopKLogitsWarper`);
- top-p drops a candidate when it and the candidates below it hold at most 1 - top_p of the mass, and keeps the
  highest one (as `TopPLogitsWarper` with min_tokens_to_keep 1);
the kept values are `generate`'s, row by row; where scores tie at the top-p cut, which of the tied tokens stay is an
arbitrary order in both (a sort's there, `topk`'s here). The draws from a given generator state differ from
`generate`'s (a draw over k values, not over V): same distribution, other samples.

`sampling_arguments` picks this route when the model's generation_config adds no other sampling warper (min_p,
typical_p, epsilon or eta cutoffs) and top-k is on; otherwise it hands `generate` its own sampling arguments.
"""

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

# The sampling settings of a Pass@k^(m) evaluation unless told otherwise (`ib-ft eval`, the demo).
TEMPERATURE = 0.8
TOP_P = 0.95


def generation_value(config: GenerationConfig, name: str):
    """What `generate` uses for `name`: the model's generation_config, else transformers' default (None if it has
    none, as for min_p)."""
    value = getattr(config, name, None)
    return GenerationConfig._get_default_generation_params().get(name) if value is None else value


class TopKTopPSampler(LogitsProcessor):
    """Draws the next token from temperature -> top-k -> top-p over the top-k candidates (module docstring).

    Call: scores (rows, V) float -> (rows, V), 0 at the drawn token and -inf elsewhere. Draws from the global torch
    generator (seeded per batch by `sample_batches`).
    """

    def __init__(self, temperature: float, top_k: int, top_p: float):
        if not temperature > 0:
            raise ValueError(f"temperature={temperature!r}: TopKTopPSampler samples, so it must be > 0.")
        if not (isinstance(top_k, int) and top_k > 0):
            raise ValueError(f"top_k={top_k!r}: must be a positive int.")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p={top_p!r}: must be in (0, 1].")
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p

    def candidates(self, scores: torch.FloatTensor) -> tuple[torch.FloatTensor, torch.LongTensor]:
        """The tempered scores after top-k and top-p, as (values, token ids), each (rows, candidates): the tokens
        `generate`'s warpers leave finite, at the values they leave them, among -inf entries."""
        scores = scores / self.temperature
        vocab = scores.shape[-1]
        top_k = min(self.top_k, vocab)
        values, indices = scores.topk(top_k, dim=-1)  # (rows, k), descending
        kth = values[:, -1:]  # (rows, 1): the k-th highest score
        # bf16 logits tie often: a row keeps every score equal to its k-th, so take as many as the row with most
        candidates = int((scores >= kth).sum(dim=-1).max())
        if candidates > top_k:
            values, indices = scores.topk(candidates, dim=-1)
            values = values.masked_fill(values < kth, -float("inf"))
        if self.top_p < 1:
            # mass of each candidate and all below it: a cumulative sum from the lowest score up, as TopPLogitsWarper
            mass_at_or_below = values.softmax(dim=-1).flip(-1).cumsum(dim=-1).flip(-1)
            drop = mass_at_or_below <= 1 - self.top_p
            drop[:, 0] = False  # the highest-scoring token always stays
            values = values.masked_fill(drop, -float("inf"))
        return values, indices

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        values, indices = self.candidates(scores)
        choice = torch.multinomial(values.softmax(dim=-1), num_samples=1)  # (rows, 1) into the candidates
        drawn = torch.full_like(scores, -float("inf"))
        return drawn.scatter_(1, indices.gather(1, choice), 0.0)


def sampling_arguments(config: GenerationConfig | None, temperature: float, top_p: float) -> dict:
    """Keyword arguments for `generate` that sample at `temperature` and `top_p` (greedy decoding when temperature
    is 0) with the rest of the model's generation_config `config` (None: transformers' defaults) as `generate` would
    apply it."""
    if temperature == 0:
        return {"do_sample": False}
    config = config if config is not None else GenerationConfig()
    top_k = generation_value(config, "top_k")
    other_warpers = (
        generation_value(config, "min_p") is not None
        or generation_value(config, "typical_p") != 1.0
        or bool(generation_value(config, "epsilon_cutoff"))
        or bool(generation_value(config, "eta_cutoff"))
    )
    if not top_k or other_warpers:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {"do_sample": False, "logits_processor": LogitsProcessorList([TopKTopPSampler(temperature, top_k, top_p)])}
