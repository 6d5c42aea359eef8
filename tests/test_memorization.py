import json
import math

import pytest
import torch
from peft import LoraConfig, get_peft_model

from tests.tiny_models import tiny_llama, train_tokenizer
from trl_ib.cli.memorization import main
from trl_ib.memorization import (
    centroid_gap,
    drop_top_memorized,
    extreme_groups,
    num_lowest,
    pooled_hidden_states,
    representation_gap,
    score_min_k,
    summarize,
    tokenize_example,
)

EXAMPLES = [
    {"prompt": "Write a function that returns the sum.\n", "completion": "def add(a, b):\n    return a + b\n"},
    {"prompt": "def mul(a, b):", "completion": "\n    return a * b\n"},
    {"prompt": "module top(input a, input b,", "completion": " output y); assign y = a & b; endmodule\n"},
    {"prompt": "Write", "completion": " a function"},
    {"prompt": "Write a function that returns", "completion": " a + b\n"},
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="module")
def model():
    return tiny_llama().eval()


def naive_min_k(model, tokenizer, example, k):
    """Per-token log-probs of one unpadded sequence by plain log_softmax, then the mean of the k% lowest, negated."""
    prompt_len = len(tokenizer(example["prompt"])["input_ids"])
    input_ids = torch.tensor([tokenizer(example["prompt"] + example["completion"])["input_ids"]])
    with torch.no_grad():
        logprobs = model(input_ids).logits[0].log_softmax(-1)
    response = [logprobs[t - 1, input_ids[0, t]].item() for t in range(prompt_len, input_ids.shape[1])]
    count = max(1, int(k * len(response) + 1e-9))
    return -sum(sorted(response)[:count]) / count


@pytest.mark.parametrize(
    ("num_tokens", "k", "expected"), [(4, 0.2, 1), (10, 0.2, 2), (14, 0.2, 2), (100, 0.29, 29), (3, 1.0, 3)]
)
def test_num_lowest_is_floor_of_k_n_at_least_one(num_tokens, k, expected):
    assert num_lowest(num_tokens, k) == expected


@pytest.mark.parametrize("k", [0.0, -0.1, 1.5])
def test_k_out_of_range_names_k(k):
    with pytest.raises(ValueError, match=rf"k={k!r}.*\(0, 1\]"):
        num_lowest(5, k)


def test_uniform_model_scores_log_vocab(model, tokenizer):
    uniform = tiny_llama()
    torch.nn.init.zeros_(uniform.lm_head.weight)  # every logit 0: p = 1/300 for every token
    assert score_min_k(uniform, tokenizer, EXAMPLES) == pytest.approx([math.log(300)] * len(EXAMPLES), abs=1e-6)


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_min_k_equals_hand_computation(model, tokenizer, k):
    expected = [naive_min_k(model, tokenizer, example, k) for example in EXAMPLES]
    assert score_min_k(model, tokenizer, EXAMPLES, k=k, batch_size=len(EXAMPLES)) == pytest.approx(expected, abs=1e-5)


def test_batching_and_padding_do_not_change_scores(model, tokenizer):
    one = score_min_k(model, tokenizer, EXAMPLES, batch_size=1)
    four = score_min_k(model, tokenizer, EXAMPLES, batch_size=4)
    assert four == pytest.approx(one, abs=1e-5)


def test_examples_without_prompt_completion_name_their_keys(tokenizer):
    with pytest.raises(ValueError, match=r"\['text'\]: need 'prompt' and 'completion'"):
        tokenize_example(tokenizer, {"text": "x"})


def test_response_starts_where_prompt_and_full_tokenizations_diverge(tokenizer):
    # "d" + "d(" merge into one token ("dd") across the boundary: that token is scored as response, as TRL trains it
    prompt_ids = tokenizer("def ad")["input_ids"]
    row = tokenize_example(tokenizer, {"prompt": "def ad", "completion": "d(a, b):\n    return a * b\n"})
    num_prompt = row["labels"].count(-100)
    assert num_prompt == len(prompt_ids) - 1
    assert row["input_ids"][:num_prompt] == prompt_ids[:num_prompt]
    assert row["labels"][num_prompt:] == row["input_ids"][num_prompt:]


def test_drop_top_memorized_drops_the_lowest_scores():
    scores = [3.0, 1.0, 2.0, 1.0, 5.0, 0.5]
    assert drop_top_memorized(scores, 0.5) == [0, 2, 4]  # 3 dropped: 0.5, then both 1.0
    assert drop_top_memorized(scores, 0.34) == [0, 2, 3, 4]  # floor(2.04) = 2 dropped: the tie 1.0 drops index 1
    assert drop_top_memorized(scores, 0.0) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"fraction=1.0.*\[0, 1\)"):
        drop_top_memorized(scores, 1.0)


