import json

import numpy as np
import pytest

from trl_ib.demo.run import main
from trl_ib.demo.study import paired_bootstrap
from trl_ib.demo.tasks import OPERATIONS, VARIABLES, consecutive_pairs, make_problem, make_task, split_pairs
from trl_ib.code_eval import score
from trl_ib.evaluation import build_programs


@pytest.fixture(scope="module")
def task():
    return make_task(seed=3)


def test_same_seed_same_problems_other_seed_other_problems(task):
    assert make_task(seed=3) == task
    assert make_task(seed=4).train != task.train


def test_split_sizes_and_disjointness(task):
    sizes = [len(task.train), len(task.reference), len(task.validation), len(task.held_out)]
    assert sizes + [len(task.validation_pairs), len(task.held_out_pairs)] == [128, 128, 60, 60, 8, 12]
    prompts = [p["prompt"] for p in task.train + task.reference + task.validation + task.held_out]
    assert len(set(prompts)) == len(prompts)


def test_validation_and_held_out_problems_are_longer_chains_through_their_own_new_pairs(task):
    train_pairs = set().union(*(consecutive_pairs(p["operations"]) for p in task.train + task.reference))
    assert [len(p["operations"]) for p in task.train[:4] + task.reference[:2]] == [2, 3, 2, 3, 2, 3]
    assert [len(p["operations"]) for p in task.validation[:2] + task.held_out[:4]] == [4, 5, 4, 5, 4, 5]
    assert not train_pairs & (set(task.validation_pairs) | set(task.held_out_pairs))
    assert not set(task.validation_pairs) & set(task.held_out_pairs)
    assert len(train_pairs) + 8 + 12 == len(OPERATIONS) * (len(OPERATIONS) - 1)
    for problems, new_pairs in ((task.validation, task.validation_pairs), (task.held_out, task.held_out_pairs)):
        for problem in problems:
            chain = consecutive_pairs(problem["operations"])
            assert chain <= train_pairs | set(new_pairs) and chain & set(new_pairs)


def test_too_many_problems_of_few_chains_is_a_clear_error():
    assert consecutive_pairs(("add", "square", "add")) == {("add", "square"), ("square", "add")}
    with pytest.raises(ValueError, match="num_train=100: only 4[0-9] distinct problems"):
        make_task(seed=0, num_train=100, train_lengths=(1,))
    # one operation has no pair, so no chain of 1 can go through a new pair
    with pytest.raises(ValueError, match=r"validation lengths=\(1,\): no chain of 1 operations .* one new pair"):
        make_task(seed=0, test_lengths=(1,))


def test_split_pairs_rejects_too_many_held_out_pairs():
    import random

    with pytest.raises(ValueError, match="num_validation_pairs=20, num_held_out_pairs=21"):
        split_pairs(random.Random(0), 20, 21)


def test_problem_layout_and_hand_checked_tests():
    problem = make_problem("demo/0", [("add", 3), ("multiply", 2)], "acc")
    assert problem["prompt"] == (
        'def f(x):\n    """Take an integer x, add 3 to it, then multiply it by 2, and return the result."""'
    )
    assert problem["canonical_solution"] == "\n    acc = x + 3\n    acc = acc * 2\n    return acc\n"
    assert problem["test"] == (
        "def check(candidate):\n    assert candidate(-7) == -8\n    assert candidate(-2) == 2\n"
        "    assert candidate(0) == 6\n    assert candidate(1) == 8\n    assert candidate(4) == 14\n"
        "    assert candidate(11) == 28\n"
    )
    assert problem["entry_point"] == "f"


def test_canonical_solutions_pass_and_wrong_ones_fail_in_the_sandbox(task):
    problems = task.train[:20] + task.held_out[:20]
    prompts = [p["prompt"] for p in problems]
    wrong = "\n    return None\n"
    programs = build_programs(prompts, [[p["canonical_solution"], wrong] for p in problems], "python")
    scores = score(programs, [p["test"] for p in problems], [p["entry_point"] for p in problems], progress=False)
    assert [(right.passed, wrong.passed) for right, wrong in scores.results] == [(True, False)] * len(problems)


