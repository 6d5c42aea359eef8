"""IB-FT for TRL, in three rooms:

- the trainer: `IBSFTConfig` / `IBSFTTrainer` (`ib_sft_config.py`, `ib_sft_trainer.py`, `kl_controller.py`) and
  `PassAtKMCallback` (`callbacks.py`), each importable from `trl_ib` (`from trl_ib import IBSFTTrainer`);
- the evaluator, `trl_ib.code_eval`: sandboxed execution, the Pass@k^(m) estimator and the `evaluate` metric;
  torch-free, and it imports nothing else from `trl_ib`;
- the tools: the `ib-ft` CLI (`cli.py`, `train.py`, `evaluation.py`), memorization diagnostics
  (`memorization.py`), the built-in base (`builtin.py`) and the demo (`demo/`).

The public names are imported on first use (`__getattr__`), so that `import trl_ib` and `trl_ib.code_eval` load
without torch and transformers.
"""

import importlib
from typing import TYPE_CHECKING

# public name -> the module defining it (imported on first access, as TRL's `_import_structure`)
_LAZY = {
    "IBSFTConfig": "trl_ib.ib_sft_config",
    "IBSFTTrainer": "trl_ib.ib_sft_trainer",
    "PassAtKMCallback": "trl_ib.callbacks",
    "to_prompt_completion": "trl_ib.train",
}
__all__ = list(_LAZY)

if TYPE_CHECKING:  # what type checkers and IDEs see; at runtime `__getattr__` imports on first use
    from .callbacks import PassAtKMCallback
    from .ib_sft_config import IBSFTConfig
    from .ib_sft_trainer import IBSFTTrainer
    from .train import to_prompt_completion


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'trl_ib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