def test_extreme_groups_break_ties_by_index():
    assert extreme_groups([2.0, 1.0, 1.0, 3.0, 3.0], 0.4) == ([1, 2], [3, 4])


def test_centroid_gap_hand_values():
    assert centroid_gap(torch.tensor([[1.0, 0.0], [3.0, 0.0]]), torch.tensor([[0.0, 2.0]])) == pytest.approx(
        {"l2": math.sqrt(8), "angle_degrees": 90.0}
    )
    opposite = centroid_gap(torch.tensor([[2.0, 2.0]]), torch.tensor([[-1.0, -1.0]]))
    assert opposite == pytest.approx({"l2": math.sqrt(18), "angle_degrees": 180.0})


def test_pooled_hidden_states_read_block_at_relative_depth(model, tokenizer):
    # 0.625 of 4 blocks: the output of block round(2.5) = 3 counted from 1, i.e. hidden_states[3]
    example = EXAMPLES[0]
    prompt_len = len(tokenizer(example["prompt"])["input_ids"])
    input_ids = torch.tensor([tokenizer(example["prompt"] + example["completion"])["input_ids"]])
    with torch.no_grad():
        hidden = model(input_ids, output_hidden_states=True).hidden_states[3][0, prompt_len:].mean(0)
    pooled = pooled_hidden_states(model, tokenizer, EXAMPLES, layer=0.625, batch_size=3)
    assert pooled.shape == (len(EXAMPLES), 32)
    torch.testing.assert_close(pooled[0], hidden, atol=1e-5, rtol=0)


def test_representation_gap_of_identical_groups_is_zero(model, tokenizer):
    examples = [EXAMPLES[0]] * 4
    gap = representation_gap(model, tokenizer, examples, [0.1, 0.2, 0.3, 0.4], fraction=0.5, batch_size=4)
    assert gap == pytest.approx({"l2": 0.0, "angle_degrees": 0.0}, abs=1e-5)


def test_representation_gap_is_centroid_gap_of_extreme_groups(model, tokenizer):
    scores = [0.3, 0.1, 0.5, 0.2, 0.4]  # most memorized: 1, 3; least: 2, 4
    pooled = pooled_hidden_states(model, tokenizer, EXAMPLES)
    expected = centroid_gap(pooled[[1, 3]], pooled[[2, 4]])
    assert representation_gap(model, tokenizer, EXAMPLES, scores, fraction=0.4) == pytest.approx(expected, rel=1e-6)


def test_summarize_quantiles():
    summary = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert summary == pytest.approx(
        {"count": 5, "mean": 3.0, "std": math.sqrt(2), "median": 3.0}
        | {"q05": 1.2, "q25": 2.0, "q50": 3.0, "q75": 4.0, "q95": 4.8}
    )


def test_cli_scores_base_and_adapter_and_drops(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    paper_rows = [{"Instruction": e["prompt"], "Response": e["completion"], "id": i} for i, e in enumerate(EXAMPLES)]
    (tmp_path / "d_code.jsonl").write_text("".join(json.dumps(row) + "\n" for row in paper_rows))
    (tmp_path / "reference.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES[:3]))
    (tmp_path / "run.yaml").write_text(f"model_name_or_path: {tmp_path / 'base'}\nk: 0.5\nib_layers: 1\n")
    out = tmp_path / "out"
    main(
        [
            "--config",
            str(tmp_path / "run.yaml"),
            "--dataset",
            str(tmp_path / "d_code.jsonl"),
            "--output_dir",
            str(out),
            "--adapter_path",
            str(tmp_path / "adapter"),
            "--reference_dataset",
            str(tmp_path / "reference.jsonl"),
            "--drop-top-memorized",
            "0.4",
            "--gap_fraction",
            "0.4",
            "--batch_size",
            "2",
        ]
    )

    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    paper = [{"prompt": e["prompt"] + "\n", "completion": e["completion"]} for e in EXAMPLES]
    base = score_min_k(model, tokenizer, paper, k=0.5)
    assert [row["min_k_base"] for row in rows] == pytest.approx(base, abs=1e-5)
    assert [row["min_k_adapter"] for row in rows] == pytest.approx(base, abs=1e-5)  # LoRA B starts at 0
    kept = [json.loads(line)["id"] for line in (out / "kept.jsonl").read_text().splitlines()]
    assert kept == drop_top_memorized(base, 0.4)
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["distributions"]) == ["dataset under adapter", "dataset under base", "reference under base"]
    assert summary["representation_gap"]["base"] == pytest.approx(
        representation_gap(model, tokenizer, paper, base, fraction=0.4, layer=1), rel=1e-5
    )
    assert (out / "min_k.png").stat().st_size > 0
