"""`ib-ft tune`: search IB-FT's settings on validation data with `IBSFTTrainer.hyperparameter_search`.

    ib-ft tune                                       # built-in default: tiny model, shipped code dataset, CPU
    ib-ft tune --model_name_or_path org/model --dataset_name data.jsonl --n_trials 20 \\
        --search_space space.yaml --eval_strategy steps --eval_steps 50      # evaluations also prune
    ib-ft tune ... --objective "eval_pass@1^(1)" --problems validation.jsonl

Takes every `ib-ft train` flag, plus TuneArguments below. Writes under --output_dir: one folder per trial
(`run-<trial>`, its adapter), trials.csv (one row per trial), trials.png (the objective per trial and per parameter)
and `best/`, the best trial's adapter with a model card that records the search. With Optuna the study is stored in
--storage (default `<output_dir>/study.db`): the same command run again continues it.
"""

import csv
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import TrainerCallback, TrainerState
from trl import ModelConfig, ScriptArguments, TrlParser

from hub_cards import write_adapter_card
from hub_cards.plots import plot_trials
from peft_ib import IBLoraConfig
from trl_ib.code_eval.problem_sets import load_problems
from trl_ib.trainer.callbacks import PassAtKMCallback
from trl_ib.trainer.ib_sft_config import IBSFTConfig
from trl_ib.trainer.ib_sft_trainer import IBSFTTrainer
from trl_ib.trainer.search_backends import DEFAULT_STUDY_NAME, HEARTBEAT_INTERVAL, metric_objective, trial_rows
from trl_ib.trainer.search_space import DEFAULT_IB_SPACE, check_space

from .train import IBArguments, build_peft_config, end_processes, load_base, load_data, load_model, parse

PASS_AT_K_M_METRIC = re.compile(r"eval_pass@(\d+)\^\((\d+)\)")
BACKENDS = ("optuna", "ray")


@dataclass
class TuneArguments:
    """The search: how many trials, on which backend, what is optimized over which space."""

    n_trials: int = field(
        default=10, metadata={"help": "Trials in the study, those a stored study already has included."}
    )
    backend: str = field(default="optuna", metadata={"help": "'optuna' (ib-ft[tune]) or 'ray' (ib-ft[ray])."})
    storage: str | None = field(
        default=None,
        metadata={"help": "Optuna storage URL; default sqlite:///<output_dir>/study.db. Run again, it continues."},
    )
    study_name: str = field(default=DEFAULT_STUDY_NAME, metadata={"help": "The study's name in --storage."})
    heartbeat_interval: int = field(
        default=HEARTBEAT_INTERVAL,
        metadata={"help": "Seconds between a running trial's heartbeats; a trial silent for twice this is rerun."},
    )
    objective: str = field(
        default="eval_ce",
        metadata={
            "help": "The evaluation metric to optimize: eval_ce (task loss), or eval_pass@k^(m) with --problems."
        },
    )
    direction: str | None = field(
        default=None, metadata={"help": "'minimize' or 'maximize'; default: maximize eval_pass@k^(m), else minimize."}
    )
    search_space: str | None = field(
        default=None,
        metadata={"help": "YAML file of the space ({field: {low, high, log} or {choices}}); default: the IB default."},
    )
    problems: str | None = field(
        default=None, metadata={"help": "Validation problems for an eval_pass@k^(m) objective (as `ib-ft eval`)."}
    )
    num_samples: int = field(default=10, metadata={"help": "Samples per validation problem, at least k."})
    max_new_tokens: int = field(default=256, metadata={"help": "New tokens per sample."})
    eval_fraction: float = field(
        default=0.1,
        metadata={"help": "Share of the training rows held out for evaluation when the data has no test split."},
    )

    def __post_init__(self):
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: must be one of {', '.join(map(repr, BACKENDS))}.")
        if self.direction is None:
            self.direction = "maximize" if PASS_AT_K_M_METRIC.fullmatch(self.objective) else "minimize"
        if self.direction not in ("minimize", "maximize"):
            raise ValueError(f"direction={self.direction!r}: must be 'minimize' or 'maximize'.")
        if self.n_trials < 1:
            raise ValueError(f"n_trials={self.n_trials!r}: must be >= 1.")
        if PASS_AT_K_M_METRIC.fullmatch(self.objective) and self.problems is None:
            raise ValueError(f"objective={self.objective!r} needs --problems (the validation problems to sample).")
        if not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction={self.eval_fraction!r}: must be in (0, 1).")

    def space(self) -> dict[str, dict]:
        if self.search_space is None:
            return DEFAULT_IB_SPACE
        return check_space(yaml.safe_load(Path(self.search_space).read_text()))


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, IBSFTConfig, ModelConfig, IBArguments, TuneArguments), prog="ib-ft tune")


