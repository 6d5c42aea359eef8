"""Search spaces for `IBSFTTrainer.hyperparameter_search`: one declarative form for Optuna, Ray Tune and YAML files.

A space maps a field name to how it is drawn:

    {"ib_alpha": {"low": 0.01, "high": 1.0, "log": True},   # a float (an int where low and high are ints)
     "ib_dim": {"choices": [64, 128, 256]}}                  # one of a list

Any field of IBLoraConfig (the adapter: `ib_alpha`, `ib_dim`, `ib_layers`, `r`, ...) or of IBSFTConfig (training:
`learning_rate`, `ib_target_kl`, `num_train_epochs`, ...) may be searched. `ib_alpha` and `ib_beta` are fields of
both: a trial's value is written into both, so the saved adapter records the weights it was trained with.
"""

from dataclasses import fields
from typing import Any

from peft_ib import IBLoraConfig

from .ib_sft_config import IBSFTConfig

# The default: IB-FT's strength (alpha, beta), where it reads the residual stream and how wide its bottleneck is.
# Centred on the paper's settings (alpha 0.2, beta 0.01, depth 0.625, ib_dim 256); the learning rate is left to the
# user's IBSFTConfig, since its range depends on the model (add it to the space to search it).
DEFAULT_IB_SPACE = {
    "ib_alpha": {"low": 0.01, "high": 1.0, "log": True},
    "ib_beta": {"low": 0.001, "high": 0.1, "log": True},
    "ib_layers": {"choices": [0.25, 0.5, 0.625, 0.75]},
    "ib_dim": {"choices": [64, 128, 256]},
}
ADAPTER_FIELDS = frozenset(f.name for f in fields(IBLoraConfig) if f.init)
TRAINING_FIELDS = frozenset(f.name for f in fields(IBSFTConfig) if f.init)
SHARED_FIELDS = ADAPTER_FIELDS & TRAINING_FIELDS  # ib_alpha, ib_beta
CHOICE_TYPES = (bool, int, float, str, type(None))


def check_field(name: str) -> None:
    """A ValueError naming `name` where it is not a searchable field."""
    if name not in ADAPTER_FIELDS | TRAINING_FIELDS:
        raise ValueError(
            f"search space field {name!r} is not a field of IBLoraConfig or IBSFTConfig (e.g. ib_alpha, ib_beta, "
            "ib_dim, ib_layers, r, lora_alpha, learning_rate, ib_target_kl, num_train_epochs)."
        )


def check_space(space: dict[str, dict]) -> dict[str, dict]:
    """`space` as given, once every entry names a searchable field and a valid draw; else a ValueError naming it."""
    if not isinstance(space, dict) or not space:
        raise ValueError(f"search space {space!r}: expected a non-empty mapping of field name -> draw.")
    for name, draw in space.items():
        check_field(name)
        if not isinstance(draw, dict):
            raise ValueError(
                f"search space field {name!r}: {draw!r} is not a mapping; give low/high[/log] or choices."
            )
        if set(draw) == {"choices"}:
            choices = draw["choices"]
            if not isinstance(choices, list) or not choices or not all(isinstance(c, CHOICE_TYPES) for c in choices):
                raise ValueError(
                    f"search space field {name!r}: choices={choices!r}: give a non-empty list of numbers, strings, "
                    "booleans or null."
                )
        elif {"low", "high"} <= set(draw) <= {"low", "high", "log"}:
            low, high = draw["low"], draw["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
                raise ValueError(f"search space field {name!r}: low={low!r}, high={high!r}: give numbers, low < high.")
            if draw.get("log") and low <= 0:
                raise ValueError(f"search space field {name!r}: log=true needs low > 0, got low={low!r}.")
        else:
            raise ValueError(
                f"search space field {name!r}: {draw!r}: give either 'choices' or 'low' and 'high' (and 'log')."
            )
    return space


def _is_int_range(draw: dict) -> bool:
    return isinstance(draw["low"], int) and isinstance(draw["high"], int)


def optuna_space(space: dict[str, dict]):
    """The `hp_space` callable of the Optuna backend: trial -> {field: value}."""
    check_space(space)

    def hp_space(trial) -> dict[str, Any]:
        params = {}
        for name, draw in space.items():
            if "choices" in draw:
                params[name] = trial.suggest_categorical(name, draw["choices"])
            elif _is_int_range(draw):
                params[name] = trial.suggest_int(name, draw["low"], draw["high"], log=bool(draw.get("log")))
            else:
                params[name] = trial.suggest_float(name, draw["low"], draw["high"], log=bool(draw.get("log")))
        return params

    return hp_space


def ray_space(space: dict[str, dict]):
    """The `hp_space` callable of the Ray Tune backend: None -> Ray Tune's `config` of search distributions."""
    check_space(space)
    from ray import tune

    def draw_of(draw: dict):
        if "choices" in draw:
            return tune.choice(draw["choices"])
        if _is_int_range(draw):  # Ray's integer bounds exclude `high`
            return (tune.lograndint if draw.get("log") else tune.randint)(draw["low"], draw["high"] + 1)
        return (tune.loguniform if draw.get("log") else tune.uniform)(draw["low"], draw["high"])

    config = {name: draw_of(draw) for name, draw in space.items()}
    return lambda trial: config


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A trial's values -> (IBSFTConfig values, IBLoraConfig values); ib_alpha / ib_beta go to both."""
    for name in params:
        check_field(name)
    training = {k: v for k, v in params.items() if k in TRAINING_FIELDS}
    adapter = {k: v for k, v in params.items() if k in ADAPTER_FIELDS}
    return training, adapter
