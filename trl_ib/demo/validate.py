"""How the demo's IB-FT settings were chosen: on the validation problems, never on the held-out ones.

    python -m trl_ib.demo.validate          # after `ib-ft demo` has made (and cached) its contaminated base

LoRA FT once and IB-FT with each setting of `GRID` (seed 0, the contaminated base of `ib-ft demo`, the same
budget), scored on the validation problems, whose operation pairs are disjoint from the held-out ones. Prints the
first logged step's losses (the scale of the KL under each treatment of massive activations) and Pass@k^(m).
The rule: the demo's IB-FT arm takes the setting with the highest validation Pass@1; on a tie, the one whose
first-step penalty is closest to the task loss.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoTokenizer
from trl import TrlParser

from trl_ib.builtin import SMOLLM2_NAME

from .run import BUDGETS, DemoArguments, bases, demo_task, fine_tune, sample_and_score
from .study import HEADLINE
from .tasks import sft_rows

PAPER = dict(ib_alpha=0.2, ib_beta=0.01, ib_layers=0.625)  # the paper's alpha, beta and depth
GRID = {
    "paper, ib_dim 64, ib_input_norm none (the paper's code)": PAPER | dict(ib_dim=64, ib_input_norm="none"),
    "paper, ib_dim 64, ib_input_norm rms": PAPER | dict(ib_dim=64, ib_input_norm="rms"),
    "paper, ib_dim 256 (the paper's), ib_input_norm rms": PAPER | dict(ib_dim=256, ib_input_norm="rms"),
}
LOSSES = ("loss", "ce", "ib_kl", "ib_ce", "ib_penalty")


@dataclass
class ValidationArguments:
    output_dir: str = field(default="ib-ft-validation", metadata={"help": "Folder for adapters and results."})
    seed: int = field(default=0, metadata={"help": "Seed of fine-tuning and sampling."})
    settings: list[int] | None = field(
        default=None,
        metadata={
            "help": "Run only these rows (0 = LoRA FT, then GRID's settings in order), e.g. to run two "
            "processes side by side; default: all."
        },
    )


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((ValidationArguments,)).parse_args_and_config(argv)
    budget = BUDGETS["default"]
    demo = DemoArguments()  # the demo's contamination strength and precision
    bf16, dtype = demo.precision()
    task = demo_task(0, budget)
    base_dir = bases(SMOLLM2_NAME, task, demo.strengths[0], bf16)["contaminated"]
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    d_code = sft_rows(task.train)
    rows = {}
    for index, (name, options) in enumerate([("LoRA FT", None), *GRID.items()]):
        if args.settings is not None and index not in args.settings:
            continue
        arm = "lora" if options is None else "ib-lora"
        output_dir = Path(args.output_dir) / f"{index}-{arm}"
        model, first_step = fine_tune(arm, base_dir, tokenizer, d_code, output_dir, args.seed, budget, options, bf16)
        scores = sample_and_score(model.to(dtype), tokenizer, task.validation, budget, args.seed)
        rows[name] = {
            "options": options,
            "first_step": first_step,
            "pass": scores.table,
            "num_correct": scores.num_correct,
        }
        (Path(args.output_dir) / "validation.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nvalidation problems ({len(task.validation)}, pairs {task.validation_pairs}), seed {args.seed}:\n")
    print(
        "| IB-FT setting | "
        + " | ".join(f"step 1 {name}" for name in LOSSES)
        + " | Pass@1 | Pass@5^(5) | Pass@10^(10) |"
    )
    print("|" + "---|" * (1 + len(LOSSES) + len(HEADLINE)))
    for name, row in rows.items():
        losses = [f"{row['first_step'].get(key, float('nan')):.4g}" for key in LOSSES]
        passes = [f"{row['pass'][f'pass@{k}^({m})']:.3f}" for k, m in HEADLINE]
        print(f"| {name} | " + " | ".join(losses + passes) + " |")


if __name__ == "__main__":
    main()
