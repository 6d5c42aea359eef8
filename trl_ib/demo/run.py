"""The demo (`ib-ft demo`): does memorizing D_code block fine-tuning on it, and does IB-FT help?
SmolLM2-135M-Instruct, on CPU.

    ib-ft demo                          # one strength, one seed, six rows (the bases are cached for later runs)
    ib-ft demo --small                  # 64 D_code / 30 held-out problems: faster, not a test of the barrier
    ib-ft demo --seeds 0 1 2            # more seeds: paired bootstrap intervals over problems and seeds
    ib-ft demo --strengths 2 12 --arms "LoRA FT"    # other contamination strengths: the barrier axis
    ib-ft demo --split validation       # score the validation problems instead (how settings were chosen)
    ib-ft demo --quick                  # a plumbing check; its numbers mean nothing

Stages (each with a progress bar; wall times in results.json):
1. The task family of `tasks.py` (seed `task_seed`): D_code and fresh reference problems (chains of 2-3 operations),
   and validation and held-out problems (chains of 4-5) through operation pairs never seen in D_code.
2. Two bases per contamination strength (`contaminate.py`, cached once per machine): the same full fine-tuning of
   the model, `clean` on the reference problems and `contaminated` on D_code, for `strengths` epochs. Both have
   seen the task equally; only the contaminated one has memorized D_code (Min-K% of D_code against the reference).
3. On each base, LoRA FT (SFTTrainer + LoraConfig) and IB-FT (IBSFTTrainer + IBLoraConfig) on D_code, identical
   budgets, hyper-parameters and seeds; adapters saved with model cards.
4. Pass@k^(m) of the six models on the scored problems (sampled with the seed, bases included, run in the
   sandbox), Min-K% of D_code and the representation gap; the barrier and IB-FT minus LoRA FT with bootstrap
   intervals (`study.py`).
5. Writes to --output_dir: {E}ep/seed-S/{base}/{lora,ib-lora}/ (adapters with cards), min_k.png,
   pass_at_10_m.png, barrier.png (several strengths), results.json, and prints the tables.

Precision (`trl_ib.precision`): bf16 where the CPU or GPU computes it natively, float32 elsewhere: training under bf16
autocast with float32 master weights (`--bf16 false` turns it off), sampling with bf16 weights, each adapter merged
into them first (`--dtype float32` turns it off).
"""

import functools
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import SFTConfig, SFTTrainer

from hub_cards.plots import plot_against_m
from peft_ib import IBLoraConfig
from trl_ib import IBSFTConfig, IBSFTTrainer
from trl_ib.builtin import SMOLLM2_NAME
from trl_ib.code_eval import score
from trl_ib.files import write_atomically
from trl_ib.generation.prompting import build_programs
from trl_ib.generation.sampling import TEMPERATURE, TOP_P
from trl_ib.generation.vllm_generation import generate_samples_with, resolve_backend
from trl_ib.memorization import plot_distributions, representation_gap, score_min_k, summarize
from trl_ib.models import merge_adapter
from trl_ib.precision import native_bf16, resolve_dtype

from .contaminate import cached_base, key_hash
from .study import ARMS, BASES, contrasts, format_strength, plot_barrier
from .tasks import Task, make_task, sft_rows

SCORING_BACKEND = "auto"  # what samples the scored models: vLLM where it is installed, else generate_samples


@dataclass(frozen=True)
class Budget:
    """Problem counts, epochs and sampling of one demo size."""

    num_train: int
    num_reference: int
    num_validation: int
    num_held_out: int
    fine_tune_epochs: float
    max_new_tokens: (
        int  # held-out canonical solutions are 28-39 tokens; EOS or a stop sequence usually ends them first
    )
    fine_tune_batch_size: int = 16  # both arms' batch: 16 optimizer steps at either size
    num_samples: int = 10  # per scored problem; Pass@k^(m) needs n >= k = 10


