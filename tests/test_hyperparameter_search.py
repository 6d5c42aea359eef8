"""IBSFTTrainer.hyperparameter_search: every trial a fresh base and IB-LoRA adapter with the trial's values, Optuna's
study stored and resumed (after a SIGKILL), pruning on intermediate evaluations, Pass@k^(m) as the objective, the
errors that name what to do, and `ib-ft tune` end to end."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from transformers import TrainerState

import trl_ib.trainer.search_backends as search_backends
from test_callbacks import PROBLEMS
from test_ib_sft_trainer import BASE_ARGS, code_dataset, ib_config
from tiny_models import tiny_llama, train_tokenizer
from trl_ib import IBSFTConfig, IBSFTTrainer, PassAtKMCallback
from trl_ib.trainer.search_backends import metric_objective, trial_rows
from trl_ib.trainer.search_space import DEFAULT_IB_SPACE, check_space, optuna_space, split_params

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def search_trainer(tmp_path, tokenizer, model=None, model_init=None, peft_config="ib_config()", **overrides):
    args = IBSFTConfig(**{**BASE_ARGS, "output_dir": str(tmp_path), **overrides})
    return IBSFTTrainer(
        model if model is not None or model_init is not None else tiny_llama(),
        args=args,
        train_dataset=code_dataset(8),
        eval_dataset=code_dataset(4),
        processing_class=tokenizer,
        peft_config=ib_config() if peft_config == "ib_config()" else peft_config,
        model_init=model_init,
    )


def adapter_config(run_dir: Path) -> dict:
    return json.loads((run_dir / "adapter_config.json").read_text())


def test_each_trial_trains_its_values_from_a_fresh_base_and_adapter(tmp_path, tokenizer):
    trainer = search_trainer(tmp_path, tokenizer, eval_strategy="steps", eval_steps=1)
    space = {
        "ib_alpha": {"low": 0.01, "high": 1.0, "log": True},
        "ib_dim": {"choices": [4, 8]},
        "learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
    }
    best = trainer.hyperparameter_search(hp_space=space, n_trials=3)
    rows = trial_rows(best.run_summary)
    assert [row["state"] for row in rows] == ["COMPLETE"] * 3
    for row in rows:
        run_dir = tmp_path / f"run-{row['trial']}"
        saved = adapter_config(run_dir)
        # The adapter's own config records the values it was trained with.
        assert (saved["ib_alpha"], saved["ib_dim"]) == (row["ib_alpha"], row["ib_dim"])
        log = [entry for entry in TrainerState.load_from_json(str(run_dir / "trainer_state.json")).log_history]
        trained = [entry for entry in log if "ib_alpha" in entry and "loss" in entry]
        assert [entry["ib_alpha"] for entry in trained] == pytest.approx([row["ib_alpha"]] * 2)
        assert [entry["learning_rate"] for entry in trained] == pytest.approx([row["learning_rate"]] * 2)
        # The objective is the eval_ce of the trial's last evaluation (at its last step).
        assert row["objective"] == pytest.approx([e for e in log if "eval_ce" in e][-1]["eval_ce"])
    assert best.objective == min(row["objective"] for row in rows)
    assert best.hyperparameters == next({k: row[k] for k in space} for row in rows if str(row["trial"]) == best.run_id)


def test_trials_with_the_same_values_repeat_a_plain_run_exactly(tmp_path, tokenizer):
    """Two trials at ib_alpha 0.3 give the eval_ce of one IBSFTTrainer run at 0.3: nothing of a trial (adapter,
    optimizer, base weights) reaches the next, and the base ends as it started."""
    reference = search_trainer(tmp_path / "plain", tokenizer, peft_config=ib_config(ib_alpha=0.3))
    reference.train()
    expected = reference.evaluate()["eval_ce"]

    trainer = search_trainer(tmp_path / "search", tokenizer)
    best = trainer.hyperparameter_search(hp_space={"ib_alpha": {"choices": [0.3]}}, n_trials=2)
    first, second = [row["objective"] for row in trial_rows(best.run_summary)]
    assert first == second  # bit for bit: the second trial starts from what the first did
    # The trial builds its adapter outside SFTTrainer.__init__: the same values, summed in another float order.
    assert first == pytest.approx(expected, rel=1e-6)
    base_before, base_after = tiny_llama().state_dict(), trainer._ib_model.unload().state_dict()
    assert base_after.keys() == base_before.keys()
    assert all(torch.equal(base_after[name], tensor) for name, tensor in base_before.items())


def test_model_init_builds_each_trial_with_the_trials_adapter(tmp_path, tokenizer):
    """A model_init gives the base; each trial's IBLoraConfig is applied to it; same values, same numbers as the
    trainer's own base."""
    built = []

    def model_init():
        built.append(1)
        return tiny_llama()

    space = {"ib_alpha": {"choices": [0.3]}, "ib_dim": {"choices": [4]}}
    with_init = search_trainer(tmp_path / "init", tokenizer, model_init=model_init)
    best = with_init.hyperparameter_search(hp_space=space, n_trials=1)
    assert len(built) == 2  # once for __init__, once for the trial
    assert adapter_config(tmp_path / "init" / "run-0")["ib_dim"] == 4
    reused = search_trainer(tmp_path / "reuse", tokenizer).hyperparameter_search(hp_space=space, n_trials=1)
    assert best.objective == reused.objective


