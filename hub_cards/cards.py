"""Model cards (README.md) for IB-LoRA adapters and their plain-LoRA exports.

Cards are `huggingface_hub.ModelCard`s rendered from the jinja templates in `hub_cards/templates/`. The YAML
metadata makes the adapter discoverable on the Hub (`library_name: peft`, `base_model`, tags) and carries Pass@k^(m)
results as `model-index` eval results; plots are PNG files next to the README, referenced by relative path.

    from hub_cards import write_adapter_card
    write_adapter_card("out/ib-lora", model.peft_config["default"], log_history=trainer.state.log_history,
                       pass_at_k_m={"pass@1^(1)": 0.52, "pass@5^(5)": 0.49}, eval_dataset="openai/openai_humaneval")
"""

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from importlib.resources import files
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from matplotlib.figure import Figure

from .plots import plot_against_m

CITATION = """@article{wang2025breaking,
  title={Breaking Memorization Barriers in LLM Code Fine-Tuning via Information Bottleneck for Improved Generalization},
  author={Wang, Changsheng and Chen, Xin and Liu, Sijia and Ding, Ke},
  journal={arXiv preprint arXiv:2510.16022},
  year={2025}
}"""
ADAPTER_TAGS = ["ib-lora", "information-bottleneck", "peft", "trl", "sft"]
EXPORT_TAGS = ["lora", "information-bottleneck", "peft", "trl", "sft"]
LORA_SETTINGS = ("r", "lora_alpha", "lora_dropout", "target_modules", "bias", "use_rslora")
# Keys IBSFTTrainer logs, with what they are; the training summary and curves show the ones present.
TRAINING_METRICS = {
    "loss": "total loss: ce + alpha * (KL + beta * ce_ib)",
    "ce": "task cross-entropy on response tokens, nats per token",
    "ib_kl": "KL(q(z | h) || N(0, I)), nats per position and latent dimension",
    "ib_ce": "ce_ib: cross-entropy of the labels predicted from z, nats per token",
    "ib_alpha": "alpha, the weight of the IB penalty",
}
PASS_AT_K_M_KEY = re.compile(r"pass@(\d+)\^\((\d+)\)")
TRAINING_CURVES_PNG = "training_curves.png"
PASS_AT_K_M_PNG = "pass_at_k_m.png"


def adapter_card(
    peft_config: Any,
    *,
    base_model: str | None = None,
    repo_id: str | None = None,
    log_history: Sequence[Mapping[str, float]] | None = None,
    pass_at_k_m: Mapping[str, float] | None = None,
    eval_dataset: str | None = None,
    datasets: str | list[str] | None = None,
    license: str | None = None,
    tags: str | Iterable[str] | None = None,
    plots: Sequence[tuple[str, str]] = (),
    search: Mapping[str, Any] | None = None,
) -> ModelCard:
    """
    The model card of an IB-LoRA adapter.

    Args:
        peft_config: the adapter's `IBLoraConfig`.
        base_model: Hub id of the base model; defaults to `peft_config.base_model_name_or_path`. A local directory
            is named in the text but left out of the metadata, which only accepts Hub ids.
        repo_id: where the adapter lives (Hub id or folder), used in the loading snippet and as the model-index name.
        log_history: `trainer.state.log_history`; the last logged value of each `TRAINING_METRICS` key is shown.
        pass_at_k_m: results like `{"pass@1^(1)": 0.52, "pass@5^(5)": 0.49}` (fractions in [0, 1]).
        eval_dataset: Hub id of the dataset `pass_at_k_m` was measured on; required with `pass_at_k_m`.
        datasets, license, tags: card metadata; `tags` are added to `ADAPTER_TAGS`.
        plots: (caption, PNG file name relative to the README) pairs to embed (see `write_adapter_card`).
        search: the hyperparameter search that chose this adapter (`ib-ft tune`): backend, objective, direction,
            trials, best_trial, best_value, space ({field: draw}) and best ({field: value}).
    """
    base_model = base_model or peft_config.base_model_name_or_path
    results = _pass_at_k_m_rows(pass_at_k_m)
    if results and not eval_dataset:
        raise ValueError(
            "eval_dataset=None: pass_at_k_m results need the Hub id of the dataset they were measured on."
        )
    model_name = (repo_id or f"{base_model}-ib-lora").rstrip("/").split("/")[-1]
    ib_fields = [f for f in fields(peft_config) if f.name.startswith("ib_")]
    card_data = _card_data(base_model, ADAPTER_TAGS, tags, datasets, license)
    card_data.model_name = model_name
    card_data.eval_results = [
        EvalResult(
            task_type="text-generation",
            dataset_type=eval_dataset,
            dataset_name=eval_dataset,
            metric_type=key,
            metric_name=f"Pass@{k}^({m})",
            metric_value=value,
        )
        for k, m, key, value in results
    ] or None
    return ModelCard.from_template(
        card_data,
        template_str=_template("adapter_card.md"),
        model_name=model_name,
        repo_id=repo_id or "path/to/this/adapter",
        base_model=base_model,
        ib_settings=[(f.name, getattr(peft_config, f.name), f.metadata.get("help", "")) for f in ib_fields],
        lora_settings=_lora_settings(peft_config),
        training=_final_metrics(log_history or []),
        pass_at_k_m=results,
        eval_dataset=eval_dataset,
        plots=plots,
        search=search,
        citation=CITATION,
    )


