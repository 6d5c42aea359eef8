"""IB-FT for TRL, in three rooms:

- the trainer: `IBSFTConfig` / `IBSFTTrainer` (`ib_sft_config.py`, `ib_sft_trainer.py`, `kl_controller.py`) and
  `PassAtKMCallback` (`callbacks.py`);
- the evaluator, `trl_ib.code_eval`: sandboxed execution, the Pass@k^(m) estimator and the `evaluate` metric;
  torch-free, and it imports nothing else from `trl_ib`;
- the tools: the `ib-ft` CLI (`cli.py`, `train.py`, `evaluation.py`), memorization diagnostics
  (`memorization.py`), the built-in base (`builtin.py`) and the demo (`demo/`).

The trainer is imported lazily, so that `trl_ib.code_eval` loads without torch and transformers.
"""

import importlib

_LAZY = {
    "IBSFTConfig": "trl_ib.ib_sft_config",
    "IBSFTTrainer": "trl_ib.ib_sft_trainer",
    "to_prompt_completion": "trl_ib.train",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_ib' has no attribute {name!r}")
