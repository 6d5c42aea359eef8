"""IB-FT for TRL: `IBSFTTrainer` / `IBSFTConfig` (and, in submodules, Pass@k^(m) evaluation and diagnostics)."""

from .ib_sft_config import IBSFTConfig
from .ib_sft_trainer import IBSFTTrainer, to_prompt_completion

__all__ = ["IBSFTConfig", "IBSFTTrainer", "to_prompt_completion"]
