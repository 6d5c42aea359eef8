"""The demo's statistics and tables: the six rows per seed, the barrier and IB-FT minus LoRA FT with bootstrap CIs.

    from trl_ib.demo.study import paired_bootstrap
    mean, low, high = paired_bootstrap(np.array([[0.0, 1.0]]))   # (0.5, 0.0, 1.0)

Per contamination strength, a run holds two bases (`clean`: the same full fine-tuning on the fresh reference
problems; `contaminated`: on D_code), each scored as it is and after LoRA FT / IB-FT on D_code, every row sampled
with the seed of its fine-tuning (`base_draws`: one draw of each base per seed, so the intervals carry the bases'
sampling noise too). Every contrast is a per-problem difference of Pass@k^(m) on the same scored problems, averaged
over seeds, with a bootstrap interval over problems and seeds:

- gain of an arm on a base: arm - base;
- the barrier: LoRA FT's gain on the clean base minus its gain on the contaminated base (> 0: memorizing D_code
  made fine-tuning on it worth less);
- IB-FT minus LoRA FT on each base, and the barrier left under IB-FT: LoRA FT's clean gain minus IB-FT's
  contaminated gain (IB-FT closes the barrier where this is 0 while the barrier is not).

Runs made separately (other seeds, other strengths) are combined with

    python -m trl_ib.demo.study run-a/results.json run-b/results.json [--plot barrier.png]
"""

import argparse
import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from trl_ib.code_eval.estimator import pass_at_k_m

HEADLINE = ((1, 1), (5, 5), (10, 10))  # (k, m) of Pass@1, Pass@5^(5), Pass@10^(10)
ARMS = ("LoRA FT", "IB-FT")
BASES = ("clean", "contaminated")


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


def per_problem(row: dict, num_samples: int, k: int, m: int) -> np.ndarray:
    """(num_problems,) Pass@k^(m) of each problem of a scored row ({"num_correct": [...], ...})."""
    return pass_at_k_m(num_samples, row["num_correct"], k, m)


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


def base_draws(strength: dict) -> dict[str, dict[str, dict]]:
    """
    {seed: {base: scored row}} of one strength: each seed's own draw of the bases, or, in runs from before the bases
    were sampled per seed, the one draw (sampled with seed 0, under "bases") that all their seeds shared.
    """
    return strength.get("base_draws") or {seed: strength["bases"] for seed in strength["seeds"]}


def shares_base_draws(strength: dict) -> bool:
    """Whether some seed's contrasts use a base draw sampled with another seed (runs from before per-seed draws)."""
    return any(
        row.get("sampling_seed", 0) != int(seed)
        for seed, rows in base_draws(strength).items()
        for row in rows.values()
    )


def labelled_rows(strength: dict) -> dict[str, dict]:
    """Label -> row of one strength's results: every seed's bases and arms, and each row's mean over seeds."""
    per_seed = {seed: {f"{base} base": rows[base] for base in BASES} for seed, rows in base_draws(strength).items()}
    for seed, by_base in strength["seeds"].items():
        per_seed[seed] |= {f"{base} + {arm}": arms[arm] for base, arms in by_base.items() for arm in arms}
    rows = {f"{label}, seed {seed}": row for seed, labelled in per_seed.items() for label, row in labelled.items()}
    if len(per_seed) > 1:
        for label, first in next(iter(per_seed.values())).items():
            rows[f"{label}, mean"] = {
                "pass": {
                    key: float(np.mean([labelled[label]["pass"][key] for labelled in per_seed.values()]))
                    for key in first["pass"]
                }
            }
    return rows


def contrasts(strength: dict, num_samples: int) -> dict[str, dict[str, list[float]]]:
    """
    {contrast: {"pass@k^(m)": [mean, low, high]}} of one strength's results (see the module docstring); the IB-FT
    contrasts only where both bases have an IB-FT row.
    """
    seeds, draws = strength["seeds"], base_draws(strength)
    has_ib = all("IB-FT" in s[base] for s in seeds.values() for base in BASES)
    result = {}
    for k, m in HEADLINE:

        def gain(arm, name):  # (S, P): each seed's arm minus the same seed's draw of its base
            return np.stack(
                [
                    per_problem(by_base[name][arm], num_samples, k, m)
                    - per_problem(draws[seed][name], num_samples, k, m)
                    for seed, by_base in seeds.items()
                ]
            )

        table = {
            "LoRA FT gain, clean base": gain("LoRA FT", "clean"),
            "LoRA FT gain, contaminated base": gain("LoRA FT", "contaminated"),
            "barrier: clean gain - contaminated gain": gain("LoRA FT", "clean") - gain("LoRA FT", "contaminated"),
        }
        if has_ib:
            table |= {
                "IB-FT - LoRA FT, clean base": gain("IB-FT", "clean") - gain("LoRA FT", "clean"),
                "IB-FT - LoRA FT, contaminated base": gain("IB-FT", "contaminated") - gain("LoRA FT", "contaminated"),
                "barrier left under IB-FT: LoRA FT clean gain - IB-FT contaminated gain": gain("LoRA FT", "clean")
                - gain("IB-FT", "contaminated"),
            }
        for name, differences in table.items():
            result.setdefault(name, {})[f"pass@{k}^({m})"] = list(paired_bootstrap(differences))
    return result