# "small" halves the problem counts; at that size contamination does not memorize D_code (results/README.md), so it
# is a faster look at the pipeline, not a test of the barrier.
BUDGETS = {
    "default": Budget(128, 128, 60, 60, 2, 64),
    "small": Budget(64, 64, 30, 30, 2, 64, fine_tune_batch_size=8),
    "quick": Budget(16, 16, 4, 4, 1, 24),
}
QUICK_STRENGTH = 1.0  # contamination epochs of --quick
# Identical for both arms: the paper's recipe (cosine, warmup 0.1, all linear layers, dropout 0.05), rank 16, at a
# learning rate high enough for 16 steps to move the contaminated base.
FT_ARGS = dict(
    learning_rate=1e-3,
    lr_scheduler_type="cosine",
    warmup_steps=0.1,
    save_strategy="no",
    report_to="none",
    use_cpu=not torch.cuda.is_available(),
    disable_tqdm=False,
)
LORA_ARGS = dict(r=16, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
ARM_FOLDERS = {"LoRA FT": "lora", "IB-FT": "ib-lora"}
K_VALUES = (1, 5, 10)
GAP_FRACTION = 0.1
SPLITS = ("held_out", "validation")


@dataclass
class DemoArguments:
    output_dir: str = field(default="ib-ft-demo", metadata={"help": "Folder for the adapters, plots and results."})
    seeds: list[int] = field(
        default_factory=lambda: [0],
        metadata={"help": "Seeds of fine-tuning and sampling; several make intervals over seeds as well."},
    )
    strengths: list[float] = field(
        default_factory=lambda: [6.0],
        metadata={
            "help": "Contamination strengths: epochs of full fine-tuning that make both bases (fixed on "
            "D_code's Min-K% shift, never on scored problems: results/README.md)."
        },
    )
    arms: list[str] = field(
        default_factory=lambda: list(ARMS),
        metadata={
            "help": f"Fine-tuning arms run on each base: {', '.join(ARMS)}. LoRA FT alone measures the barrier."
        },
    )
    task_seed: int = field(default=0, metadata={"help": "Seed of the task family (and so of the bases)."})
    split: str = field(
        default="held_out",
        metadata={
            "help": "Problems scored: the held-out ones, or the validation ones used to choose the IB settings.",
            "choices": SPLITS,
        },
    )
    model: str = field(
        default=SMOLLM2_NAME, metadata={"help": "Model both bases start from: a built-in name, a Hub id or a folder."}
    )
    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "Train (both bases, both arms) under bf16 autocast with float32 master weights. None: the "
            "dtype rule, bf16 where the device computes it natively (trl_ib.precision)."
        },
    )
    dtype: str = field(
        default="rule",
        metadata={
            "help": "Weights while sampling (adapters merged into them first): rule (default), bfloat16 where "
            "the device computes it natively, else float32 (bf16 moved no Pass@1 beyond noise on the demo's "
            "rows: benchmarks/README.md); float32; bfloat16.",
            "choices": ["float32", "bfloat16", "rule"],
        },
    )
    # The IB-FT settings fixed on the validation problems (validate.py, results/README.md): the paper's alpha, beta,
    # depth and ib_dim, and the RMS-normalized encoder input.
    ib_alpha: float = field(
        default=IBLoraConfig.ib_alpha, metadata={"help": "IBLoraConfig.ib_alpha of the IB-FT arm."}
    )
    ib_beta: float = field(default=IBLoraConfig.ib_beta, metadata={"help": "IBLoraConfig.ib_beta of the IB-FT arm."})
    ib_layers: float = field(default=0.625, metadata={"help": "IBLoraConfig.ib_layers (relative depth) of IB-FT."})
    ib_dim: int = field(default=256, metadata={"help": "IBLoraConfig.ib_dim of the IB-FT arm."})
    ib_input_norm: str = field(default="rms", metadata={"help": "IBLoraConfig.ib_input_norm of the IB-FT arm."})
    quick: bool = field(
        default=False, metadata={"help": "A plumbing check on a few problems and steps; its numbers mean nothing."}
    )
    small: bool = field(
        default=False,
        metadata={
            "help": "Half the problems (64 D_code, 30 scored): faster, but contamination does not memorize "
            "D_code at this size (results/README.md), so it does not test the barrier."
        },
    )

    def __post_init__(self):
        if self.split not in SPLITS:
            raise ValueError(f"split={self.split!r}: must be one of {', '.join(SPLITS)}.")
        if not self.seeds:
            raise ValueError("seeds=[]: give at least one seed.")
        if not self.strengths or any(epochs <= 0 for epochs in self.strengths):
            raise ValueError(f"strengths={self.strengths!r}: give one or more contamination epochs, each > 0.")
        if not self.arms or any(arm not in ARMS for arm in self.arms) or "LoRA FT" not in self.arms:
            raise ValueError(f"arms={self.arms!r}: choose from {', '.join(ARMS)}; LoRA FT is always needed.")
        if self.dtype not in ("float32", "bfloat16", "rule"):
            raise ValueError(f"dtype={self.dtype!r}: must be one of float32, bfloat16, rule.")
        if self.quick and self.small:
            raise ValueError("quick=True and small=True: choose one size (quick, small, or neither for the default).")

    def budget(self) -> Budget:
        """The problem counts, epochs and sampling of the chosen size."""
        return BUDGETS["quick" if self.quick else "small" if self.small else "default"]

    def ib_options(self) -> dict:
        """The IBLoraConfig fields of the IB-FT arm."""
        return {name: getattr(self, name) for name in ("ib_alpha", "ib_beta", "ib_layers", "ib_dim", "ib_input_norm")}

    def precision(self) -> tuple[bool, torch.dtype]:
        """(bf16 autocast while training, dtype of the weights while sampling)."""
        return native_bf16() if self.bf16 is None else self.bf16, resolve_dtype(self.dtype)


