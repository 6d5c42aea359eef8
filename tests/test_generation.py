from unittest import mock

import pytest
import torch

from tiny_models import CHAT_TEMPLATE, tiny_gpt2, tiny_llama, train_tokenizer
from trl_ib.code_eval.extraction import cut_at_stop
from trl_ib.generation.hf_generation import generate_samples, sample_batches
from trl_ib.generation.prompting import PromptFormat

CHAT_PROMPT = 'def one():\n    """Return 1."""\n'
PROMPTS = ["def add(a, b):\n", "Write a function that returns the sum of a list.\n", "module top(input a"]
NEWLINES = ["\n", "\r"]  # "\r" ends a line in Python source too


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    tokenizer = train_tokenizer(tmp_path_factory.mktemp("tokenizer"))
    return tiny_llama(vocab_size=len(tokenizer)), tokenizer


def plain_generate_loop(model, tokenizer, texts, num_samples, max_new_tokens, stop_sequences, add_special_tokens=True):
    """The reference: one greedy `generate` call per prompt on n copies of it, no padding (greedy `generate` refuses
    num_return_sequences > 1, which would make the same copies)."""
    completions = []
    for text in texts:
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=add_special_tokens)["input_ids"]
        with torch.inference_mode():
            output = model.generate(
                input_ids.repeat(num_samples, 1),
                attention_mask=torch.ones_like(input_ids).repeat(num_samples, 1),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
            )
        answers = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        completions.append([cut_at_stop(answer, stop_sequences) for answer in answers])
    return completions


def test_shape_stops_and_training_mode_restored(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.train()
    completions = generate_samples(
        model, tokenizer, PROMPTS, 3, max_new_tokens=12, stop_sequences=NEWLINES, batch_size=4
    )
    assert [len(group) for group in completions] == [3, 3, 3]
    assert all("\n" not in c and "\r" not in c for group in completions for c in group)
    assert model.training


def test_padding_side_restored(model_and_tokenizer):
    """Generation pads on the left, and leaves the caller's tokenizer (a trainer's processing_class, saved with
    the adapter) padding on the side it had, also when generation fails."""
    model, tokenizer = model_and_tokenizer
    assert tokenizer.padding_side == "right"
    generate_samples(model, tokenizer, PROMPTS, 2, 0.0, max_new_tokens=4, stop_sequences=NEWLINES)
    assert tokenizer.padding_side == "right"
    with pytest.raises(ValueError):
        generate_samples(model, tokenizer, PROMPTS, 1, 0.0, max_new_tokens=-1)
    assert tokenizer.padding_side == "right"


class ScriptedModel(torch.nn.Module):
    """Writes `answer` token by token after every prompt, checking the stopping criteria after each token as
    `generate` does."""

    def __init__(self, answer_ids: list[int]):
        super().__init__()
        self.answer_ids = answer_ids
        self.device = torch.device("cpu")

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, stopping_criteria=None, **sampling):
        for token in self.answer_ids[:max_new_tokens]:
            input_ids = torch.cat([input_ids, torch.full((len(input_ids), 1), token)], dim=1)
            if stopping_criteria is not None and stopping_criteria(input_ids, None).all():
                break
        return input_ids


@pytest.mark.parametrize(
    "answer",
    [
        "```\n\nHere is the solution:\n```python\ndef one():\n    return 1\n```\n\nIt returns 1.\n",
        "```\n```python\ndef one():\n    return 1\n```\nDone.",
        "def one():\n    return 1\n```\n\n```python\nprint(one())\n```\n",  # the usual answer: code, then the fence
    ],
)
def test_chat_answer_closing_the_opened_block_at_once_keeps_its_later_code(tmp_path, answer):
    """An answer that closes the block the response prefix opened, then writes its code in a later block, is not
    cut at that first fence (a bare fence as the stop sequence cut it there: "failed: no code in the answer")."""
    tokenizer = train_tokenizer(tmp_path)
    tokenizer.chat_template = CHAT_TEMPLATE
    chat = PromptFormat("chat")
    model = ScriptedModel(tokenizer(answer, add_special_tokens=False)["input_ids"])
    [[completion]] = generate_samples(model, tokenizer, [CHAT_PROMPT], 1, 0.0, max_new_tokens=200, prompt_format=chat)
    assert completion == answer[: answer.index("return 1\n") + len("return 1")]  # stopped at the closing fence
    assert chat.program(CHAT_PROMPT, completion, "one") == CHAT_PROMPT + "\n\ndef one():\n    return 1\n"
    if answer.startswith("```"):  # the old stop, a bare fence, left nothing to test
        [[cut]] = generate_samples(model, tokenizer, [CHAT_PROMPT], 1, 0.0, stop_sequences=["```"], prompt_format=chat)
        assert chat.program(CHAT_PROMPT, cut, "one") is None


