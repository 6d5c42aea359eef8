"""IBLoraConfig: LoRA plus the variational information-bottleneck (IB) encoders of IB-FT."""

import textwrap
from dataclasses import dataclass, field, fields
from typing import Literal, Optional, Union

from peft import LoraConfig
from peft.utils.peft_types import PeftType

IBLORA = "IBLORA"  # the PeftType member registry.py adds, and every IB-LoRA adapter's `peft_type`
KL_MASKS = ("attention", "response", "all")
INPUT_NORMS = ("rms", "none")


@dataclass
class IBLoraConfig(LoraConfig):
    """
    Configuration of an IB-LoRA adapter: every [`~peft.LoraConfig`] option, plus one variational IB encoder per
    chosen decoder block (see `ib_layers`). During a training forward with labels the encoder reads the block's
    output hidden state h (batch, seq, hidden) and adds the penalty `ib_alpha * (KL + ib_beta * ce_ib)`; in eval
    mode, in `generate` and with adapters disabled it is not run at all, so inference is plain LoRA.

    The Args section below is written from the fields' help texts when this module loads.
    """

    ib_layers: Union[int, list[int], float] = field(
        default=0.625,
        metadata={
            "help": (
                "Decoder blocks whose output feeds an IB encoder. An int or list of ints: 0-based indices into the "
                "decoder block list (as `layers_to_transform`; negative counts from the end). A float d in (0, 1]: "
                "relative depth, the output of block round(d * num_blocks) counted from 1 (rounded half up), i.e. "
                "transformers' `hidden_states[round(d * num_blocks)]`. The default 0.625 is the paper's block 20 of "
                "32, i.e. `ib_layers=19`."
            )
        },
    )
    ib_dim: int = field(default=256, metadata={"help": "Dimension D of the bottleneck z (the paper's is 256)."})
    ib_alpha: float = field(
        default=0.2, metadata={"help": "Weight of the IB penalty: loss = ce + ib_alpha * (KL + ib_beta * ce_ib)."}
    )
    ib_beta: float = field(
        default=0.01, metadata={"help": "Weight of ce_ib, the cross-entropy of the labels predicted from z."}
    )
    ib_logvar_min: float = field(default=-4.0, metadata={"help": "Lower clamp of the encoder's log-variance."})
    ib_logvar_max: float = field(default=4.0, metadata={"help": "Upper clamp of the encoder's log-variance."})
    ib_kl_mask: Literal["attention", "response", "all"] = field(
        default="attention",
        metadata={
            "help": (
                "Positions the KL is averaged over: 'attention' = every real (non-padding) token; 'response' = the "
                "positions whose next-token label is supervised (labels != -100), the same positions as ce and "
                "ce_ib; 'all' = every position, padding included (what the official code does)."
            )
        },
    )
    ib_final_norm: bool = field(
        default=False,
        metadata={
            "help": (
                "False (the paper): the decoded h_ib goes straight into lm_head. True: through the model's final "
                "norm first, as the last hidden state does."
            )
        },
    )
    ib_input_norm: Literal["rms", "none"] = field(
        default="rms",
        metadata={
            "help": (
                "What the encoder reads at each position. 'rms': h / rms(h), parameter-free (rms(h) = sqrt(mean_i "
                "h_i^2 + 1e-6)), so the few positions where a pretrained LLM's residual stream is massive (the "
                "attention sink at position 0) cannot dominate the KL. 'none' (the paper's code): h as it is."
            )
        },
    )
    ib_blocks_path: Optional[str] = field(
        default=None,
        metadata={
            "help": (
                "Dotted path, from the model passed to get_peft_model, to the nn.ModuleList of decoder blocks (e.g. "
                "'model.layers'). None: found automatically for Llama/Mistral/Qwen2, GPT-2, GPT-NeoX, OPT and "
                "similar layouts."
            )
        },
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = PeftType.IBLORA
        self._validate_ib_fields()

    def _validate_ib_fields(self) -> None:
        layers = self.ib_layers
        if isinstance(layers, float):
            if not 0.0 < layers <= 1.0:
                raise ValueError(f"ib_layers={layers!r}: a float is a relative depth and must be in (0, 1].")
        elif isinstance(layers, (list, tuple)):
            if not layers or not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
                raise ValueError(f"ib_layers={layers!r}: a list must be a non-empty list of int block indices.")
            if len(set(layers)) != len(layers):
                raise ValueError(f"ib_layers={layers!r}: block indices must be unique.")
            self.ib_layers = list(layers)
        elif not isinstance(layers, int) or isinstance(layers, bool):
            raise ValueError(
                f"ib_layers={layers!r}: expected an int block index, a list of ints, or a float in (0, 1]."
            )
        if not isinstance(self.ib_dim, int) or isinstance(self.ib_dim, bool) or self.ib_dim < 1:
            raise ValueError(f"ib_dim={self.ib_dim!r}: must be an int >= 1.")
        for name in ("ib_alpha", "ib_beta"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}={value!r}: must be a number >= 0.")
        if not self.ib_logvar_min < self.ib_logvar_max:
            raise ValueError(
                f"ib_logvar_min={self.ib_logvar_min!r}, ib_logvar_max={self.ib_logvar_max!r}: "
                "ib_logvar_min must be smaller than ib_logvar_max."
            )
        if self.ib_kl_mask not in KL_MASKS:
            raise ValueError(f"ib_kl_mask={self.ib_kl_mask!r}: must be one of {', '.join(map(repr, KL_MASKS))}.")
        if self.ib_input_norm not in INPUT_NORMS:
            raise ValueError(
                f"ib_input_norm={self.ib_input_norm!r}: must be one of {', '.join(map(repr, INPUT_NORMS))}."
            )
        if not isinstance(self.ib_final_norm, bool):
            raise ValueError(f"ib_final_norm={self.ib_final_norm!r}: must be True or False.")

    def resolve_ib_layers(self, num_blocks: int) -> list[int]:
        """0-based, sorted, non-negative block indices for a model with `num_blocks` decoder blocks."""
        layers = self.ib_layers
        if isinstance(layers, float):
            position = int(layers * num_blocks + 0.5)  # round half up: hidden_states[position]
            if position < 1:
                raise ValueError(
                    f"ib_layers={layers!r} selects hidden_states[0] (the embeddings) of a model with {num_blocks} "
                    f"decoder blocks; use a relative depth >= {0.5 / num_blocks:.3g} or an int block index."
                )
            return [position - 1]
        indices = [layers] if isinstance(layers, int) else layers
        resolved = []
        for index in indices:
            if not -num_blocks <= index < num_blocks:
                raise ValueError(
                    f"ib_layers={layers!r}: block index {index} is out of range for a model with {num_blocks} "
                    f"decoder blocks (allowed: {-num_blocks} .. {num_blocks - 1})."
                )
            resolved.append(index % num_blocks)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"ib_layers={layers!r}: indices name the same block twice for {num_blocks} blocks.")
        return sorted(resolved)


IB_FIELDS = tuple(f for f in fields(IBLoraConfig) if f.name.startswith("ib_"))
"""The IB fields IBLoraConfig adds to LoraConfig, in declaration order (`ib-ft train` makes its flags from them)."""


def _args_block(ib_fields) -> str:
    """A docstring Args section, as PEFT's configs have, written from the fields' help texts."""
    entries = [
        textwrap.fill(
            f"{f.name} (defaults to `{f.default!r}`): {f.metadata['help']}",
            width=116,
            initial_indent=" " * 8,
            subsequent_indent=" " * 12,
            break_on_hyphens=False,
        )
        for f in ib_fields
    ]
    return "\n    Args:\n" + "\n".join(entries) + "\n"


IBLoraConfig.__doc__ = IBLoraConfig.__doc__.rstrip() + "\n" + _args_block(IB_FIELDS)
