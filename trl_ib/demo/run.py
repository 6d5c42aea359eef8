"""`ib-ft demo`: the memorization barrier and IB-FT vs LoRA FT on SmolLM2-135M-Instruct, on CPU, nothing downloaded.

    ib-ft demo                          # one seed; the first run also contaminates the base (cached): 17.5 min
    ib-ft demo --seeds 0 1 2 3 4        # the seed study of RESULTS.md, with paired bootstrap intervals
    ib-ft demo --split validation       # score the validation problems instead (how the IB settings were chosen)
    ib-ft demo --quick                  # a plumbing check (under a minute once cached); numbers mean nothing

Stages (each with a progress bar; wall times in results.json):
1. The task family of `tasks.py` (seed `task_seed`): D_code and fresh reference problems (chains of 2-3 operations),
   and validation and held-out problems (chains of 4-5) through operation pairs never seen in D_code.
2. Contamination (`contaminate.py`): the base model memorizes D_code by full fine-tuning, cached once per machine.
   Min-K% of D_code against the fresh reference problems shows the barrier.
3. LoRA FT (SFTTrainer + LoraConfig) and IB-FT (IBSFTTrainer + IBLoraConfig) on D_code from the contaminated base,
   identical budgets, hyper-parameters and seeds; adapters saved with model cards.
4. Pass@k^(m) of base, LoRA FT and IB-FT on the scored problems (sampled, run in the sandbox), Min-K% of D_code and
   the representation gap between the most and least memorized 10% of D_code.
5. Writes to --output_dir: seed-S/{lora,ib-lora}/ (adapters with cards), min_k.png, pass_at_10_m.png, results.json,
   and prints the tables.
"""

import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer, TrlParser

from hub_cards.plots import plot_against_m
from peft_ib import IBLoraConfig
from trl_ib import IBSFTConfig, IBSFTTrainer
from trl_ib.builtin import SMOLLM2_NAME
from trl_ib.code_eval import score
from trl_ib.evaluation import EvalArguments, build_programs
from trl_ib.generation import generate_samples
from trl_ib.memorization import plot_distributions, representation_gap, score_min_k, summarize

from .contaminate import cached_contaminated_base
from .study import format_rows, format_study, format_sweep
from .tasks import Task, make_task, sft_rows


@dataclass(frozen=True)
class Budget:
    """Problem counts, epochs and sampling of one demo size."""

    num_train: int
    num_reference: int
    num_validation: int
    num_held_out: int
    contamination_epochs: float
    fine_tune_epochs: float
    max_new_tokens: int  # held-out canonical solutions are 28-39 tokens; EOS or a stop sequence usually ends them first
    num_samples: int = 10  # per scored problem; Pass@k^(m) needs n >= k = 10


BUDGETS = {"default": Budget(128, 128, 60, 60, 6, 2, 64), "quick": Budget(16, 16, 4, 4, 1, 1, 24)}
# Identical for both arms: the paper's recipe (cosine, warmup 0.1, all linear layers, dropout 0.05), rank 16, at a
# learning rate high enough for 16 steps to move the contaminated base.
FT_ARGS = dict(
    per_device_train_batch_size=16, learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.1,
    save_strategy="no", report_to="none", bf16=False, use_cpu=not torch.cuda.is_available(), disable_tqdm=False,
)  # fmt: skip
LORA_ARGS = dict(r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
K_VALUES = (1, 5, 10)
GAP_FRACTION = 0.1
SPLITS = ("held_out", "validation")


@dataclass
class DemoArguments:
    output_dir: str = field(default="ib-ft-demo", metadata={"help": "Folder for the adapters, plots and results."})
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Seeds of fine-tuning and sampling; several make the seed study with bootstrap intervals."},
    )
    task_seed: int = field(default=0, metadata={"help": "Seed of the task family (and so of the contaminated base)."})
    split: str = field(
        default="held_out",
        metadata={"help": "Problems scored: the held-out ones, or the validation ones used to choose the IB settings.",
                  "choices": SPLITS},
    )  # fmt: skip
    model: str = field(
        default=SMOLLM2_NAME, metadata={"help": "Base model: a built-in name, a Hub id or a folder."}
    )
    # The IB-FT settings fixed on the validation problems (validate.py; RESULTS.md): the paper's alpha, beta, depth and
    # ib_dim, and the RMS-normalized encoder input.
    ib_alpha: float = field(default=IBLoraConfig.ib_alpha, metadata={"help": "IBLoraConfig.ib_alpha of the IB-FT arm."})
    ib_beta: float = field(default=IBLoraConfig.ib_beta, metadata={"help": "IBLoraConfig.ib_beta of the IB-FT arm."})
    ib_layers: float = field(default=0.625, metadata={"help": "IBLoraConfig.ib_layers (relative depth) of IB-FT."})
    ib_dim: int = field(default=256, metadata={"help": "IBLoraConfig.ib_dim of the IB-FT arm."})
    ib_input_norm: str = field(default="rms", metadata={"help": "IBLoraConfig.ib_input_norm of the IB-FT arm."})
    quick: bool = field(
        default=False, metadata={"help": "A plumbing check (under a minute once cached); its numbers mean nothing."}
    )

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: must be one of {', '.join(SPLITS)}.")
        if not self.seeds:
            raise ValueError("seeds=[]: give at least one seed.")

    def ib_options(self) -> dict:
        """The IBLoraConfig fields of the IB-FT arm."""
        return {name: getattr(self, name) for name in ("ib_alpha", "ib_beta", "ib_layers", "ib_dim", "ib_input_norm")}