def write_adapter_card(
    save_directory: str | os.PathLike,
    peft_config: Any,
    *,
    log_history: Sequence[Mapping[str, float]] | None = None,
    pass_at_k_m: Mapping[str, float] | None = None,
    plots: Sequence[tuple[str, str]] = (),
    **card_kwargs: Any,
) -> ModelCard:
    """
    Draw the plots that the inputs allow (training curves from `log_history`; Pass@k^(m) against m when some k has
    several m) into `save_directory`, then save `adapter_card(...)` there as README.md and return it. `plots`:
    (caption, file) pairs already in `save_directory`, shown after these. `card_kwargs` are the other keyword
    arguments of `adapter_card`.
    """
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    given, plots = plots, []
    if log_history and plot_training_curves(log_history, directory / TRAINING_CURVES_PNG):
        plots.append(("Training curves", TRAINING_CURVES_PNG))
    if pass_at_k_m and _plot_pass_at_k_m(_pass_at_k_m_rows(pass_at_k_m), directory / PASS_AT_K_M_PNG):
        plots.append(("Pass@k^(m) against m", PASS_AT_K_M_PNG))
    plots += given
    card = adapter_card(peft_config, log_history=log_history, pass_at_k_m=pass_at_k_m, plots=plots, **card_kwargs)
    card.save(directory / "README.md")
    return card


def trainer_card(
    trainer: Any, *, model_name: str | None = None, output_dir: str | os.PathLike | None = None, **card_kwargs: Any
) -> ModelCard:
    """
    Write the card of the IB-LoRA adapter a Trainer is training into `output_dir` (default: `args.output_dir`), with its
    `state.log_history`; for `IBSFTTrainer.create_model_card`, which `Trainer.push_to_hub` calls after saving the
    model and before uploading the folder. `model_name` (as TRL passes it) names the adapter when the trainer has
    no `hub_model_id`. `card_kwargs`: `pass_at_k_m`, `eval_dataset`, `datasets`, `license`, `tags`.
    """
    model = trainer.accelerator.unwrap_model(trainer.model)
    return write_adapter_card(
        output_dir or trainer.args.output_dir,
        model.active_peft_config,
        log_history=trainer.state.log_history,
        repo_id=trainer.hub_model_id or model_name,
        **card_kwargs,
    )


def export_card(
    peft_config: Any,
    *,
    ib_adapter: str | None = None,
    repo_id: str | None = None,
    base_model: str | None = None,
    datasets: str | list[str] | None = None,
    license: str | None = None,
) -> ModelCard:
    """
    The model card of the plain-LoRA export of an IB-LoRA adapter: loads with stock PEFT, says it was trained with
    IB-FT and links `ib_adapter` (Hub id or path of the IB-LoRA adapter) when given. `peft_config` is the IB-LoRA
    config it was exported from (the LoRA settings are the same); `repo_id` is used in the loading snippet.
    """
    base_model = base_model or peft_config.base_model_name_or_path
    return ModelCard.from_template(
        _card_data(base_model, EXPORT_TAGS, None, datasets, license),
        template_str=_template("export_card.md"),
        base_model=base_model,
        ib_adapter=ib_adapter,
        ib_adapter_on_hub=ib_adapter is not None and not os.path.isdir(ib_adapter),
        repo_id=repo_id or "path/to/this/adapter",
        lora_settings=_lora_settings(peft_config),
        citation=CITATION,
    )


