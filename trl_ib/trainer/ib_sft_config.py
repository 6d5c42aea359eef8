"""IBSFTConfig: SFTConfig plus the knobs of the IB penalty's schedule."""

from dataclasses import dataclass, field

import torch
from trl import SFTConfig

from ..precision import native_bf16


@dataclass
class IBSFTConfig(SFTConfig):
    """
    Configuration of [`IBSFTTrainer`]: every [`~trl.SFTConfig`] option, plus how the IB penalty
    `alpha * (KL + beta * ce_ib)` is weighted during training. The IB architecture (blocks, bottleneck size, masks)
    lives in the adapter's `IBLoraConfig`.
    """

    ib_alpha: float | None = field(
        default=None,
        metadata={"help": "Weight alpha of the IB penalty. None: the adapter's IBLoraConfig.ib_alpha."},
    )
    ib_beta: float | None = field(
        default=None,
        metadata={"help": "Weight beta of ce_ib inside the penalty. None: the adapter's IBLoraConfig.ib_beta."},
    )
    ib_warmup_steps: float = field(
        default=0,
        metadata={
            "help": (
                "alpha ramps linearly from 0 to its value over this many optimizer steps; a float in (0, 1) is a "
                "ratio of the total training steps (the convention of `warmup_steps`). 0: no ramp."
            )
        },
    )
    ib_target_kl: float | None = field(
        default=None,
        metadata={
            "help": (
                "If set, a controller adapts alpha after every optimizer step to hold the KL (nats per position and "
                "latent dim) near this target, keeping the weight of ce_ib, alpha * beta, fixed. None: fixed alpha."
            )
        },
    )
    ib_kl_controller_rate: float = field(
        default=0.05,
        metadata={"help": "Step size of the KL controller: log(alpha) += rate * clip(log(KL / target), -1, 1)."},
    )

    def __post_init__(self):
        # SFTConfig turns bf16 on by default, also on GPUs without it; the default here is the dtype rule
        # (trl_ib.precision): bf16 mixed precision where the training device computes bf16 natively, a CPU included.
        # On a CPU, transformers takes bf16 only with use_cpu=True, so without it a CPU-only run stays float32.
        if self.bf16 is None and not self.fp16:
            accelerator = None if self.use_cpu else torch.accelerator.current_accelerator()
            if accelerator is None:  # training on the CPU
                self.bf16 = self.use_cpu and native_bf16("cpu")
            elif accelerator.type == "cuda":
                self.bf16 = native_bf16("cuda")
        super().__post_init__()
        for name in ("ib_alpha", "ib_beta"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name}={value!r}: must be None (take the adapter's) or a number >= 0.")
        if self.ib_warmup_steps < 0:
            raise ValueError(f"ib_warmup_steps={self.ib_warmup_steps!r}: must be >= 0 (steps, or a ratio in (0, 1)).")
        if self.ib_target_kl is not None and self.ib_target_kl <= 0:
            raise ValueError(f"ib_target_kl={self.ib_target_kl!r}: must be None (fixed alpha) or a number > 0.")
        if self.ib_kl_controller_rate <= 0:
            raise ValueError(f"ib_kl_controller_rate={self.ib_kl_controller_rate!r}: must be > 0.")
        # DDP's find_unused_parameters walks the autograd graph back from the model's outputs at the end of the forward.
        # The IB terms are not among those outputs (the adapter keeps them aside for the trainer), so DDP would mark the
        # IB encoders unused, then see their gradients arrive in backward and fail ("marked as ready twice"). Every
        # trainable parameter of an IB-LoRA adapter is used in every training step, so the search is not needed.
        if self.ddp_find_unused_parameters is None:
            self.ddp_find_unused_parameters = False
        elif self.ddp_find_unused_parameters:
            raise ValueError(
                "ddp_find_unused_parameters=True: DDP cannot see the IB terms among the model's outputs and would mark "
                "the IB encoders unused; leave it None or False."
            )