def test_pruner_stops_a_trial_at_an_intermediate_evaluation(tmp_path, tokenizer):
    trainer = search_trainer(tmp_path, tokenizer, eval_strategy="steps", eval_steps=1, max_steps=4)
    best_or_error = None
    with pytest.raises(ValueError, match="Every trial of study 'pruned' was pruned \\(1 pruned\\)"):
        best_or_error = trainer.hyperparameter_search(
            hp_space={"ib_alpha": {"choices": [0.3]}},
            n_trials=1,
            pruner=optuna.pruners.ThresholdPruner(upper=0.0),  # eval_ce > 0: pruned at the first report
            study_name="pruned",
            storage=f"sqlite:///{tmp_path / 'study.db'}",
        )
    assert best_or_error is None
    (trial,) = optuna.load_study(study_name="pruned", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]  # reported at step 1, then stopped: no report at steps 2-4


def test_pass_at_k_m_is_an_objective(tmp_path, tokenizer):
    """PassAtKMCallback(every_n_steps=None) adds eval_pass@k^(m) to evaluate()'s metrics, which the search reads;
    PROBLEMS pass one problem of two whatever the model writes."""
    trainer = search_trainer(tmp_path, tokenizer)
    trainer.add_callback(
        PassAtKMCallback(
            trainer,
            PROBLEMS,
            num_samples=1,
            every_n_steps=None,
            max_new_tokens=6,
            stop_sequences=["\n", "\r"],
            timeout=2.0,
            backend="hf",
        )
    )
    best = trainer.hyperparameter_search(
        hp_space={"ib_alpha": {"choices": [0.1, 0.5]}},
        compute_objective=metric_objective("eval_pass@1^(1)"),
        direction="maximize",
        n_trials=2,
    )
    assert [row["objective"] for row in trial_rows(best.run_summary)] == [0.5, 0.5]


