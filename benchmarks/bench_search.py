"""What `IBSFTTrainer.hyperparameter_search` costs per trial beyond the trial's own training and evaluation.

    python benchmarks/bench_search.py                 # SmolLM2-135M-Instruct (built in), 4 trials per variant

Each variant runs a search of `--n_trials` trials on the same model and data (the built-in code dataset, 4 optimizer
steps of batch 4, one evaluation of 16 rows at the last step, so it is inside the training loop), drawing ib_alpha and
ib_dim (64 or 128, so most trials change the adapter's shape):
- trainer's base, in-memory study: the base the trainer was built with, the previous adapter unloaded;
- trainer's base, SQLite study: the same, the study in a SQLite file with Optuna's heartbeat (what `ib-ft tune` does);
- model_init, SQLite study: each trial loads the base from disk (`from_pretrained`), as Ray Tune and sharded runs do.
A trial's overhead is its wall time in Optuna (start to complete) minus its `train_runtime` (the training loop,
evaluation included): the model's rebuild (unload + adapter injection, or a load), Trainer's per-trial setup (a new
accelerator), the adapter's save and the study's writes. Median over trials, and the first trial apart (it also pays
one-time costs). Writes benchmarks/results/bench_search.json and prints the table.
"""

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerState

from bench_generate import markdown
from peft_ib import IBLoraConfig
from results_file import record, results_path, run_key
from trl_ib import IBSFTConfig, IBSFTTrainer, builtin
from trl_ib.trainer.search_backends import trial_rows

SPACE = {"ib_alpha": {"low": 0.01, "high": 1.0, "log": True}, "ib_dim": {"choices": [64, 128]}}
VARIANTS = ("trainer's base, in-memory study", "trainer's base, SQLite study", "model_init, SQLite study")


def run_variant(variant: str, model_dir: str, tokenizer, data, n_trials: int, folder: Path) -> list[dict]:
    """[{trial seconds, train seconds, overhead seconds}] of each trial of one search."""
    args = IBSFTConfig(
        output_dir=str(folder),
        max_steps=4,
        per_device_train_batch_size=4,
        eval_strategy="steps",
        eval_steps=4,
        per_device_eval_batch_size=16,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        disable_tqdm=True,
        seed=0,
    )
    model_init = (
        (lambda: AutoModelForCausalLM.from_pretrained(model_dir)) if variant.startswith("model_init") else None
    )
    trainer = IBSFTTrainer(
        None if model_init else AutoModelForCausalLM.from_pretrained(model_dir),
        args=args,
        train_dataset=data["train"],
        eval_dataset=data["test"],
        processing_class=tokenizer,
        peft_config=IBLoraConfig(r=16, lora_alpha=32, target_modules="all-linear"),
        model_init=model_init,
    )
    storage = None if "in-memory" in variant else f"sqlite:///{folder / 'study.db'}"
    best = trainer.hyperparameter_search(hp_space=SPACE, n_trials=n_trials, storage=storage)
    rows = []
    for row in trial_rows(best.run_summary):
        state = TrainerState.load_from_json(str(folder / f"run-{row['trial']}" / "trainer_state.json"))
        train_seconds = next(log["train_runtime"] for log in state.log_history if "train_runtime" in log)
        rows.append({"trial": row["seconds"], "train": train_seconds, "overhead": row["seconds"] - train_seconds})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name, Hub id or local folder")
    parser.add_argument("--n_trials", type=int, default=4)
    args = parser.parse_args()
    model_dir = builtin.resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = builtin.code_dataset().select(range(80)).train_test_split(test_size=16, seed=0)
    table = []
    for variant in VARIANTS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            rows = run_variant(variant, model_dir, tokenizer, data, args.n_trials, Path(folder))
        later = rows[1:] or rows
        table.append(
            {
                "variant": variant,
                "trials": len(rows),
                "trial s (median)": round(statistics.median(r["trial"] for r in later), 2),
                "train + eval s (median)": round(statistics.median(r["train"] for r in later), 2),
                "overhead s (median)": round(statistics.median(r["overhead"] for r in later), 2),
                "overhead / trial": round(statistics.median(r["overhead"] / r["trial"] for r in later), 3),
                "first trial overhead s": round(rows[0]["overhead"], 2),
                "search wall s": round(time.perf_counter() - start, 1),
            }
        )
        print(table[-1], flush=True)
    print("\n" + markdown(table))
    setup = {"model": args.model, "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
             "python": sys.version.split()[0]}  # fmt: skip
    record(results_path(__file__), run_key(parser, args), {"setup": setup, "table": table})


if __name__ == "__main__":
    main()
