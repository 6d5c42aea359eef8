"""IB-FT for TRL, in rooms by concept:

- `trl_ib.trainer`: `IBSFTConfig` / `IBSFTTrainer`, the KL controller, `PassAtKMCallback`, the paper's data format
  and the multi-process checks; each public name importable from `trl_ib` (`from trl_ib import IBSFTTrainer`);
- `trl_ib.generation`: sampling completions with transformers' `generate` or vLLM, and the prompt formats;
- `trl_ib.code_eval`: sandboxed execution, the Pass@k^(m) estimator and the `evaluate` metric; torch-free, and it
  imports nothing else from `trl_ib`;
- `trl_ib.memorization` (Min-K% diagnostics), `trl_ib.models` (loading a model with its adapter),
  `trl_ib.precision`, `trl_ib.builtin` (the built-in base), `trl_ib.files` and `trl_ib.demo`;
- `trl_ib.cli`: one module per `ib-ft` command; nothing outside it imports it.

The public names are imported on first use (`__getattr__`), so that `import trl_ib` and `trl_ib.code_eval` load
without torch and transformers.
"""

import importlib
from typing import TYPE_CHECKING

# public name -> the module defining it (imported on first access, as TRL's `_import_structure`)
_LAZY = {
    "IBSFTConfig": "trl_ib.trainer.ib_sft_config",
    "IBSFTTrainer": "trl_ib.trainer.ib_sft_trainer",
    "PassAtKMCallback": "trl_ib.trainer.callbacks",
    "to_prompt_completion": "trl_ib.trainer.data",
}
__all__ = list(_LAZY)

if TYPE_CHECKING:  # what type checkers and IDEs see; at runtime `__getattr__` imports on first use
    from .trainer.callbacks import PassAtKMCallback as PassAtKMCallback
    from .trainer.data import to_prompt_completion as to_prompt_completion
    from .trainer.ib_sft_config import IBSFTConfig as IBSFTConfig
    from .trainer.ib_sft_trainer import IBSFTTrainer as IBSFTTrainer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'trl_ib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