@contextmanager
def stage(seconds: dict[str, float], name: str):
    """Adds the wall seconds of the `with` body to seconds[name]."""
    start = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 1)


def fine_tune(arm: str, base_dir: Path, tokenizer, rows: list[dict], output_dir: Path, seed: int, epochs: float,
              ib_options: dict | None = None):  # fmt: skip
    """
    Fine-tune the base in `base_dir` on `rows` as `arm` ("lora", or "ib-lora" with the IBLoraConfig fields
    `ib_options`); save adapter + card. Returns the PeftModel in eval mode and the first logged step (losses).
    """
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    common = dict(output_dir=str(output_dir), seed=seed, logging_steps=1, num_train_epochs=epochs, **FT_ARGS)
    data = Dataset.from_list(rows)
    if arm == "lora":
        trainer = SFTTrainer(model, args=SFTConfig(**common), peft_config=LoraConfig(**LORA_ARGS), train_dataset=data,
                             processing_class=tokenizer)  # fmt: skip
    else:
        trainer = IBSFTTrainer(model, args=IBSFTConfig(**common), peft_config=IBLoraConfig(**LORA_ARGS, **ib_options),
                               train_dataset=data,
                               processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.create_model_card(model_name=f"ib-ft-demo-{arm}", dataset_name="ib-ft demo D_code")
    first_step = next((log for log in trainer.state.log_history if "loss" in log), {})
    return trainer.model.eval(), first_step


def sample_and_score(model, tokenizer, problems: list[dict], budget: Budget, seed: int):
    """`budget.num_samples` sampled completions per problem (the evaluator's temperature / top_p), run: `Scores`."""
    set_seed(seed)
    prompts = [p["prompt"] for p in problems]
    completions = generate_samples(
        model, tokenizer, prompts, budget.num_samples, EvalArguments.temperature, EvalArguments.top_p,
        budget.max_new_tokens, batch_size=80, progress=True,
    )  # fmt: skip
    programs = build_programs(prompts, completions, "python")
    m = range(1, max(K_VALUES) + 1)
    return score(programs, [p["test"] for p in problems], [p["entry_point"] for p in problems], K_VALUES, m)


def evaluate(model, tokenizer, problems, d_code, min_k, base_min_k, budget, seed) -> dict:
    """
    Pass@k^(m) on `problems`, the summary of `min_k` (the model's Min-K% of `d_code`) and the representation gap
    between the groups of `d_code` the base's scores `base_min_k` pick.
    """
    scores = sample_and_score(model, tokenizer, problems, budget, seed)
    return {
        "pass": scores.table,
        "num_correct": scores.num_correct,
        "min_k_d_code": summarize(min_k),
        "representation_gap": representation_gap(model, tokenizer, d_code, base_min_k, GAP_FRACTION),
    }


def contaminated_task(model: str, task_seed: int, budget: Budget) -> tuple[Task, Path]:
    """The task family of `task_seed` at `budget`'s size and the folder of `model` contaminated with its D_code."""
    task = make_task(task_seed, budget.num_train, budget.num_reference, budget.num_validation, budget.num_held_out)
    texts = [p["prompt"] + p["canonical_solution"] for p in task.train]
    return task, cached_contaminated_base(model, texts, budget.contamination_epochs)


def base_scores(base_dir: Path, tokenizer, d_code, reference, problems, split: str, budget: Budget):
    """
    ({"D_code, base": Min-K%, "reference, base": Min-K%}, the base's `evaluate` row on `problems`), sampled with
    seed 0: seed-independent, so cached beside the contaminated base, keyed by the problems and the sampling budget.
    """
    key = json.dumps([[p["prompt"] for p in problems], budget.num_samples, budget.max_new_tokens])
    cached = base_dir / f"base-scores-{split}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if cached.exists():
        return tuple(json.loads(cached.read_text()))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    min_k = {"D_code, base": score_min_k(base, tokenizer, d_code), "reference, base": score_min_k(base, tokenizer, reference)}
    row = evaluate(base, tokenizer, problems, d_code, min_k["D_code, base"], min_k["D_code, base"], budget, 0)
    scratch = cached.with_name(f"{cached.name}.tmp-{os.getpid()}")
    scratch.write_text(json.dumps([min_k, row]))
    scratch.replace(cached)
    return min_k, row


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((DemoArguments,)).parse_args_and_config(argv)
    if not torch.cuda.is_available():
        torch.set_num_threads(min(torch.get_num_threads(), 2))  # the 2-core budget; OMP_NUM_THREADS=1 lowers it
    budget = BUDGETS["quick" if args.quick else "default"]
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    with stage(seconds, "contamination (cached)"):
        task, base_dir = contaminated_task(args.model, args.task_seed, budget)
    d_code, reference = sft_rows(task.train), sft_rows(task.reference)
    problems = task.held_out if args.split == "held_out" else task.validation
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    with stage(seconds, "scoring the base (cached)"):
        min_k, base_row = base_scores(base_dir, tokenizer, d_code, reference, problems, args.split, budget)
    base_min_k = min_k["D_code, base"]

    seeds, first_steps = {}, {}
    for seed in args.seeds:
        seeds[seed] = {}
        for name, arm in (("LoRA FT", "lora"), ("IB-FT", "ib-lora")):
            with stage(seconds, f"fine-tuning {name}"):
                model, first_steps[f"{name}, seed {seed}"] = fine_tune(
                    arm, base_dir, tokenizer, d_code, output_dir / f"seed-{seed}" / arm, seed, budget.fine_tune_epochs,
                    args.ib_options(),
                )  # fmt: skip
            with stage(seconds, f"scoring {name}"):
                min_k[f"D_code, {name}, seed {seed}"] = score_min_k(model, tokenizer, d_code)
                seeds[seed][name] = evaluate(model, tokenizer, problems, d_code,
                                       min_k[f"D_code, {name}, seed {seed}"], base_min_k, budget, seed)  # fmt: skip

    plot_distributions({label: values for label, values in min_k.items() if "seed" not in label or
                        label.endswith(f"seed {args.seeds[0]}")}, output_dir / "min_k.png")  # fmt: skip
    last = {"base": base_row} | {f"{arm}, seed {args.seeds[0]}": seeds[args.seeds[0]][arm] for arm in seeds[args.seeds[0]]}
    curves = {name: [(m, row["pass"][f"pass@10^({m})"]) for m in range(1, 11)] for name, row in last.items()}
    plot_against_m(curves, output_dir / "pass_at_10_m.png", f"{args.split} problems: Pass@10^(m)")
    summary = {
        "arguments": asdict(args),
        "budget": asdict(budget),
        "scored_pairs": task.held_out_pairs if args.split == "held_out" else task.validation_pairs,
        "min_k_reference_base": summarize(min_k["reference, base"]),
        "first_logged_step": first_steps,
        "base": base_row,
        "seeds": {str(seed): rows for seed, rows in seeds.items()},
        "stage_seconds": seconds,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nMin-K% (k = 20%) median under the contaminated base: D_code {base_row['min_k_d_code']['median']:.3f}, "
          f"fresh reference {summary['min_k_reference_base']['median']:.3f} nats (lower = more memorized)\n")  # fmt: skip
    print(f"{args.split} problems ({len(problems)}), {budget.num_samples} samples each:\n")
    if len(args.seeds) > 1:
        print(format_study(base_row, seeds, budget.num_samples))
    else:
        print(format_rows(last) + "\n\nPass@10^(m):\n\n" + format_sweep(last))
    print("\nwall seconds per stage: " + ", ".join(f"{name} {value:.0f}" for name, value in seconds.items()))
    print(f"wrote {output_dir}/: seed-*/lora, seed-*/ib-lora, min_k.png, pass_at_10_m.png, results.json")