@contextmanager
def stage(seconds: dict[str, float], name: str):
    """Adds the wall seconds of the `with` body to seconds[name]."""
    start = time.perf_counter()
    yield
    seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - start, 1)


def fine_tune(
    arm: str,
    base_dir: Path,
    tokenizer,
    rows: list[dict],
    output_dir: Path,
    seed: int,
    budget: Budget,
    ib_options: dict | None = None,
    bf16: bool = False,
    learning_rate: float = FT_ARGS["learning_rate"],
):
    """
    Fine-tune the base in `base_dir` on `rows` as `arm` ("lora", or "ib-lora" with the IBLoraConfig fields
    `ib_options`) for `budget`'s epochs and batch size at `learning_rate`, float32 weights, under bf16 autocast if
    `bf16`; save adapter + card. Returns the PeftModel in eval mode and the first logged step (losses).
    """
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    common = dict(
        output_dir=str(output_dir),
        seed=seed,
        logging_steps=1,
        num_train_epochs=budget.fine_tune_epochs,
        per_device_train_batch_size=budget.fine_tune_batch_size,
        bf16=bf16,
        **(FT_ARGS | {"learning_rate": learning_rate}),
    )
    data = Dataset.from_list(rows)
    if arm == "lora":
        trainer = SFTTrainer(
            model,
            args=SFTConfig(**common),
            peft_config=LoraConfig(**LORA_ARGS),
            train_dataset=data,
            processing_class=tokenizer,
        )
    else:
        trainer = IBSFTTrainer(
            model,
            args=IBSFTConfig(**common),
            peft_config=IBLoraConfig(**LORA_ARGS, **ib_options),
            train_dataset=data,
            processing_class=tokenizer,
        )
    trainer.train()
    trainer.save_model(str(output_dir))
    trainer.create_model_card(model_name=f"ib-ft-demo-{arm}", dataset_name="ib-ft demo D_code")
    first_step = next((log for log in trainer.state.log_history if "loss" in log), {})
    return trainer.model.eval(), first_step


def sample_and_score(model, tokenizer, problems: list[dict], budget: Budget, seed: int):
    """`budget.num_samples` sampled completions per problem (the evaluator's temperature / top_p), run: `Scores`.
    Sampled by `generate_samples_with` on `SCORING_BACKEND`."""
    set_seed(seed)
    prompts = [p["prompt"] for p in problems]
    completions = generate_samples_with(
        SCORING_BACKEND,
        model,
        tokenizer,
        prompts,
        budget.num_samples,
        temperature=TEMPERATURE,
        top_p=TOP_P,
        max_new_tokens=budget.max_new_tokens,
        batch_size=80,
        progress=True,
    )
    programs = build_programs(prompts, completions, "python")
    m = range(1, max(K_VALUES) + 1)
    return score(programs, [p["test"] for p in problems], [p["entry_point"] for p in problems], K_VALUES, m)


def memorization_row(model, tokenizer, d_code, groups_by, dtype) -> dict:
    """
    The summary of the model's Min-K% of `d_code` (float32 weights) and the representation gap between the most and
    least memorized groups of `d_code` by the scores `groups_by` (None: the model's own), with the weights in `dtype`.
    Leaves the model in `dtype`. Deterministic: it does not depend on a sampling seed.
    """
    min_k = score_min_k(model, tokenizer, d_code)
    model.to(dtype)
    gap = representation_gap(model, tokenizer, d_code, groups_by or min_k, GAP_FRACTION)
    return {"min_k_d_code": summarize(min_k), "min_k_d_code_values": min_k, "representation_gap": gap}


