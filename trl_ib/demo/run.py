"""`ib-ft demo`: the memorization barrier and IB-FT vs LoRA FT, end to end on CPU, nothing downloaded.

    ib-ft demo                      # about 10 minutes on 2 CPU cores
    ib-ft demo --quick --seed 1     # a smoke run in about 2 minutes; its numbers mean little

1. The synthetic task family of `tasks.py`: D_code (training problems), a fresh reference set and held-out problems
   whose pairs of operations never occur in D_code.
2. A tiny Llama pre-trained on D_code for many epochs (`pretrain.py`); the Min-K% diagnostic shows D_code memorized.
3. LoRA FT (SFTTrainer + LoraConfig) and IB-FT (IBSFTTrainer + IBLoraConfig) on D_code from that base, with
   identical budgets, hyper-parameters and seeds.
4. Pass@k^(m) of base, LoRA FT and IB-FT on the held-out problems (sampled, run in the sandbox), Min-K% of D_code
   before and after, and the representation gap between the most and least memorized 10% of D_code.
5. Writes to --output_dir: base/, lora/ and ib-lora/ (adapters with model cards), min_k.png, pass_at_10_m.png,
   results.json, and prints the comparison table.
"""

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, set_seed
from trl import SFTConfig, SFTTrainer, TrlParser

from peft_ib import IBLoraConfig
from trl_ib import IBSFTConfig, IBSFTTrainer
from trl_ib.code_eval import score
from trl_ib.evaluation import STOP_SEQUENCES, EvalArguments, build_programs, generate_samples
from trl_ib.memorization import plot_distributions, representation_gap, score_min_k, summarize
from hub_cards.plots import plot_against_m

from .pretrain import pretrain
from .tasks import make_task, to_prompt_completion


@dataclass(frozen=True)
class Budget:
    """Problem counts, pre-training steps and sampling of one demo size."""

    num_train: int
    num_reference: int
    num_held_out: int
    pretrain_steps: int
    num_samples: int = 10  # per held-out problem; Pass@k^(m) needs n >= k = 10


