import json

import pytest

from trl_ib.builtin import train_tokenizer
from trl_ib.demo.run import main
from trl_ib.demo.tasks import OPERATIONS, VARIABLES, make_problem, make_task
from trl_ib.code_eval import score
from trl_ib.evaluation import build_programs


@pytest.fixture(scope="module")
def task():
    return make_task(seed=3)


def test_same_seed_same_problems_other_seed_other_problems(task):
    assert make_task(seed=3) == task
    assert make_task(seed=4).train != task.train


def test_split_sizes_and_disjointness(task):
    assert (len(task.train), len(task.reference), len(task.held_out), len(task.held_out_pairs)) == (200, 200, 60, 12)
    prompts = [p["prompt"] for p in task.train + task.reference + task.held_out]
    assert len(set(prompts)) == len(prompts)


def test_held_out_pairs_are_new_combinations_of_seen_operations(task):
    train_pairs = {tuple(p["operations"]) for p in task.train + task.reference}
    held_out_pairs = {tuple(p["operations"]) for p in task.held_out}
    assert held_out_pairs == set(task.held_out_pairs)
    assert not train_pairs & held_out_pairs
    assert {a for a, _ in train_pairs} == {b for _, b in train_pairs} == set(OPERATIONS)


def test_problem_layout_and_hand_checked_tests():
    problem = make_problem("demo/0", [("add", 3), ("multiply", 2)], "acc")
    assert problem["prompt"] == (
        'def f(x):\n    """Take an integer x, add 3 to it, then multiply it by 2, and return the result."""\n'
    )
    assert problem["canonical_solution"] == "    acc = x + 3\n    acc = acc * 2\n    return acc\n"
    assert problem["test"] == (
        "def check(candidate):\n    assert candidate(-7) == -8\n    assert candidate(-2) == 2\n"
        "    assert candidate(0) == 6\n    assert candidate(1) == 8\n    assert candidate(4) == 14\n"
        "    assert candidate(11) == 28\n"
    )
    assert problem["entry_point"] == "f"


def test_canonical_solutions_pass_and_wrong_ones_fail_in_the_sandbox(task):
    problems = task.train[:20] + task.held_out[:20]
    prompts = [p["prompt"] for p in problems]
    wrong = "    return None\n"
    programs = build_programs(prompts, [[p["canonical_solution"], wrong] for p in problems], "python")
    scores = score(programs, [p["test"] for p in problems], [p["entry_point"] for p in problems], progress=False)
    assert [(right.passed, wrong.passed) for right, wrong in scores.results] == [(True, False)] * len(problems)


def test_variable_names_vary_and_completion_tokenizes_after_the_prompt(task):
    assert {p["canonical_solution"].split()[0] for p in task.train} == set(VARIABLES)
    texts = [p["prompt"] + p["canonical_solution"] for p in task.train]
    tokenizer = train_tokenizer(texts)
    prompt_ids = tokenizer(task.held_out[0]["prompt"])["input_ids"]
    full_ids = tokenizer(task.held_out[0]["prompt"] + task.held_out[0]["canonical_solution"])["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids
    assert tokenizer.tokenize("x = x + 37") == ["x", "Ġ=", "Ġx", "Ġ+", "Ġ", "3", "7"]


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, capsys):
    main(["--quick", "--seed", "1", "--output_dir", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| model | Pass@1 | Pass@5^(5) | Pass@10^(10) |" in printed
    for row in ("| base |", "| LoRA FT |", "| IB-FT |"):
        assert row in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert list(results["models"]) == ["base", "LoRA FT", "IB-FT"]
    for row in results["models"].values():
        assert set(row["pass"]) == {f"pass@{k}^({m})" for k in (1, 5, 10) for m in range(1, k + 1)}
        assert len(row["num_correct"]) == 12
    for path in ("min_k.png", "pass_at_10_m.png", "base/config.json", "lora/adapter_config.json",
                 "ib-lora/adapter_config.json", "lora/README.md", "ib-lora/README.md"):  # fmt: skip
        assert (tmp_path / path).stat().st_size > 0
    assert json.loads((tmp_path / "ib-lora/adapter_config.json").read_text())["peft_type"] == "IBLORA"
