"""The trainer: IBSFTConfig / IBSFTTrainer, the KL controller, PassAtKMCallback and the data format."""

from .callbacks import PassAtKMCallback
from .data import to_prompt_completion
from .ib_sft_config import IBSFTConfig
from .ib_sft_trainer import IBSFTTrainer

__all__ = ["IBSFTConfig", "IBSFTTrainer", "PassAtKMCallback", "to_prompt_completion"]