BUDGETS = {"default": Budget(200, 200, 60, 600), "quick": Budget(48, 48, 12, 150)}
# Identical for both arms; the paper's recipe (3 epochs, cosine, warmup 0.1, all linear layers, dropout 0.05),
# with the learning rate and rank of a 0.2M-parameter model instead of a 7B one.
FT_ARGS = dict(
    num_train_epochs=3, per_device_train_batch_size=16, learning_rate=1e-3, lr_scheduler_type="cosine",
    warmup_steps=0.1, save_strategy="no", report_to="none", bf16=False, use_cpu=not torch.cuda.is_available(),
)  # fmt: skip
LORA_ARGS = dict(r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
IB_ARGS = dict(ib_dim=16)  # ib_layers (62.5% depth), ib_alpha, ib_beta: IBLoraConfig's defaults, the paper's values
K_VALUES = (1, 5, 10)
MAX_NEW_TOKENS = 64  # canonical solutions are about 25 tokens
GAP_FRACTION = 0.1


@dataclass
class DemoArguments:
    output_dir: str = field(default="ib-ft-demo", metadata={"help": "Folder for the models, plots and results."})
    seed: int = field(default=0, metadata={"help": "Seed of the task family, pre-training, fine-tuning, sampling."})
    quick: bool = field(default=False, metadata={"help": "A smaller run (about 2 minutes) to check the pipeline."})


def fine_tune(arm: str, base_dir: Path, tokenizer, train_rows: list[dict], output_dir: Path, seed: int):
    """Fine-tune the saved base on `train_rows` as `arm` ("lora" or "ib-lora"); save adapter + card; the PeftModel."""
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    common = dict(output_dir=str(output_dir), seed=seed, logging_steps=1, **FT_ARGS)
    if arm == "lora":
        trainer = SFTTrainer(model, args=SFTConfig(**common), peft_config=LoraConfig(**LORA_ARGS),
                             train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer)  # fmt: skip
    else:
        trainer = IBSFTTrainer(model, args=IBSFTConfig(**common), peft_config=IBLoraConfig(**LORA_ARGS, **IB_ARGS),
                               train_dataset=Dataset.from_list(train_rows), processing_class=tokenizer)  # fmt: skip
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.create_model_card(model_name=f"ib-ft-demo-{arm}", dataset_name="ib-ft demo D_code")
    return trainer.model.eval()


def pass_at_k_m(model, tokenizer, problems: list[dict], num_samples: int, seed: int):
    """Sample `num_samples` completions per problem (the evaluator's temperature / top_p), run them: `Scores`."""
    set_seed(seed)
    prompts = [p["prompt"] for p in problems]
    completions = generate_samples(
        model, tokenizer, prompts, num_samples, EvalArguments.temperature, EvalArguments.top_p, MAX_NEW_TOKENS,
        STOP_SEQUENCES["python"], batch_size=num_samples * 8,
    )  # fmt: skip
    programs = build_programs(prompts, completions, "python")
    m = range(1, max(K_VALUES) + 1)
    return score(programs, [p["test"] for p in problems], [p["entry_point"] for p in problems], K_VALUES, m)


def format_table(results: dict[str, dict]) -> str:
    """The comparison tables in Markdown, one row per model: headline numbers, then Pass@10^(m) for m = 1..10."""
    header = "| model | Pass@1 | Pass@5^(5) | Pass@10^(10) | Min-K% D_code (median) | gap L2 | gap angle (deg) |"
    lines = [header, "|" + "---|" * 7]
    for name, row in results.items():
        passes = [row["pass"][key] for key in ("pass@1^(1)", "pass@5^(5)", "pass@10^(10)")]
        gap = row["representation_gap"]
        lines.append(
            f"| {name} | " + " | ".join(f"{value:.3f}" for value in passes)
            + f" | {row['min_k_d_code']['median']:.3f} | {gap['l2']:.3f} | {gap['angle_degrees']:.1f} |"
        )  # fmt: skip
    sweep = ["| model | " + " | ".join(f"m={m}" for m in range(1, 11)) + " |", "|" + "---|" * 11]
    for name, row in results.items():
        sweep.append(f"| {name} | " + " | ".join(f"{row['pass'][f'pass@10^({m})']:.3f}" for m in range(1, 11)) + " |")
    return "\n".join(lines) + "\n\nPass@10^(m) on the held-out problems:\n\n" + "\n".join(sweep)


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((DemoArguments,)).parse_args_and_config(argv)
    budget = BUDGETS["quick" if args.quick else "default"]
    output_dir = Path(args.output_dir)
    task = make_task(args.seed, budget.num_train, budget.num_reference, budget.num_held_out)
    d_code, reference = to_prompt_completion(task.train), to_prompt_completion(task.reference)

    base, tokenizer = pretrain([r["prompt"] + r["completion"] for r in d_code], output_dir / "base",
                               budget.pretrain_steps, seed=args.seed)  # fmt: skip
    models = {"base": base}
    for name, arm in (("LoRA FT", "lora"), ("IB-FT", "ib-lora")):
        models[name] = fine_tune(arm, output_dir / "base", tokenizer, d_code, output_dir / arm, args.seed)

    min_k = {name: score_min_k(model, tokenizer, d_code) for name, model in models.items()}
    reference_min_k = score_min_k(base, tokenizer, reference)
    results = {}
    for name, model in models.items():
        scores = pass_at_k_m(model, tokenizer, task.held_out, budget.num_samples, args.seed)
        results[name] = {
            "pass": scores.table,
            "num_correct": scores.num_correct,
            "min_k_d_code": summarize(min_k[name]),
            "representation_gap": representation_gap(model, tokenizer, d_code, min_k["base"], GAP_FRACTION),
        }
    plot_distributions(
        {f"D_code, {name}": values for name, values in min_k.items()} | {"reference, base": reference_min_k},
        output_dir / "min_k.png",
    )
    curves = {name: [(m, row["pass"][f"pass@10^({m})"]) for m in range(1, 11)] for name, row in results.items()}
    plot_against_m(curves, output_dir / "pass_at_10_m.png", "Held-out problems: Pass@10^(m)")
    summary = {
        "arguments": asdict(args),
        "budget": asdict(budget),
        "held_out_pairs": task.held_out_pairs,
        "min_k_reference_base": summarize(reference_min_k),
        "models": results,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nMin-K% (k = 20%) median, base model: D_code {results['base']['min_k_d_code']['median']:.3f}, "
          f"fresh reference {summary['min_k_reference_base']['median']:.3f} (lower = more memorized)\n")  # fmt: skip
    print(format_table(results))
    print(f"\nwrote {output_dir}/: base/, lora/, ib-lora/, min_k.png, pass_at_10_m.png, results.json")