def test_variable_names_vary_and_prompts_end_before_the_newline(task):
    assert {p["canonical_solution"].split()[0] for p in task.train} == set(VARIABLES)
    # a byte-level BPE merges "\n" with the indentation after it: the prompt must not end in it
    assert all(p["prompt"].endswith('."""') and p["canonical_solution"].startswith("\n    ") for p in task.train)


def test_paired_bootstrap_hand_cases():
    # one seed, two problems: resampled means 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4
    assert paired_bootstrap(np.array([[0.0, 1.0]])) == (0.5, 0.0, 1.0)
    mean, low, high = paired_bootstrap(np.array([[0.0, 1.0]]), confidence=0.4, num_resamples=100_000)
    assert (mean, low, high) == (0.5, 0.5, 0.5)  # the central 40% is all 0.5
    assert paired_bootstrap(np.full((3, 5), -0.25)) == (-0.25, -0.25, -0.25)
    # seeds are resampled too: two seeds with constant rows 0 and 1 give means 0, 0.5, 1 as well
    assert paired_bootstrap(np.array([[0.0, 0.0], [1.0, 1.0]])) == (0.5, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        paired_bootstrap(np.zeros(4))


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IB_FT_CACHE", str(tmp_path / "cache"))
    main(["--quick", "--seeds", "1", "--output_dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "| model | Pass@1 | Pass@5^(5) | Pass@10^(10) |" in printed
    for row in ("| base |", "| LoRA FT, seed 1 |", "| IB-FT, seed 1 |"):
        assert row in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(results["seeds"]["1"]) == ["LoRA FT", "IB-FT"]
    for row in [results["base"], *results["seeds"]["1"].values()]:
        assert set(row["pass"]) == {f"pass@{k}^({m})" for k in (1, 5, 10) for m in range(1, k + 1)}
        assert len(row["num_correct"]) == 4
    out = tmp_path / "out"
    for path in ("min_k.png", "pass_at_10_m.png", "seed-1/lora/adapter_config.json", "seed-1/ib-lora/README.md",
                 "seed-1/ib-lora/adapter_config.json", "seed-1/lora/README.md"):  # fmt: skip
        assert (out / path).stat().st_size > 0
    assert json.loads((out / "seed-1/ib-lora/adapter_config.json").read_text())["peft_type"] == "IBLORA"


def test_contaminated_base_is_cached_and_a_failed_run_leaves_nothing(tmp_path, monkeypatch):
    from trl_ib.demo import contaminate as module

    monkeypatch.setenv("IB_FT_CACHE", str(tmp_path))
    calls = []

    def interrupted(model_name, texts, output_dir, epochs):
        calls.append(output_dir)
        (output_dir / "model.safetensors").parent.mkdir(parents=True)
        (output_dir / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "contaminate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module.cached_contaminated_base("base", ["a", "b"], 3)
    assert list((tmp_path / "demo").iterdir()) == []  # no half-written model left in the cache

    def trained(model_name, texts, output_dir, epochs):
        calls.append(output_dir)
        output_dir.mkdir(parents=True)
        (output_dir / "config.json").write_text("{}")

    monkeypatch.setattr(module, "contaminate", trained)
    first = module.cached_contaminated_base("base", ["a", "b"], 3)
    assert module.cached_contaminated_base("base", ["a", "b"], 3) == first  # cache hit: no third call
    assert len(calls) == 2 and (first / "config.json").read_text() == "{}"
    assert [path.name for path in (tmp_path / "demo").iterdir()] == [first.name]
    assert module.cached_contaminated_base("base", ["a", "c"], 3) != first  # another recipe, another folder