def sampled(model, tokenizer, problems, budget, seed) -> dict:
    """Pass@k^(m) on `problems` ("pass") and the correct samples per problem ("num_correct"), sampled with `seed`."""
    scores = sample_and_score(model, tokenizer, problems, budget, seed)
    return {"pass": scores.table, "num_correct": scores.num_correct}


def score_model(model, tokenizer, problems, d_code, groups_by, budget, seed, dtype) -> dict:
    """
    `sampled` | `memorization` of the model with the weights in `dtype`. An adapter is merged into the weights first
    (in float32, `merge_adapter`), and the model is left merged and in `dtype`.
    """
    model = merge_adapter(model)
    memorized = memorization_row(model, tokenizer, d_code, groups_by, dtype)
    return sampled(model, tokenizer, problems, budget, seed) | memorized


def texts(problems: list[dict]) -> list[str]:
    """What contamination trains on: prompt + canonical solution of each problem."""
    return [p["prompt"] + p["canonical_solution"] for p in problems]


def demo_task(task_seed: int, budget: Budget) -> Task:
    """The task family of `task_seed` at `budget`'s size."""
    return make_task(task_seed, budget.num_train, budget.num_reference, budget.num_validation, budget.num_held_out)


def bases(model: str, task: Task, epochs: float, bf16: bool) -> dict[str, Path]:
    """{"clean": `model` fully fine-tuned on the reference problems, "contaminated": on D_code}, `epochs` each."""
    return {
        "clean": cached_base(model, texts(task.reference), epochs, bf16),
        "contaminated": cached_base(model, texts(task.train), epochs, bf16),
    }


def cached_json(path: Path, compute) -> dict:
    """`compute()`, stored as JSON at `path` (`write_atomically`) and read back from there once stored."""
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    write_atomically(str(path), json.dumps(value))
    return value


def base_scores(
    base_dir: Path, tokenizer, d_code, reference, problems, budget: Budget, dtype: torch.dtype, seed: int
) -> dict:
    """
    The base's `evaluate` row on `problems` sampled with `seed` ("sampling_seed"), plus its Min-K% of the reference
    problems ("min_k_reference"), cached beside the base: the seed-independent part (Min-K%, representation gap)
    once per `dtype`, the sampled part per problems, sampling budget, dtype and seed.
    """
    base = functools.cache(lambda: AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval())

    def memorized() -> dict:
        reference_min_k = score_min_k(base(), tokenizer, reference)
        return memorization_row(base(), tokenizer, d_code, None, dtype) | {"min_k_reference": reference_min_k}

    memorized_row = cached_json(
        base_dir / f"base-memorization-{key_hash(d_code, reference, str(dtype))}.json", memorized
    )
    backend = resolve_backend(SCORING_BACKEND)  # in the key where not hf: the files cached before keep their names
    key = key_hash(
        [p["prompt"] for p in problems],
        budget.num_samples,
        budget.max_new_tokens,
        str(dtype),
        seed,
        *([backend] if backend != "hf" else []),
    )
    sampled_row = cached_json(
        base_dir / f"base-samples-{key}.json", lambda: sampled(base().to(dtype), tokenizer, problems, budget, seed)
    )
    return sampled_row | memorized_row | {"sampling_seed": seed}


def adapter_dir(output_dir: Path, epochs: float, seed: int, base: str, arm: str) -> Path:
    """Where a run saves the `arm` adapter fine-tuned from `base` at contamination `epochs` with `seed`."""
    return output_dir / f"{epochs:g}ep" / f"seed-{seed}" / base / ARM_FOLDERS[arm]


