"""IB-FT's strength chosen on validation: a hyperparameter search on the demo's task, LoRA FT tuned alike as control.

    python -m trl_ib.demo.tuning                  # builds (and caches) the demo's contaminated base if needed
    python -m trl_ib.demo.tuning --quick true --n_trials 2 --seeds 0     # a plumbing check; numbers mean nothing

From the demo's contaminated base and with its fine-tuning budget (LoRA r 16 on all linear layers, 2 epochs of
D_code, batch 16, cosine schedule), two searches of `--n_trials` trials each, both by
`IBSFTTrainer.hyperparameter_search` (Optuna, TPE seeded with 0), both maximizing Pass@1 on the validation problems
(10 samples each, `PassAtKMCallback` after each trial's training):
- IB-FT: ib_alpha in [0.01, 1] and ib_beta in [0.001, 0.1], log scale; the demo's learning rate, ib_dim, depth and
  encoder input norm;
- LoRA FT: the learning rate in [1e-4, 1e-2], log scale, trained by the same trainer at ib_alpha 0 (the encoders
  get no weight, so the LoRA weights see the task loss alone).
The two chosen settings are then scored once on the held-out problems, each `--seeds` seed trained and sampled as
`ib-ft demo` does (LoRA FT by SFTTrainer + LoraConfig), with the demo's paired bootstrap of IB-FT - LoRA FT over
problems and seeds. Writes `<output_dir>/tuning.json` (trials, choices, held-out rows, contrast, wall times) and
`<output_dir>/trials-<arm>.png`, and prints the tables.
"""

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import TrlParser

from hub_cards.plots import plot_trials
from peft_ib import IBLoraConfig
from trl_ib import IBSFTConfig, IBSFTTrainer, PassAtKMCallback
from trl_ib.builtin import SMOLLM2_NAME
from trl_ib.models import merge_adapter
from trl_ib.trainer.search_backends import metric_objective, trial_rows

from .contaminate import cached_base
from .run import (
    FT_ARGS,
    LORA_ARGS,
    QUICK_STRENGTH,
    SCORING_BACKEND,
    DemoArguments,
    demo_task,
    fine_tune,
    sampled,
    texts,
)
from .study import HEADLINE, paired_bootstrap, per_problem
from .tasks import sft_rows

SPACES = {
    "IB-FT": {
        "ib_alpha": {"low": 0.01, "high": 1.0, "log": True},
        "ib_beta": {"low": 0.001, "high": 0.1, "log": True},
    },
    "LoRA FT": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
}
OBJECTIVE = "eval_pass@1^(1)"


@dataclass
class TuningArguments:
    output_dir: str = field(default="ib-ft-tuning", metadata={"help": "Folder for trials, adapters and results."})
    n_trials: int = field(default=5, metadata={"help": "Trials of each search (IB-FT's and LoRA FT's)."})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds of the held-out scoring."})
    quick: bool = field(default=False, metadata={"help": "The demo's --quick budget: a plumbing check."})


def search(arm: str, base_dir: Path, tokenizer, task, budget, demo: DemoArguments, output_dir: Path, n_trials: int):
    """The BestRun of `arm`'s search on the validation problems (its `run_summary`: the Optuna study)."""
    bf16, _ = demo.precision()
    ib_options = demo.ib_options() | ({"ib_alpha": 0.0} if arm == "LoRA FT" else {})
    trainer = IBSFTTrainer(
        AutoModelForCausalLM.from_pretrained(base_dir),
        args=IBSFTConfig(
            output_dir=str(output_dir),
            seed=0,
            logging_steps=1,
            num_train_epochs=budget.fine_tune_epochs,
            per_device_train_batch_size=budget.fine_tune_batch_size,
            bf16=bf16,
            **FT_ARGS,
        ),
        train_dataset=Dataset.from_list(sft_rows(task.train)),
        eval_dataset=Dataset.from_list(sft_rows(task.validation)),
        processing_class=tokenizer,
        peft_config=IBLoraConfig(**LORA_ARGS, **ib_options),
    )
    trainer.add_callback(
        PassAtKMCallback(
            trainer,
            task.validation,
            num_samples=budget.num_samples,
            every_n_steps=None,
            prompt_mode="completion",  # as the demo samples its scored problems
            max_new_tokens=budget.max_new_tokens,
            batch_size=80,
            backend=SCORING_BACKEND,
        )
    )
    return trainer.hyperparameter_search(
        hp_space=SPACES[arm],
        compute_objective=metric_objective(OBJECTIVE),
        direction="maximize",
        n_trials=n_trials,
        storage=f"sqlite:///{(output_dir / 'study.db').resolve()}",
    )