class _AnnounceTrial(TrainerCallback):
    def __init__(self, n_trials: int):
        self.n_trials, self.started = n_trials, 0

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and state.trial_params is not None:
            self.started += 1
            values = ", ".join(
                f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                for key, value in state.trial_params.items()
            )
            print(f"\ntrial {self.started} of up to {self.n_trials} this run: {values}", flush=True)


def run(script_args, training_args: IBSFTConfig, model_args, ib_args: IBArguments, tune_args: TuneArguments):
    if ib_args.peft_type != "iblora":
        raise ValueError(
            "peft_type='lora': ib-ft tune searches IB-LoRA (SFTTrainer has no model_init to build trials from); "
            "--ib_alpha 0 trains the same LoRA, the encoders given no weight, and tunes it as the control."
        )
    space = tune_args.space()
    train_dataset, eval_dataset = load_data(script_args, ib_args)
    if eval_dataset is None:
        split = train_dataset.train_test_split(test_size=tune_args.eval_fraction, seed=training_args.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    model, tokenizer = load_base(
        model_args, training_args, [row["prompt"] + row["completion"] for row in train_dataset]
    )
    model_init = None
    if tune_args.backend == "ray":  # a Ray trial gets the trainer without its model: it loads the base itself
        model_path = model_args.model_name_or_path or model.name_or_path
        model_init = lambda: load_model(ModelConfig(model_name_or_path=model_path, dtype=model_args.dtype))  # noqa: E731
    trainer = IBSFTTrainer(
        model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=build_peft_config(model_args, ib_args, training_args),
        model_init=model_init,
    )
    pass_at = PASS_AT_K_M_METRIC.fullmatch(tune_args.objective)
    if pass_at:
        k, m = int(pass_at[1]), int(pass_at[2])
        trainer.add_callback(
            PassAtKMCallback(
                trainer,
                load_problems(tune_args.problems),
                k=[k],
                m=[m],
                num_samples=max(k, tune_args.num_samples),
                every_n_steps=None,
                max_new_tokens=tune_args.max_new_tokens,
            )
        )
    trainer.add_callback(_AnnounceTrial(tune_args.n_trials))
    output_dir = Path(training_args.output_dir)
    backend_kwargs = {}
    if tune_args.backend == "optuna":
        backend_kwargs = dict(
            storage=tune_args.storage or f"sqlite:///{(output_dir / 'study.db').resolve()}",
            study_name=tune_args.study_name,
            heartbeat_interval=tune_args.heartbeat_interval,
        )
    best = trainer.hyperparameter_search(
        hp_space=space,
        compute_objective=metric_objective(tune_args.objective),
        n_trials=tune_args.n_trials,
        direction=tune_args.direction,
        backend=tune_args.backend,
        **backend_kwargs,
    )
    if trainer.is_world_process_zero():
        report(best, space, tune_args, output_dir, tokenizer, script_args.dataset_name)
    return trainer


def report(best, space: dict, tune_args: TuneArguments, output_dir: Path, tokenizer, dataset_name) -> None:
    """Print the trials' table; write trials.csv, trials.png and `best/` (adapter, tokenizer, card)."""
    rows = trial_rows(best.run_summary)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(output_dir / "trials.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    print("\n| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_show(row.get(column)) for column in columns) + " |")
    plot_trials(rows, list(space), tune_args.objective, output_dir / "trials.png")
    best_dir = output_dir / "best"
    shutil.rmtree(best_dir, ignore_errors=True)
    shutil.copytree(output_dir / f"run-{best.run_id}", best_dir, ignore=shutil.ignore_patterns("checkpoint-*"))
    shutil.copy(output_dir / "trials.png", best_dir / "trials.png")
    tokenizer.save_pretrained(best_dir)
    search = {
        "backend": tune_args.backend,
        "objective": tune_args.objective,
        "direction": tune_args.direction,
        "trials": sum(row["state"] in ("COMPLETE", "PRUNED", "TERMINATED") for row in rows),
        "best_trial": best.run_id,
        "best_value": best.objective,
        "space": space,
        "best": best.hyperparameters,
    }
    write_adapter_card(
        best_dir,
        IBLoraConfig.from_pretrained(best_dir),
        log_history=_log_history(best_dir),
        datasets=dataset_name,
        search=search,
        plots=[("The search: the objective per trial and per parameter", "trials.png")],
    )
    print(f"\nbest: trial {best.run_id}, {tune_args.objective} = {best.objective:.4g}; adapter in {best_dir}")


def _show(value) -> str:
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def _log_history(run_dir: Path) -> list[dict]:
    state_file = run_dir / "trainer_state.json"
    return TrainerState.load_from_json(str(state_file)).log_history if state_file.exists() else []


def main(argv: list[str] | None = None) -> None:
    trainer = run(*parse(argv, make_parser))
    end_processes(trainer)
