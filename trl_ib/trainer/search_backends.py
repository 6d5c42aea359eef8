"""The backends of `IBSFTTrainer.hyperparameter_search`: transformers' Optuna and Ray Tune runs, with what they lack.

- Optuna (the default, `pip install "ib-ft[tune]"`): the study lives in a storage (`storage="sqlite:///study.db"`,
  or an in-memory one) under `study_name`; a search started again with the same storage continues the stored study
  and runs only the trials it still lacks, so a killed search resumes where it stopped. The trial a kill interrupted
  stops sending Optuna's heartbeat; once `heartbeat_interval` x 2 seconds have passed, the next trial to start marks
  it failed and runs its parameters again. Trials are drawn by a TPE sampler seeded with the trainer's seed.
- Ray Tune (`pip install "ib-ft[ray]"`): each trial a Ray task on a local Ray, or on the cluster `ray.init` joins.
"""

import importlib.util
from collections.abc import Callable
from typing import Any

from transformers.trainer_utils import HPSearchBackend

INSTALL = {HPSearchBackend.OPTUNA: "ib-ft[tune]", HPSearchBackend.RAY: "ib-ft[ray]"}
BACKEND_MODULES = {HPSearchBackend.OPTUNA: "optuna", HPSearchBackend.RAY: "ray.tune"}
DEFAULT_STUDY_NAME = "ib-ft"
HEARTBEAT_INTERVAL = 60  # seconds; Optuna's own example's value
FINISHED = ("COMPLETE", "PRUNED")


def resolve_backend(backend: str | HPSearchBackend | None) -> HPSearchBackend:
    """The backend (default: Optuna), once its extra is installed; else an ImportError naming the install command."""
    names = ", ".join(repr(b.value) for b in INSTALL)
    try:
        backend = HPSearchBackend(backend or HPSearchBackend.OPTUNA)
    except ValueError:
        raise ValueError(f"backend={backend!r}: choose one of {names}.") from None
    if backend not in INSTALL:
        raise ValueError(f"backend={backend.value!r}: IBSFTTrainer.hyperparameter_search supports {names}.")
    module = BACKEND_MODULES[backend]
    if not installed(module):
        raise ImportError(f'backend={backend.value!r} needs {module}: pip install "{INSTALL[backend]}"')
    return backend


def installed(module: str) -> bool:
    return importlib.util.find_spec(module.split(".")[0]) is not None


def metric_objective(metric: str) -> Callable[[dict[str, float]], float]:
    """`compute_objective` that reads one evaluation metric (e.g. "eval_ce", "eval_pass@1^(1)"), or names those
    there are."""

    def compute_objective(metrics: dict[str, float]) -> float:
        if metric not in metrics:
            raise ValueError(
                f"objective {metric!r} is not among this evaluation's metrics ({', '.join(sorted(metrics))}): give "
                "one of them, or add the callback that logs it (PassAtKMCallback with every_n_steps=None for "
                "eval_pass@k^(m))."
            )
        return metrics[metric]

    compute_objective.metric = metric
    return compute_objective


def optuna_study_kwargs(kwargs: dict[str, Any], n_trials: int, seed: int) -> tuple[dict[str, Any], int]:
    """(create_study kwargs, trials to run now): the storage opened with a heartbeat, the study loaded if it exists,
    and `n_trials` counted over the whole study, finished (complete or pruned) trials included."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs = dict(kwargs)
    heartbeat = kwargs.pop("heartbeat_interval", HEARTBEAT_INTERVAL)
    storage = kwargs.pop("storage", None)
    if storage is None:
        storage = optuna.storages.InMemoryStorage()
    elif isinstance(storage, str):
        storage = RDBStorage(
            storage,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    kwargs["storage"] = storage
    kwargs.setdefault("study_name", DEFAULT_STUDY_NAME)
    kwargs.setdefault("sampler", optuna.samplers.TPESampler(seed=seed))
    kwargs["load_if_exists"] = True
    done = 0
    if kwargs["study_name"] in optuna.study.get_all_study_names(storage):
        study = optuna.load_study(study_name=kwargs["study_name"], storage=storage)
        done = sum(trial.state.name in FINISHED for trial in study.trials)
    return kwargs, max(0, n_trials - done)


def load_study(study_kwargs: dict[str, Any]):
    import optuna

    return optuna.load_study(study_name=study_kwargs["study_name"], storage=study_kwargs["storage"])


def check_some_trial_completed(study) -> None:
    """Where every trial of `study` was pruned, a ValueError that says so, instead of the storage's own error when
    transformers asks for the best trial (a trial's own error propagates as it is)."""
    states = [trial.state.name for trial in study.trials]
    if states and set(states) == {"PRUNED"}:
        raise ValueError(
            f"Every trial of study {study.study_name!r} was pruned ({len(states)} pruned): there is no best trial. "
            "The pruner is too strict for this search (pass another as pruner=...)."
        )


def trial_rows(run_summary) -> list[dict[str, Any]]:
    """One dict per trial (trial, state, objective, seconds, then the parameters) of an Optuna study or of Ray
    Tune's ExperimentAnalysis, the `run_summary` of the BestRun that `hyperparameter_search` returns."""
    if hasattr(run_summary, "trials") and hasattr(run_summary, "study_name"):  # optuna.Study
        return [
            {
                "trial": trial.number,
                "state": trial.state.name,
                "objective": trial.value,
                "seconds": round(trial.duration.total_seconds(), 2) if trial.duration else None,
                **trial.params,
            }
            for trial in run_summary.trials
        ]
    rows = []
    for trial in run_summary.trials:  # ray.tune.ExperimentAnalysis
        result = trial.last_result or {}
        rows.append(
            {
                "trial": trial.trial_id,
                "state": trial.status,
                "objective": result.get("objective"),
                "seconds": round(result["time_total_s"], 1) if "time_total_s" in result else None,
                **trial.config,
            }
        )
    return rows
