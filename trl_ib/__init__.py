"""IB-FT for TRL: `IBSFTTrainer` / `IBSFTConfig`, Pass@k^(m) evaluation (`trl_ib.execution`, `trl_ib.evaluation`,
the `evaluate` metric in `trl_ib.metrics`) and memorization diagnostics (`trl_ib.memorization`).

The trainer is imported lazily, so that the sandbox and the metric load without torch and transformers.
"""

import importlib

_LAZY = {
    "IBSFTConfig": "trl_ib.ib_sft_config",
    "IBSFTTrainer": "trl_ib.ib_sft_trainer",
    "to_prompt_completion": "trl_ib.ib_sft_trainer",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trl_ib' has no attribute {name!r}")