def test_greedy_equals_a_plain_generate_loop(model_and_tokenizer):
    """Length-sorted, padded, mixed batches and one decode per prompt give the reference's exact samples."""
    model, tokenizer = model_and_tokenizer
    expected = plain_generate_loop(model, tokenizer, PROMPTS, 4, 16, NEWLINES)
    assert len({c for group in expected for c in group}) > 1  # the prompts get different completions
    assert (
        generate_samples(model, tokenizer, PROMPTS, 4, 0.0, max_new_tokens=16, stop_sequences=NEWLINES, batch_size=2)
        == expected
    )


def test_a_frozen_models_output_layer_gets_a_contiguous_input_and_the_same_samples(model_and_tokenizer):
    """At prefill `generate` hands the output layer the last position's slice, (rows, 1, H), not contiguous; with a
    frozen weight torch.matmul would then multiply `rows` copies of it. generate_samples makes the input contiguous
    while it runs (and only then), which leaves the greedy samples as they were."""
    model, tokenizer = model_and_tokenizer
    output_layer = model.get_output_embeddings()
    seen = []
    spy = output_layer.register_forward_hook(lambda module, args, output: seen.append(args[0].is_contiguous()))
    model.requires_grad_(False)
    try:
        expected = plain_generate_loop(model, tokenizer, PROMPTS, 2, 6, NEWLINES)
        seen_by_plain_generate, seen[:] = list(seen), []
        got = generate_samples(
            model, tokenizer, PROMPTS, 2, 0.0, max_new_tokens=6, stop_sequences=NEWLINES, batch_size=3
        )
    finally:
        spy.remove()
        model.requires_grad_(True)
    assert False in seen_by_plain_generate and seen and all(seen)
    assert got == expected
    assert not output_layer._forward_pre_hooks and not output_layer._forward_hooks