def run_strength(args: DemoArguments, task: Task, epochs: float, budget: Budget, seconds: dict) -> dict:
    """The six rows per seed at one contamination strength, their contrasts and the Min-K% summaries."""
    bf16, dtype = args.precision()
    d_code, reference = sft_rows(task.train), sft_rows(task.reference)
    problems = task.held_out if args.split == "held_out" else task.validation
    with stage(seconds, f"{epochs:g} epochs: contaminating both bases (cached)"):
        folders = bases(args.model, task, epochs, bf16)
    tokenizer = AutoTokenizer.from_pretrained(folders["contaminated"])
    draws, seeds = {}, {}
    for seed in args.seeds:
        with stage(seconds, f"{epochs:g} epochs: scoring both bases (cached)"):
            draws[str(seed)] = {
                name: base_scores(folder, tokenizer, d_code, reference, problems, budget, dtype, seed)
                for name, folder in folders.items()
            }
        # the gap's groups: D_code as memorized by contamination (Min-K% does not depend on the seed)
        memorized_first = draws[str(seed)]["contaminated"]["min_k_d_code_values"]
        seeds[str(seed)] = {name: {} for name in BASES}
        for name, folder in folders.items():
            for arm in args.arms:
                output_dir = adapter_dir(Path(args.output_dir), epochs, seed, name, arm)
                with stage(seconds, f"{epochs:g} epochs: fine-tuning {arm}"):
                    model, _ = fine_tune(
                        ARM_FOLDERS[arm], folder, tokenizer, d_code, output_dir, seed, budget, args.ib_options(), bf16
                    )
                with stage(seconds, f"{epochs:g} epochs: scoring {arm}"):
                    seeds[str(seed)][name][arm] = score_model(
                        model, tokenizer, problems, d_code, memorized_first, budget, seed, dtype
                    )
    contaminated = draws[str(args.seeds[0])]["contaminated"]
    shift = {
        "d_code": contaminated["min_k_d_code"]["median"],
        "reference": summarize(contaminated["min_k_reference"])["median"],
    }
    result = {
        "min_k_shift": shift | {"shift": shift["reference"] - shift["d_code"]},
        "base_draws": draws,
        "seeds": seeds,
    }
    return result | {"contrasts": contrasts(result, budget.num_samples)}


def plots(strengths: dict[str, dict], output_dir: Path, split: str) -> None:
    """min_k.png and pass_at_10_m.png of the first strength and seed; barrier.png where there are several strengths."""
    epochs, first = next(iter(strengths.items()))
    seed, by_base = next(iter(first["seeds"].items()))
    draws = first["base_draws"][seed]
    plot_distributions(
        {
            "D_code, contaminated base": draws["contaminated"]["min_k_d_code_values"],
            "reference, contaminated base": draws["contaminated"]["min_k_reference"],
            "D_code, clean base": draws["clean"]["min_k_d_code_values"],
            f"D_code, contaminated + LoRA FT, seed {seed}": by_base["contaminated"]["LoRA FT"]["min_k_d_code_values"],
        },
        output_dir / "min_k.png",
    )
    rows = {f"{name} base": draws[name] for name in BASES}
    rows |= {f"{name} + {arm}": row for name, arms in by_base.items() for arm, row in arms.items()}
    curves = {label: [(m, row["pass"][f"pass@10^({m})"]) for m in range(1, 11)] for label, row in rows.items()}
    plot_against_m(curves, output_dir / "pass_at_10_m.png", f"{split}, {epochs} epochs, seed {seed}: Pass@10^(m)")
    if len(strengths) > 1:
        plot_barrier(strengths, output_dir / "barrier.png")


def run_demo(args: DemoArguments) -> dict:
    """The whole demo for `args` (module docstring): writes to args.output_dir, prints the tables, returns the summary
    written to results.json."""
    if not torch.cuda.is_available():
        torch.set_num_threads(min(torch.get_num_threads(), 2))  # the 2-core budget; OMP_NUM_THREADS=1 lowers it
    budget = args.budget()
    strengths = [QUICK_STRENGTH] if args.quick else args.strengths
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    task = demo_task(args.task_seed, budget)
    seconds: dict[str, float] = {}
    results = {f"{epochs:g}": run_strength(args, task, epochs, budget, seconds) for epochs in strengths}
    plots(results, output_dir, args.split)
    summary = {
        "arguments": asdict(args),
        "budget": asdict(budget),
        "precision": {"bf16_training": args.precision()[0], "sampling_dtype": str(args.precision()[1])},
        "scored_pairs": task.held_out_pairs if args.split == "held_out" else task.validation_pairs,
        "strengths": results,
        "stage_seconds": seconds,
    }
    (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    problems = task.held_out if args.split == "held_out" else task.validation
    print(
        f"\n{args.split} problems ({len(problems)}), {budget.num_samples} samples each, "
        f"sampling in {summary['precision']['sampling_dtype']}:\n"
    )
    for epochs, strength in results.items():
        print(format_strength(epochs, strength, budget.num_samples) + "\n")
    print("wall seconds per stage: " + ", ".join(f"{name} {value:.0f}" for name, value in seconds.items()))
    print(
        f"wrote {output_dir}/: *ep/seed-*/*/{{lora,ib-lora}}, min_k.png, pass_at_10_m.png, results.json"
        + (", barrier.png" if len(results) > 1 else "")
    )
    return summary
