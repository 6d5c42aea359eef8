import json
from collections import Counter

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_models import train_tokenizer
from trl_ib import builtin
from trl_ib.cli.demo import main
from trl_ib.code_eval import score
from trl_ib.demo import run
from trl_ib.demo.run import Budget, DemoArguments, base_scores
from trl_ib.demo.study import base_draws, contrasts, merge_runs, paired_bootstrap, shares_base_draws
from trl_ib.demo.tasks import OPERATIONS, VARIABLES, consecutive_pairs, make_problem, make_task, sft_rows, split_pairs
from trl_ib.generation.prompting import build_programs


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


def test_demo_sizes():
    assert (DemoArguments().budget().num_held_out, DemoArguments(small=True).budget().num_held_out) == (60, 30)
    assert DemoArguments(quick=True).budget().num_train == 16
    with pytest.raises(ValueError, match="quick=True and small=True: choose one size"):
        DemoArguments(quick=True, small=True)


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IB_FT_CACHE", str(tmp_path / "cache"))
    main(["--quick", "--seeds", "1", "--output_dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "| model | Pass@1 | Pass@5^(5) | Pass@10^(10) |" in printed
    rows = [f"{b}{a}, seed 1" for b in ("clean", "contaminated") for a in (" base", " + LoRA FT", " + IB-FT")]
    for row in rows:
        assert f"| {row} |" in printed
    assert "| barrier: clean gain - contaminated gain |" in printed
    assert "bootstrap intervals:" in printed  # the bases were drawn with the run's seed: no shared-draw warning
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    strength = results["strengths"]["1"]
    assert list(strength["seeds"]["1"]) == ["clean", "contaminated"]
    bases = strength["base_draws"]["1"]
    assert [row["sampling_seed"] for row in bases.values()] == [1, 1]
    scored = [*bases.values()] + [row for arms in strength["seeds"]["1"].values() for row in arms.values()]
    assert len(scored) == 6
    for row in scored:
        assert set(row["pass"]) == {
            f"pass@{k}^({m})" for k, m_max in ((1, 1), (5, 5), (10, 10)) for m in range(1, m_max + 1)
        }
        assert len(row["num_correct"]) == 4
    # the barrier's point estimate is the hand-computed difference of the four Pass@1 rows
    pass1 = {
        label: row["pass"]["pass@1^(1)"]
        for label, row in [
            ("cb", bases["clean"]),
            ("xb", bases["contaminated"]),
            ("cl", strength["seeds"]["1"]["clean"]["LoRA FT"]),
            ("xl", strength["seeds"]["1"]["contaminated"]["LoRA FT"]),
        ]
    }
    barrier = strength["contrasts"]["barrier: clean gain - contaminated gain"]["pass@1^(1)"][0]
    assert barrier == pytest.approx((pass1["cl"] - pass1["cb"]) - (pass1["xl"] - pass1["xb"]))
    assert strength["min_k_shift"]["shift"] == pytest.approx(
        strength["min_k_shift"]["reference"] - strength["min_k_shift"]["d_code"]
    )
    out = tmp_path / "out"
    for path in (
        "min_k.png",
        "pass_at_10_m.png",
        "1ep/seed-1/clean/lora/adapter_config.json",
        "1ep/seed-1/contaminated/ib-lora/README.md",
        "1ep/seed-1/contaminated/lora/README.md",
    ):
        assert (out / path).stat().st_size > 0
    assert json.loads((out / "1ep/seed-1/clean/ib-lora/adapter_config.json").read_text())["peft_type"] == "IBLORA"


def test_base_scores_are_evaluate_s_row_with_memorization_cached_once_and_samples_per_seed(
    tmp_path, monkeypatch, task
):
    monkeypatch.setattr(run, "SCORING_BACKEND", "hf")  # the tiny model's heads are narrower than vLLM's CPU serves
    base_dir = tmp_path / "base"
    tokenizer = train_tokenizer(base_dir)
    torch.manual_seed(0)
    builtin.tiny_llama(300, hidden_size=32, max_positions=1024).save_pretrained(base_dir)
    budget = Budget(4, 4, 2, 2, 1, max_new_tokens=6)
    problems, d_code, reference = task.held_out[:2], sft_rows(task.train[:4]), sft_rows(task.reference[:4])
    calls = Counter()
    for name in ("score_min_k", "representation_gap", "sample_and_score"):

        def counted(*args, _original=getattr(run, name), _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(run, name, counted)

    def scores(seed):
        return base_scores(base_dir, tokenizer, d_code, reference, problems, budget, torch.bfloat16, seed)

    first = scores(0)
    assert calls == {"score_min_k": 2, "representation_gap": 1, "sample_and_score": 1}  # D_code, reference; gap; draw
    assert scores(1)["sampling_seed"] == 1
    assert calls == {"score_min_k": 2, "representation_gap": 1, "sample_and_score": 2}  # only the draw is per seed
    assert scores(0) == json.loads(json.dumps(first))  # read back from the cache: nothing recomputed
    assert calls["sample_and_score"] == 2
    # the row is what `score_model` gives the base in float32 -> bf16, plus its Min-K% of the reference problems
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    reference_min_k = run.score_min_k(model, tokenizer, reference)
    expected = run.score_model(model, tokenizer, problems, d_code, None, budget, 0, torch.bfloat16)
    assert first == expected | {"min_k_reference": reference_min_k, "sampling_seed": 0}


def test_contaminated_base_is_cached_and_a_failed_run_leaves_nothing(tmp_path, monkeypatch):
    from trl_ib.demo import contaminate as module

    monkeypatch.setenv("IB_FT_CACHE", str(tmp_path))
    calls = []

    def interrupted(model_name, texts, output_dir, epochs, bf16):
        calls.append(output_dir)
        (output_dir / "model.safetensors").parent.mkdir(parents=True)
        (output_dir / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "contaminate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        module.cached_base("base", ["a", "b"], 3, False)
    assert list((tmp_path / "demo").iterdir()) == []  # no half-written model left in the cache

    def trained(model_name, texts, output_dir, epochs, bf16):
        calls.append(output_dir)
        output_dir.mkdir(parents=True)
        (output_dir / "config.json").write_text("{}")

    monkeypatch.setattr(module, "contaminate", trained)
    first = module.cached_base("base", ["a", "b"], 3, False)
    assert module.cached_base("base", ["a", "b"], 3, False) == first  # cache hit: no third call
    assert len(calls) == 2 and (first / "config.json").read_text() == "{}"
    assert [path.name for path in (tmp_path / "demo").iterdir()] == [first.name]
    assert module.cached_base("base", ["a", "c"], 3, False) != first  # other texts, another folder
    assert module.cached_base("base", ["a", "b"], 3, True) != first  # bf16: another folder


def test_contrasts_are_hand_computed_differences():
    # 2 problems, n = 10: Pass@1 of a problem is num_correct / 10
    def row(*num_correct):
        return {"num_correct": list(num_correct)}

    strength = {
        "base_draws": {"0": {"clean": row(2, 4), "contaminated": row(5, 5)}},
        "seeds": {
            "0": {
                "clean": {"LoRA FT": row(6, 8), "IB-FT": row(6, 6)},
                "contaminated": {"LoRA FT": row(5, 7), "IB-FT": row(8, 7)},
            }
        },
    }
    table = contrasts(strength, 10)
    mean = {name: values["pass@1^(1)"][0] for name, values in table.items()}
    assert mean["LoRA FT gain, clean base"] == pytest.approx(0.4)  # (0.4 + 0.4) / 2
    assert mean["LoRA FT gain, contaminated base"] == pytest.approx(0.1)  # (0 + 0.2) / 2
    assert mean["barrier: clean gain - contaminated gain"] == pytest.approx(0.3)
    assert mean["IB-FT - LoRA FT, clean base"] == pytest.approx(-0.1)  # (0 - 0.2) / 2
    assert mean["IB-FT - LoRA FT, contaminated base"] == pytest.approx(0.15)  # (0.3 + 0) / 2
    assert mean["barrier left under IB-FT: LoRA FT clean gain - IB-FT contaminated gain"] == pytest.approx(0.15)
    # per-problem barrier: (0.4 - 0.0, 0.4 - 0.2) = (0.4, 0.2): the bootstrap interval spans exactly those two
    assert table["barrier: clean gain - contaminated gain"]["pass@1^(1)"][1:] == pytest.approx([0.2, 0.4])
    del strength["seeds"]["0"]["clean"]["IB-FT"]  # LoRA FT only: no IB-FT contrasts
    assert list(contrasts(strength, 10)) == list(table)[:3]


def test_each_seed_is_paired_with_its_own_draw_of_the_bases():
    def row(*num_correct, seed=None):
        return {"num_correct": list(num_correct)} | ({} if seed is None else {"sampling_seed": seed})

    arms = {"clean": {"LoRA FT": row(6, 8)}, "contaminated": {"LoRA FT": row(5, 7)}}
    strength = {
        "seeds": {"0": arms, "1": arms},
        "base_draws": {
            "0": {"clean": row(2, 4, seed=0), "contaminated": row(5, 5, seed=0)},
            "1": {"clean": row(6, 8, seed=1), "contaminated": row(1, 3, seed=1)},
        },
    }
    barrier = contrasts(strength, 10)["barrier: clean gain - contaminated gain"]["pass@1^(1)"]
    # seed 0: (0.4, 0.4) - (0.0, 0.2); seed 1: (0.0, 0.0) - (0.4, 0.4): mean of 0.4, 0.2, -0.4, -0.4
    assert barrier[0] == pytest.approx(-0.05)
    assert not shares_base_draws(strength)
    # a run from before per-seed draws: one draw under "bases" (seed 0) paired with every seed, and flagged
    old = {"seeds": strength["seeds"], "bases": strength["base_draws"]["0"] | {}}
    old["bases"] = {name: {"num_correct": value["num_correct"]} for name, value in old["bases"].items()}
    assert contrasts(old, 10)["barrier: clean gain - contaminated gain"]["pass@1^(1)"][0] == pytest.approx(0.3)
    assert shares_base_draws(old) and list(base_draws(old)) == ["0", "1"]


def test_merge_runs_combines_seeds_and_strengths_and_refuses_other_settings():
    def row(*num_correct):
        return {"num_correct": list(num_correct)}

    def run(epochs, seed, arms, clean, contaminated, sampling_dtype="torch.bfloat16", budget=(), **arguments):
        strength = {
            "bases": {"clean": row(2, 4), "contaminated": row(5, 5)},
            "min_k_shift": {"shift": 0.1},
            "seeds": {
                seed: {"clean": {arm: clean for arm in arms}, "contaminated": {arm: contaminated for arm in arms}}
            },
        }
        return {
            "budget": {"num_samples": 10} | dict(budget),
            "strengths": {epochs: strength},
            "precision": {"bf16_training": True, "sampling_dtype": sampling_dtype},
            "arguments": {
                "task_seed": 0,
                "seeds": [int(seed)],
                "strengths": [float(epochs)],
                "arms": arms,
                "output_dir": f"run-{epochs}-{seed}",
                "dtype": "rule",
            }
            | arguments,
        }

    both = ["LoRA FT", "IB-FT"]
    # "rule" resolved to bf16 is the protocol of an explicit "bfloat16": the 2-epoch run asked for it by name; it is
    # also a run from after the budget got its batch size field (16, as the earlier runs without the field had)
    merged = merge_runs(
        [
            run("6", "0", both, row(6, 8), row(5, 7)),
            run("6", "1", both, row(4, 4), row(5, 5)),
            run(
                "2",
                "0",
                ["LoRA FT"],
                row(9, 9),
                row(6, 6),
                dtype="bfloat16",
                small=False,
                budget={"fine_tune_batch_size": 16},
            ),
        ]
    )
    assert sorted(merged) == ["2", "6"] and sorted(merged["6"]["seeds"]) == ["0", "1"]
    barrier = {
        epochs: merged[epochs]["contrasts"]["barrier: clean gain - contaminated gain"]["pass@1^(1)"][0]
        for epochs in merged
    }
    # 6 epochs: seed 0 (0.4, 0.4) - (0.0, 0.2), seed 1 (0.2, 0.0) - (0.0, 0.0): mean of 0.4, 0.2, 0.2, 0.0
    assert barrier["6"] == pytest.approx(0.2)
    assert barrier["2"] == pytest.approx(((0.7 - 0.1) + (0.5 - 0.1)) / 2)  # (0.6 + 0.4) / 2 = 0.5
    assert "IB-FT - LoRA FT, clean base" in merged["6"]["contrasts"]
    assert "IB-FT - LoRA FT, clean base" not in merged["2"]["contrasts"]  # a LoRA FT-only run: the barrier alone
    for other in ({"task_seed": 1}, {"sampling_dtype": "torch.float32"}, {"budget": {"fine_tune_batch_size": 8}}):
        with pytest.raises(ValueError, match="differ in budget, precision or arguments other than seeds"):
            merge_runs([run("6", "0", both, row(6, 8), row(5, 7)), run("6", "1", both, row(4, 4), row(5, 5), **other)])