def test_chat_mode_generates_from_the_rendered_turns(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    tokenizer.chat_template = CHAT_TEMPLATE
    chat = PromptFormat("chat")
    rendered = [chat.render(prompt, tokenizer) for prompt in PROMPTS]
    expected = plain_generate_loop(model, tokenizer, rendered, 1, 10, chat.stop_sequences, add_special_tokens=False)
    assert generate_samples(model, tokenizer, PROMPTS, 1, 0.0, max_new_tokens=10, prompt_format=chat) == expected


def sampled(model, tokenizer, **kwargs):
    """{(problem, sample): completion} of 3 samples per prompt at temperature 1, batches of 2 rows."""
    batches = sample_batches(model, tokenizer, PROMPTS, 3, 1.0, 1.0, max_new_tokens=8, batch_size=2, **kwargs)
    return {(problem, sample): text for rows in batches for problem, sample, text in rows}


def test_seeded_batches_reproduce_alone_after_a_resume_and_on_any_process(model_and_tokenizer):
    """Each batch draws from a generator seeded by (seed, batch index): skipping batches that are done, or splitting
    them over two processes, gives exactly the samples of one uninterrupted run."""
    model, tokenizer = model_and_tokenizer
    torch.manual_seed(123)
    whole = sampled(model, tokenizer, seed=7)
    assert sorted(whole) == [(p, s) for p in range(3) for s in range(3)]
    assert len(set(whole.values())) > 3  # sampling: the 3 samples of a prompt differ
    torch.manual_seed(456)  # the global generator's state does not matter
    assert sampled(model, tokenizer, seed=7) == whole
    assert sampled(model, tokenizer, seed=8) != whole
    # 9 requests in 5 batches of 2 (the last holds 1): a run that finished batches 0 and 1 resumes with batches 2-4
    batches = list(sample_batches(model, tokenizer, PROMPTS, 3, 1.0, 1.0, max_new_tokens=8, batch_size=2, seed=7))
    assert [len(rows) for rows in batches] == [2, 2, 2, 2, 1]
    first_two = {(p, s): t for rows in batches[:2] for p, s, t in rows}
    rest = sampled(model, tokenizer, seed=7, done=first_two)
    assert set(rest).isdisjoint(first_two) and {**first_two, **rest} == whole
    ranks = [sampled(model, tokenizer, seed=7, rank=rank, world_size=2) for rank in (0, 1)]
    assert set(ranks[0]).isdisjoint(ranks[1]) and {**ranks[0], **ranks[1]} == whole


def test_greedy_batches_fill_every_sample_of_their_prompts(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    batches = list(sample_batches(model, tokenizer, PROMPTS, 4, 0.0, max_new_tokens=6, batch_size=2, seed=0))
    assert [len(rows) for rows in batches] == [8, 4]  # 3 decodes in batches of 2, each standing for 4 samples
    rows = [row for batch in batches for row in batch]
    assert sorted((p, s) for p, s, _ in rows) == [(p, s) for p in range(3) for s in range(4)]
    expected = generate_samples(model, tokenizer, PROMPTS, 4, 0.0, max_new_tokens=6, batch_size=2)
    assert {(p, s): t for p, s, t in rows} == {(p, s): expected[p][s] for p in range(3) for s in range(4)}
    # a prompt's 4 greedy samples are one decode: done as soon as all of them are
    done = {(p, s) for p, s, _ in batches[0]}
    assert [
        row
        for batch in sample_batches(model, tokenizer, PROMPTS, 4, 0.0, max_new_tokens=6, batch_size=2, done=done)
        for row in batch
    ] == batches[1]


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_a_shared_prefill_gives_the_samples_of_a_prefill_per_row(tmp_path, architecture):
    """The n samples of a prompt share one prefill of all but its last token (`prompt_cache`). At float32 the seeded
    samples are those of a prefill per row, also with prompts of different lengths (left padding) and batches that
    split a prompt's samples; each distinct prompt of a batch is prefilled once."""
    tokenizer = train_tokenizer(tmp_path)
    model = (tiny_llama if architecture == "llama" else tiny_gpt2)(vocab_size=len(tokenizer))
    prefills = []
    spy = model.register_forward_pre_hook(
        lambda module, args, kwargs: prefills.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        shared = generate_samples(model, tokenizer, PROMPTS, 4, 1.0, max_new_tokens=8, batch_size=5, seed=3)
        seen, prefills[:] = list(prefills), []
        with mock.patch("trl_ib.generation.hf_generation.prompt_cache", lambda model, inputs, rows: None):
            per_row = generate_samples(model, tokenizer, PROMPTS, 4, 1.0, max_new_tokens=8, batch_size=5, seed=3)
    finally:
        spy.remove()
    assert shared == per_row and len({c for group in shared for c in group}) > 4
    lengths = sorted(len(tokenizer(p)["input_ids"]) for p in PROMPTS)
    # 12 requests, longest prompt first, in batches of 5, 5, 2 rows hold 2, 2 and 1 distinct prompts: one forward
    # prefills their shared part, then `generate` runs the last prompt token and decodes one token per row
    assert [shape for shape in seen if shape[1] > 1] == [(2, lengths[2] - 1), (2, lengths[1] - 1), (1, lengths[0] - 1)]
    assert {shape for shape in seen if shape[1] == 1} == {(5, 1), (2, 1)}
    assert [shape for shape in prefills if shape[1] > 1] == [(5, lengths[2]), (5, lengths[1]), (2, lengths[0])]
