"""TopKTopPSampler draws from generate's own temperature -> top-k -> top-p distribution, over the candidates only."""

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from trl_ib.generation.sampling import TopKTopPSampler, sampling_arguments

SETTINGS = [(0.8, 50, 0.95), (1.0, 5, 0.5), (0.2, 50, 1.0), (0.8, 1, 0.95), (0.8, 2000, 0.9)]


def warped(scores: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """What `generate(do_sample=True)` samples from: its own warpers, in its order."""
    scores = TopKLogitsWarper(top_k)(None, TemperatureLogitsWarper(temperature)(None, scores.clone()))
    return TopPLogitsWarper(top_p)(None, scores) if top_p < 1 else scores


def candidates_as_scores(scores: torch.Tensor, sampler: TopKTopPSampler) -> torch.Tensor:
    values, indices = sampler.candidates(scores)
    return torch.full_like(scores, -float("inf")).scatter(1, indices, values)


@pytest.mark.parametrize("temperature, top_k, top_p", SETTINGS)
def test_candidates_are_the_tokens_generates_warpers_keep(temperature, top_k, top_p):
    """Untied scores: the same tokens at the same values. bf16-rounded scores and a 100-way tie at the top (past k):
    the same multiset of values per row (tied tokens are interchangeable; which of them a sort puts first is
    arbitrary in both), and every kept token is one generate's top-k keeps."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        scores = torch.randn(8, 1000, generator=generator) * 3
        sampler = TopKTopPSampler(temperature, top_k, top_p)
        assert torch.equal(candidates_as_scores(scores, sampler), warped(scores, temperature, top_k, top_p))
        for tied in (scores.bfloat16().float(), scores.index_fill(1, torch.arange(100), float(scores.max()))):
            mine, reference = candidates_as_scores(tied, sampler), warped(tied, temperature, top_k, top_p)
            assert torch.equal(mine.sort(dim=-1).values, reference.sort(dim=-1).values)
            top_k_set = torch.isfinite(warped(tied, temperature, top_k, 1.0))
            assert bool(top_k_set[torch.isfinite(mine)].all())
    tied = torch.zeros(2, 100).index_fill(1, torch.arange(60), 1.0)  # 60 tokens share the top score, k = 50
    assert torch.isfinite(candidates_as_scores(tied, TopKTopPSampler(1.0, 50, 1.0))).sum(dim=-1).tolist() == [60, 60]


def test_draws_follow_the_warped_distribution():
    """200,000 draws over a 12-token vocabulary, k 6, top_p 0.8: each token's frequency is within 0.005 of the
    probability generate's warpers give it (5 standard errors at most), tokens they drop are never drawn, and the
    returned scores are 0 at the drawn token, -inf elsewhere."""
    scores = torch.tensor([[2.0, 1.5, 1.4, 0.3, 0.2, 0.1, 0.0, -1.0, 3.0, -2.0, 0.9, 1.0]]).repeat(200_000, 1)
    sampler = TopKTopPSampler(0.8, 6, 0.8)
    torch.manual_seed(0)
    out = sampler(None, scores)
    assert torch.equal(out.max(dim=-1).values, torch.zeros(len(out))) and bool(
        (torch.isfinite(out).sum(-1) == 1).all()
    )
    frequency = torch.bincount(out.argmax(dim=-1), minlength=12).double() / len(out)
    probability = warped(scores[:1], 0.8, 6, 0.8).softmax(dim=-1)[0].double()
    # by hand: the six highest over 0.8 have softmax .578 .166 .089 .078 .047 .042; from the bottom up, .042 + .047
    # + .078 = .167 <= 1 - 0.8, so 1.4, 1.0 and 0.9 go; 3.0, 2.0 and 1.5 stay, renormalized to .694 .199 .107
    assert torch.allclose(
        probability[[8, 0, 1]], torch.tensor([0.6945, 0.1990, 0.1065], dtype=torch.float64), atol=1e-4
    )
    assert int((probability > 0).sum()) == 3
    assert frequency[probability == 0].sum() == 0
    assert torch.allclose(frequency, probability, atol=0.005)


def test_sampling_arguments_choose_the_route_generate_would_sample_the_same_way_by():
    sampler_route = sampling_arguments(GenerationConfig(), 0.8, 0.95)
    assert sampler_route["do_sample"] is False  # generate's argmax takes the sampler's draw
    [sampler] = sampler_route["logits_processor"]
    assert (sampler.temperature, sampler.top_k, sampler.top_p) == (0.8, 50, 0.95)  # transformers' default k
    assert sampling_arguments(GenerationConfig(top_k=7), 0.8, 0.95)["logits_processor"][0].top_k == 7
    assert sampling_arguments(None, 0.8, 0.95)["logits_processor"][0].top_k == 50
    generates_own = {"do_sample": True, "temperature": 0.8, "top_p": 0.95}
    for config in (
        GenerationConfig(top_k=0),
        GenerationConfig(min_p=0.1),
        GenerationConfig(typical_p=0.9),
        GenerationConfig(epsilon_cutoff=3e-4),
        GenerationConfig(eta_cutoff=3e-4),
    ):
        assert sampling_arguments(config, 0.8, 0.95) == generates_own
    assert sampling_arguments(GenerationConfig(), 0.0, 0.95) == {"do_sample": False}


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((0.0, 50, 0.9), "temperature=0.0"),
        ((0.8, 0, 0.9), "top_k=0"),
        ((0.8, 50, 0.0), "top_p=0.0"),
        ((0.8, 50, 1.5), "top_p=1.5"),
    ],
)
def test_bad_settings_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        TopKTopPSampler(*arguments)
