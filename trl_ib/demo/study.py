"""The seed study's statistics and tables: per-seed rows, their mean, and IB-FT minus LoRA FT with a bootstrap CI.

    from trl_ib.demo.study import paired_bootstrap
    mean, low, high = paired_bootstrap(np.array([[0.0, 1.0]]))   # (0.5, 0.0, 1.0)

`ib-ft demo --seeds 0 1 2` prints these tables; runs made separately (e.g. one process per seed, side by side) are
combined with

    python -m trl_ib.demo.study run-0/results.json run-1/results.json run-2/results.json
"""

import json
import sys
from pathlib import Path

import numpy as np

from trl_ib.code_eval.estimator import pass_at_k_m

HEADLINE = ((1, 1), (5, 5), (10, 10))  # (k, m) of Pass@1, Pass@5^(5), Pass@10^(10)
ARMS = ("LoRA FT", "IB-FT")


def paired_bootstrap(
    differences: np.ndarray, num_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """
    Mean of `differences` (num_seeds, num_problems) and its percentile bootstrap interval at `confidence`: each
    resample draws seeds and problems independently with replacement and averages the selected sub-matrix.
    E.g. [[0, 1]]: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4, so the 95% interval is (0, 1).
    """
    differences = np.asarray(differences, dtype=np.float64)
    if differences.ndim != 2 or 0 in differences.shape:
        raise ValueError(f"differences has shape {differences.shape}: need (num_seeds, num_problems), both >= 1.")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r}: must be in (0, 1).")
    rng = np.random.default_rng(seed)
    num_seeds, num_problems = differences.shape
    seeds = rng.integers(num_seeds, size=(num_resamples, num_seeds))  # (B, S)
    problems = rng.integers(num_problems, size=(num_resamples, num_problems))  # (B, P)
    # mean over the S x P sub-matrix = mean over s of (mean over p of differences[seeds[b, s], problems[b, p]])
    per_problem_mean = differences[:, problems].mean(axis=2)  # (S, B): each seed's mean over resampled problems
    means = np.take_along_axis(per_problem_mean.T, seeds, axis=1).mean(axis=1)  # (B,)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(differences.mean()), float(low), float(high)


def per_problem(num_correct: list[int], num_samples: int, k: int, m: int) -> np.ndarray:
    """(num_problems,) Pass@k^(m) of each problem."""
    return pass_at_k_m(num_samples, num_correct, k, m)


def format_rows(rows: dict[str, dict]) -> str:
    """
    Markdown table, one row per `rows` entry (label -> {"pass": table, "min_k_d_code": summary, "representation_gap":
    {l2, angle_degrees}}; the last three columns may be absent, e.g. in a mean row).
    """
    header = "| model | Pass@1 | Pass@5^(5) | Pass@10^(10) | Min-K% D_code (median) | gap L2 | gap angle (deg) |"
    lines = [header, "|" + "---|" * 7]
    for label, row in rows.items():
        cells = [f"{row['pass'][f'pass@{k}^({m})']:.3f}" for k, m in HEADLINE]
        if "min_k_d_code" in row:
            gap = row["representation_gap"]
            cells += [f"{row['min_k_d_code']['median']:.3f}", f"{gap['l2']:.2f}", f"{gap['angle_degrees']:.1f}"]
        else:
            cells += [""] * 3
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_sweep(rows: dict[str, dict]) -> str:
    """Markdown table of Pass@10^(m) for m = 1..10, one row per `rows` entry."""
    lines = ["| model | " + " | ".join(f"m={m}" for m in range(1, 11)) + " |", "|" + "---|" * 11]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(f"{row['pass'][f'pass@10^({m})']:.3f}" for m in range(1, 11)) + " |")
    return "\n".join(lines)


def format_study(base: dict, seeds: dict[int, dict[str, dict]], num_samples: int) -> str:
    """
    The study's tables: base and each seed's LoRA FT / IB-FT rows with their means, then IB-FT minus LoRA FT per
    seed and pooled, with a 95% bootstrap interval over problems and seeds (`paired_bootstrap`).
    """
    rows = {"base": base}
    for seed, arms in seeds.items():
        rows |= {f"{arm}, seed {seed}": arms[arm] for arm in ARMS}
    for arm in ARMS:
        keys = seeds[next(iter(seeds))][arm]["pass"]
        rows[f"{arm}, mean"] = {"pass": {key: np.mean([s[arm]["pass"][key] for s in seeds.values()]) for key in keys}}
    lines = ["| IB-FT minus LoRA FT | Pass@1 | Pass@5^(5) | Pass@10^(10) |", "|---|---|---|---|"]
    differences = {}  # (k, m) -> (num_seeds, num_problems)
    for k, m in HEADLINE:
        differences[k, m] = np.stack([
            per_problem(s["IB-FT"]["num_correct"], num_samples, k, m)
            - per_problem(s["LoRA FT"]["num_correct"], num_samples, k, m)
            for s in seeds.values()
        ])  # fmt: skip
    for index, seed in enumerate(seeds):
        cells = [f"{differences[key][index].mean():+.3f}" for key in HEADLINE]
        lines.append(f"| seed {seed} | " + " | ".join(cells) + " |")
    pooled = [paired_bootstrap(differences[key]) for key in HEADLINE]
    lines.append(
        f"| mean of {len(seeds)} seeds [95% CI] | "
        + " | ".join(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" for mean, low, high in pooled) + " |"
    )  # fmt: skip
    return (
        format_rows(rows) + "\n\nPass@10^(m):\n\n" + format_sweep(rows)
        + "\n\nPaired difference on the same problems (bootstrap over problems and seeds):\n\n" + "\n".join(lines)
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Print `format_study` of the demo runs whose results.json files are given (same task, split and budget)."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        raise SystemExit("usage: python -m trl_ib.demo.study RESULTS_JSON [RESULTS_JSON ...]")
    runs = [json.loads(Path(path).read_text()) for path in paths]
    settings = {json.dumps([run["budget"], run["arguments"] | {"seeds": None, "output_dir": None}]) for run in runs}
    if len(settings) > 1:
        raise ValueError(f"{paths}: the runs differ in budget or arguments other than seeds and output_dir.")
    seeds = {int(seed): rows for run in runs for seed, rows in run["seeds"].items()}
    print(format_study(runs[0]["base"], seeds, runs[0]["budget"]["num_samples"]))


if __name__ == "__main__":
    main()