def test_killed_search_resumes_where_it_stopped(tmp_path, tokenizer):
    """SIGKILL during trial 1 of 3, then the same command: trial 0 is kept, the killed trial is marked failed and
    its values trained again, and the study ends with 3 complete trials, 2 of them trained by the second process."""
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    output_dir = tmp_path / "out"
    command = [sys.executable, str(TESTS / "search_worker.py"), str(tmp_path / "tokenizer"), str(output_dir), storage]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    first = subprocess.Popen([*command, "1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (output_dir / "hanging").exists():
        assert first.poll() is None and time.monotonic() < deadline, first.stdout.read() if first.poll() else ""
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    (kept,) = [t for t in optuna.load_study(study_name="ib-ft", storage=storage).trials if t.state.name == "COMPLETE"]

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "trainings: 2" in second.stdout
    trials = optuna.load_study(study_name="ib-ft", storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert (trials[0].params, trials[0].value) == (kept.params, kept.value)
    assert trials[2].params == trials[1].params  # the killed trial's values, trained again


def test_search_space_and_backend_errors_name_the_fix(tmp_path, tokenizer, monkeypatch):
    with pytest.raises(ValueError, match="'ib_alfa' is not a field of IBLoraConfig or IBSFTConfig"):
        check_space({"ib_alfa": {"low": 0.1, "high": 1.0}})
    with pytest.raises(ValueError, match="'ib_alpha'.*log=true needs low > 0"):
        check_space({"ib_alpha": {"low": 0.0, "high": 1.0, "log": True}})
    with pytest.raises(ValueError, match="'ib_dim'.*give either 'choices' or 'low' and 'high'"):
        check_space({"ib_dim": {"values": [4]}})
    with pytest.raises(ValueError, match="low=1.0, high=0.1"):
        check_space({"ib_beta": {"low": 1.0, "high": 0.1}})
    trainer = search_trainer(tmp_path, tokenizer)
    with pytest.raises(ValueError, match="backend='wandb'.*supports 'optuna', 'ray'"):
        trainer.hyperparameter_search(backend="wandb")
    monkeypatch.setattr(search_backends, "installed", lambda module: module != "optuna")
    with pytest.raises(ImportError, match=r'pip install "ib-ft\[tune\]"'):
        trainer.hyperparameter_search()
    monkeypatch.setattr(search_backends, "installed", lambda module: True)
    with pytest.raises(
        ValueError, match="backend='ray' sends the trainer to each trial without its model.*model_init"
    ):
        trainer.hyperparameter_search(backend="ray")
    saving = search_trainer(tmp_path, tokenizer, peft_config=ib_config(modules_to_save=["lm_head"]))
    with pytest.raises(ValueError, match="modules_to_save.*give IBSFTTrainer model_init"):
        saving.hyperparameter_search()
    with pytest.raises(
        ValueError, match="'eval_pass@1\\^\\(1\\)' is not among this evaluation's metrics \\(.*eval_ce"
    ):
        metric_objective("eval_pass@1^(1)")({"eval_ce": 1.0, "eval_loss": 1.1})


def test_model_init_returning_a_peft_model_cannot_take_adapter_values(tmp_path, tokenizer):
    from peft import get_peft_model

    trainer = search_trainer(
        tmp_path, tokenizer, model_init=lambda: get_peft_model(tiny_llama(), ib_config()), peft_config=None
    )
    with pytest.raises(ValueError, match=r"sets adapter fields \(ib_dim\), but model_init returned a PeftModel"):
        trainer.hyperparameter_search(hp_space={"ib_dim": {"choices": [4]}}, n_trials=1)


def test_default_space_and_its_split():
    params = optuna_space(DEFAULT_IB_SPACE)(
        optuna.trial.FixedTrial({"ib_alpha": 0.2, "ib_beta": 0.01, "ib_layers": 0.625, "ib_dim": 256})
    )
    assert params == {"ib_alpha": 0.2, "ib_beta": 0.01, "ib_layers": 0.625, "ib_dim": 256}
    training, adapter = split_params({**params, "learning_rate": 1e-4, "r": 8})
    assert training == {"ib_alpha": 0.2, "ib_beta": 0.01, "learning_rate": 1e-4}  # ib_alpha/beta go to both
    assert adapter == {"ib_alpha": 0.2, "ib_beta": 0.01, "ib_layers": 0.625, "ib_dim": 256, "r": 8}


@pytest.mark.slow
def test_ib_ft_tune_writes_trials_plot_and_best_adapter_and_continues(tmp_path):
    output_dir = tmp_path / "tune"
    command = [
        "ib-ft", "tune", "--output_dir", str(output_dir), "--max_steps", "2", "--report_to", "none",
        "--search_space", str(tmp_path / "space.yaml"),
    ]  # fmt: skip
    (tmp_path / "space.yaml").write_text("ib_alpha: {low: 0.01, high: 1.0, log: true}\nib_dim: {choices: [8, 16]}\n")
    first = subprocess.run([*command, "--n_trials", "2"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    with open(output_dir / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == ["0", "1"]
    assert "| trial | state | objective | seconds | ib_alpha | ib_dim |" in first.stdout
    best = min(rows, key=lambda row: float(row["objective"]))
    best_config = adapter_config(output_dir / "best")
    assert (best_config["ib_alpha"], best_config["ib_dim"]) == (float(best["ib_alpha"]), int(best["ib_dim"]))
    card = (output_dir / "best" / "README.md").read_text()
    assert f"This adapter is trial\n{best['trial']}" in card and "| `ib_dim` | 8, 16 |" in card
    assert (output_dir / "trials.png").stat().st_size > 0 and (output_dir / "best" / "trials.png").exists()

    again = subprocess.run([*command, "--n_trials", "3"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("\ntrial ") == 1  # one trial trained: the study had two
    with open(output_dir / "trials.csv") as handle:
        rows_again = list(csv.DictReader(handle))
    assert rows_again[:2] == rows and [row["trial"] for row in rows_again] == ["0", "1", "2"]


@pytest.mark.ray
def test_ray_tune_runs_each_trial_as_a_ray_task(tmp_path, tokenizer):
    """On a local Ray of 2 CPUs: each trial builds its base with model_init and trains the trial's adapter; the rows
    and the saved adapters agree, and the best is the lowest eval_ce. Run it in a process of its own (`-m ray`):
    after an Optuna search in the same process, Ray cannot pickle the trainer (a weakref)."""
    import ray

    # The workers unpickle the trainer, whose model_init and datasets come from the test modules.
    pythonpath = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    try:
        trainer = search_trainer(tmp_path, tokenizer, model_init=lambda: tiny_llama())
        best = trainer.hyperparameter_search(
            hp_space={"ib_alpha": {"choices": [0.1, 0.5]}, "ib_dim": {"choices": [4, 8]}},
            n_trials=2,
            backend="ray",
            storage_path=str(tmp_path / "ray"),
            resources_per_trial={"cpu": 1},
        )
    finally:
        ray.shutdown()
    rows = trial_rows(best.run_summary)
    assert [row["state"] for row in rows] == ["TERMINATED"] * 2
    for row in rows:
        saved = adapter_config(tmp_path / f"run-{row['trial']}")
        assert (saved["ib_alpha"], saved["ib_dim"]) == (row["ib_alpha"], row["ib_dim"])
    assert best.objective == min(row["objective"] for row in rows)