def plot_training_curves(log_history: Sequence[Mapping[str, float]], path: str | os.PathLike) -> bool:
    """
    Plot each `TRAINING_METRICS` key found in a Trainer `log_history` against the step, one panel per key, and
    save the figure as PNG at `path`. Returns False (and writes nothing) when no entry has any of those keys.
    """
    curves = {
        key: [(entry["step"], entry[key]) for entry in log_history if key in entry]
        for key in TRAINING_METRICS
        if any(key in entry for entry in log_history)
    }
    if not curves:
        return False
    figure = Figure(figsize=(3.2 * len(curves), 2.8), layout="constrained")
    for axes, (key, points) in zip(figure.subplots(1, len(curves), squeeze=False)[0], curves.items()):
        axes.plot(*zip(*points), marker="." if len(points) < 30 else None)
        axes.set(title=key, xlabel="step")
    figure.savefig(path, format="png", dpi=100)
    return True


def _plot_pass_at_k_m(rows: list[tuple[int, int, str, float]], path: Path) -> bool:
    """Pass@k^(m) against m, one line per k that has at least two m; False (nothing written) when none has."""
    by_k: dict[int, list[tuple[int, float]]] = {}
    for k, m, _, value in rows:
        by_k.setdefault(k, []).append((m, value))
    lines = {f"k = {k}": points for k, points in by_k.items() if len(points) > 1}
    if lines:
        plot_against_m(lines, path)
    return bool(lines)


def _card_data(
    base_model: str | None, default_tags: list[str], tags: str | Iterable[str] | None, datasets, license
) -> ModelCardData:
    on_hub = base_model is not None and not os.path.isdir(base_model)
    tags = [tags] if isinstance(tags, str) else tags or []  # one tag, several, or none, as TRL passes them
    all_tags = [*default_tags, *(t for t in tags if t not in default_tags)]
    if on_hub:
        all_tags.append(f"base_model:adapter:{base_model}")
    return ModelCardData(
        base_model=base_model if on_hub else None,
        library_name="peft",
        pipeline_tag="text-generation",
        tags=all_tags,
        datasets=datasets,
        license=license,
    )


def _template(name: str) -> str:
    return files(__package__).joinpath("templates", name).read_text(encoding="utf-8")


def _lora_settings(peft_config: Any) -> list[tuple[str, Any]]:
    def show(value: Any) -> Any:
        return ", ".join(sorted(value)) if isinstance(value, set | list) else value

    return [(name, show(getattr(peft_config, name))) for name in LORA_SETTINGS]


def _final_metrics(log_history: Sequence[Mapping[str, float]]) -> list[tuple[str, str, float, int]]:
    """(key, description, value, step) of the last logged value of each TRAINING_METRICS key."""
    last = {key: entry for entry in log_history for key in TRAINING_METRICS if key in entry}
    return [(key, TRAINING_METRICS[key], last[key][key], last[key]["step"]) for key in TRAINING_METRICS if key in last]


def _pass_at_k_m_rows(pass_at_k_m: Mapping[str, float] | None) -> list[tuple[int, int, str, float]]:
    """(k, m, key, value) sorted by k then m; keys must read `pass@<k>^(<m>)` with 1 <= m <= k."""
    rows = []
    for key, value in (pass_at_k_m or {}).items():
        match = PASS_AT_K_M_KEY.fullmatch(key)
        if not match or not 1 <= int(match[2]) <= int(match[1]):
            raise ValueError(
                f"pass_at_k_m key {key!r}: expected 'pass@<k>^(<m>)' with 1 <= m <= k, e.g. 'pass@5^(5)'."
            )
        rows.append((int(match[1]), int(match[2]), key, value))
    return sorted(rows)