def held_out(arm: str, choice: dict, base_dir: Path, tokenizer, task, budget, demo, output_dir: Path, seed: int):
    """`arm` fine-tuned at `choice` with `seed` as `ib-ft demo` does, scored on the held-out problems."""
    bf16, dtype = demo.precision()
    if arm == "LoRA FT":
        model, _ = fine_tune("lora", base_dir, tokenizer, sft_rows(task.train), output_dir, seed, budget, bf16=bf16,
                             learning_rate=choice["learning_rate"])  # fmt: skip
    else:
        options = demo.ib_options() | choice
        model, _ = fine_tune("ib-lora", base_dir, tokenizer, sft_rows(task.train), output_dir, seed, budget, options,
                             bf16)  # fmt: skip
    return sampled(merge_adapter(model).to(dtype), tokenizer, task.held_out, budget, seed)


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((TuningArguments,)).parse_args_and_config(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    demo = DemoArguments(quick=args.quick)
    budget, strength = demo.budget(), QUICK_STRENGTH if args.quick else demo.strengths[0]
    task = demo_task(demo.task_seed, budget)
    seconds = {}
    start = time.perf_counter()
    base_dir = cached_base(SMOLLM2_NAME, texts(task.train), strength, demo.precision()[0])
    seconds["contaminated base"] = round(time.perf_counter() - start, 1)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    results = {"arguments": vars(args), "objective": OBJECTIVE, "spaces": SPACES, "searches": {}, "held_out": {}}
    for arm in SPACES:
        start = time.perf_counter()
        folder = output_dir / ("lora" if arm == "LoRA FT" else "ib-lora")
        best = search(arm, base_dir, tokenizer, task, budget, demo, folder, args.n_trials)
        seconds[f"search, {arm}"] = round(time.perf_counter() - start, 1)
        rows = trial_rows(best.run_summary)
        plot_trials(rows, list(SPACES[arm]), OBJECTIVE, output_dir / f"trials-{folder.name}.png")
        results["searches"][arm] = {"trials": rows, "best_trial": best.run_id, "choice": best.hyperparameters}
    for seed in args.seeds:
        for arm, found in results["searches"].items():
            start = time.perf_counter()
            folder = output_dir / f"seed-{seed}" / ("lora" if arm == "LoRA FT" else "ib-lora")
            row = held_out(arm, found["choice"], base_dir, tokenizer, task, budget, demo, folder, seed)
            results["held_out"].setdefault(str(seed), {})[arm] = row
            seconds[f"held-out, {arm}"] = round(seconds.get(f"held-out, {arm}", 0) + time.perf_counter() - start, 1)
    results["contrast"] = contrast(results["held_out"], budget.num_samples)
    results["seconds"] = seconds
    (output_dir / "tuning.json").write_text(json.dumps(results, indent=1) + "\n")
    print(format_results(results))


def contrast(rows: dict[str, dict], num_samples: int) -> dict[str, list[float]]:
    """{"pass@k^(m)": [mean, low, high]}: IB-FT - LoRA FT on the held-out problems, paired over problems and seeds."""
    table = {}
    for k, m in HEADLINE:
        differences = np.stack(
            [per_problem(by_arm["IB-FT"], num_samples, k, m) - per_problem(by_arm["LoRA FT"], num_samples, k, m)
             for by_arm in rows.values()]
        )  # fmt: skip
        table[f"pass@{k}^({m})"] = list(paired_bootstrap(differences))
    return table


def format_results(results: dict) -> str:
    lines = []
    for arm, found in results["searches"].items():
        names = list(results["spaces"][arm])
        lines += [f"\n{arm}: {len(found['trials'])} trials, validation Pass@1", "",
                  "| trial | " + " | ".join(names) + " | validation Pass@1 |", "|---" * (len(names) + 2) + "|"]  # fmt: skip
        for row in found["trials"]:
            lines.append(
                f"| {row['trial']} | " + " | ".join(f"{row[n]:.4g}" for n in names) + f" | {row['objective']:.3f} |"
            )
        lines.append(f"\nchosen: trial {found['best_trial']}, {found['choice']}")
    keys = [f"pass@{k}^({m})" for k, m in HEADLINE]
    lines += [
        "",
        "held-out, mean over seeds:",
        "",
        "| arm | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for arm in results["searches"]:
        means = [np.mean([seed[arm]["pass"][key] for seed in results["held_out"].values()]) for key in keys]
        lines.append(f"| {arm} (tuned) | " + " | ".join(f"{v:.3f}" for v in means) + " |")
    lines.append("| IB-FT - LoRA FT, 95% bootstrap | " + " | ".join(
        "{:+.3f} [{:+.3f}, {:+.3f}]".format(*results["contrast"][key]) for key in keys) + " |")  # fmt: skip
    lines += ["", "wall seconds: " + ", ".join(f"{name} {value}" for name, value in results["seconds"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