def format_contrasts(table: dict[str, dict[str, list[float]]]) -> str:
    """Markdown table of `contrasts`: mean [95% CI] per headline metric."""
    lines = ["| contrast (paired, same problems) | Pass@1 | Pass@5^(5) | Pass@10^(10) |", "|---|---|---|---|"]
    for name, values in table.items():
        cells = [values[f"pass@{k}^({m})"] for k, m in HEADLINE]
        lines.append(
            f"| {name} | " + " | ".join(f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" for mean, low, high in cells) + " |"
        )
    return "\n".join(lines)


def format_strength(epochs: str, strength: dict, num_samples: int) -> str:
    """Everything printed for one contamination strength: Min-K%, the rows, Pass@10^(m), the contrasts."""
    rows = labelled_rows(strength)
    shift = strength["min_k_shift"]
    num_problems = len(next(iter(base_draws(strength).values()))["clean"]["num_correct"])
    shared = " (each base sampled once, with seed 0, for every seed: the intervals miss the bases' sampling noise)"
    return (
        f"## contamination {epochs} epochs: Min-K% median, contaminated base: D_code {shift['d_code']:.3f}, fresh "
        f"reference {shift['reference']:.3f} nats (shift {shift['shift']:+.3f}; lower = more memorized)\n\n"
        + format_rows(rows)
        + "\n\nPass@10^(m):\n\n"
        + format_sweep(rows)
        + f"\n\nContrasts over {len(strength['seeds'])} seed(s) x {num_problems} problems, 95% bootstrap intervals"
        + (shared if shares_base_draws(strength) else "")
        + ":\n\n"
        + format_contrasts(strength["contrasts"])
    )


def plot_barrier(strengths: dict[str, dict], path: str | Path) -> None:
    """Save a PNG of the barrier (Pass@1, with its 95% interval) against the Min-K% shift of D_code, one point per
    contamination strength, labelled with its epochs."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for epochs, strength in strengths.items():
        mean, low, high = strength["contrasts"]["barrier: clean gain - contaminated gain"]["pass@1^(1)"]
        x = strength["min_k_shift"]["shift"]
        axes.errorbar([x], [mean], yerr=[[mean - low], [high - mean]], fmt="o", capsize=4, color="C0")
        axes.annotate(f"{epochs} ep", (x, mean), textcoords="offset points", xytext=(6, 4))
    axes.axhline(0, color="grey", linewidth=0.8)
    axes.set(
        xlabel="Min-K% shift of D_code (reference - D_code median, nats)",
        ylabel="barrier, Pass@1 (95% CI)",
        title="LoRA FT gain lost to memorizing D_code",
    )
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)


def merge_runs(runs: list[dict]) -> dict[str, dict]:
    """
    The strengths of several runs' results.json (same task, split, budget), their seeds merged, contrasts redone (the
    IB-FT contrasts of a strength only where every seed has IB-FT rows: a `--arms "LoRA FT"` run adds the barrier).
    """
    free = ("seeds", "strengths", "arms", "output_dir")
    # `--dtype` / `--bf16` as asked may differ ("rule" and "bfloat16" on a bf16 machine): what they resolved to may not;
    # the size flags are the budget's, compared as such (runs from before `--small` and the budget's batch size
    # existed ran the default size at batch 16)
    asked = ("dtype", "bf16", "quick", "small")
    settings = {
        json.dumps(
            [
                {"fine_tune_batch_size": 16} | run["budget"],
                run.get("precision"),
                run["arguments"] | {k: None for k in free + asked},
            ],
            sort_keys=True,
        )
        for run in runs
    }
    if len(settings) > 1:
        raise ValueError(
            f"the runs differ in budget, precision or arguments other than {', '.join(free)}: combine runs of one "
            "protocol only."
        )
    merged: dict[str, dict] = {}
    for run in runs:
        for epochs, strength in run["strengths"].items():
            target = merged.setdefault(epochs, {"min_k_shift": strength["min_k_shift"], "seeds": {}, "base_draws": {}})
            target["seeds"] |= strength["seeds"]
            target["base_draws"] |= base_draws(strength)
    for strength in merged.values():
        strength["contrasts"] = contrasts(strength, runs[0]["budget"]["num_samples"])
    return merged


def main(argv: list[str] | None = None) -> None:
    """Print `format_strength` for every strength of the demo runs whose results.json files are given."""
    parser = argparse.ArgumentParser(description="Combine `ib-ft demo` runs (other seeds, other strengths).")
    parser.add_argument("results", nargs="+", help="results.json files of `ib-ft demo` runs")
    parser.add_argument("--plot", help="write the barrier against the Min-K%% shift here (PNG)")
    args = parser.parse_args(argv)
    runs = [json.loads(Path(path).read_text()) for path in args.results]
    merged = merge_runs(runs)
    for epochs in sorted(merged, key=float):
        print(format_strength(epochs, merged[epochs], runs[0]["budget"]["num_samples"]) + "\n")
    if args.plot:
        plot_barrier(merged, args.plot)


if __name__ == "__main__":
    main()
