"""IBSFTTrainer: TRL's SFTTrainer plus the IB-FT penalty, loss = ce + alpha * (KL + beta * ce_ib).

The IB terms are computed inside the model's forward by the IB-LoRA adapter (see peft_ib.model); this trainer
weights them (warmup, KL controller), normalizes them over the whole accumulated batch exactly as SFTTrainer
normalizes its cross-entropy, adds them to SFTTrainer's loss and logs them. The method: docs/METHOD.md.
"""

import inspect
import json
import math
from dataclasses import fields
from pathlib import Path

import torch
from peft import PeftModel
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import is_triton_available, logging
from trl import SFTTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import get_config_model_id, maybe_gather_lm_head_ctx

from peft_ib import IBLoraConfig, find_ib_model

from .distributed import check_distributed_run
from .ib_sft_config import IBSFTConfig
from .kl_controller import KLController

CONTROLLER_FILE = "ib_kl_controller.json"
# The first training batch warns when the IB penalty at full alpha exceeds this multiple of the task loss.
PENALTY_WARNING_RATIO = 10.0

logger = logging.get_logger(__name__)

# Vocabulary tile of TRL's chunked log-prob kernel for ce_ib (the width TRL's fused LM head uses).
CE_VOCAB_CHUNK = 32768


def as_ib_sft_config(args: TrainingArguments | None, model) -> IBSFTConfig:
    """
    SFTTrainer's rule for its `args`, with IBSFTConfig in SFTConfig's place: None gives the defaults with an output
    directory named after the model; a TrainingArguments or an SFTConfig gives an IBSFTConfig with the same values
    and the IB fields at their defaults.
    """
    if isinstance(args, IBSFTConfig):
        return args
    if args is None:
        name = model if isinstance(model, str) else get_config_model_id(model.config)
        return IBSFTConfig(f"{name.split('/')[-1]}-IB-SFT")
    if isinstance(args, TrainingArguments):
        # Field by field, not by `to_dict`, which masks every `*_token` value (SFTConfig's eos_token, pad_token).
        return IBSFTConfig(**{f.name: getattr(args, f.name) for f in fields(args) if f.init})
    raise TypeError(
        f"IBSFTTrainer got args of type {type(args).__name__}: pass an IBSFTConfig, an SFTConfig or a "
        "TrainingArguments."
    )


def chunked_target_log_probs(lm_head, h_ib: torch.Tensor, targets: torch.Tensor, softcap, logit_scale) -> torch.Tensor:
    """(S,) log p(target | h_ib) under `lm_head` for h_ib (S, H), by TRL's ChunkedLogProbFunction: no (S, vocab)
    logits, and the head is gathered under ZeRO-3 as TRL's fused LM head gathers it."""
    with maybe_gather_lm_head_ctx(lm_head.weight, lm_head.bias):
        return ChunkedLogProbFunction.apply(
            h_ib, lm_head.weight, lm_head.bias, targets, 1.0, CE_VOCAB_CHUNK, softcap, logit_scale, ()
        )[0]


def trl_kernel_is_fast(device: torch.device) -> bool:
    """Where TRL's kernel folds its tiles in Triton (CUDA, XPU), TRL's own dispatch rule; elsewhere its torch fallback
    is slower than the row tiles of cross_entropy that peft_ib uses by default (benchmarks/README.md)."""
    return is_triton_available() and device.type in ("cuda", "xpu")


SFT_TRAINER_SIGNATURE = inspect.signature(SFTTrainer.__init__)


class _StepEnd(TrainerCallback):
    def __init__(self, trainer: "IBSFTTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._ib_step_end()


class IBSFTTrainer(SFTTrainer):
    """
    [`~trl.SFTTrainer`] for IB-LoRA adapters: SFTTrainer's arguments, in SFTTrainer's order. Pass
    `peft_config=IBLoraConfig(...)` or a model already wrapped with one; every SFTTrainer option keeps working. `args`
    may be an IBSFTConfig, or an SFTConfig / TrainingArguments, converted with the IB fields at their defaults.
    Logs `ce` (task cross-entropy), `ib_kl`, `ib_ce`, `ib_alpha`, `ib_penalty` in train and eval; `loss` is the total.
    `eval_ce` is the number to compare with a plain SFTTrainer's `eval_loss`.
    """

    _tag_names = ["trl", "sft", "ib-lora", "information-bottleneck"]
    _name = "IB-SFT"

    def __init__(self, *positional, **keywords):
        # Bound to SFTTrainer's own signature: a positional call means what it means for SFTTrainer.
        call = SFT_TRAINER_SIGNATURE.bind(self, *positional, **keywords)
        call.apply_defaults()
        model = call.arguments["model"]
        call.arguments["args"] = args = as_ib_sft_config(call.arguments["args"], model)
        super().__init__(*call.args[1:], **call.kwargs)  # SFTTrainer's own argument checks come first
        check_has_ib_adapter(self.model)
        self._ib_model = find_ib_model(self.model)
        self._ib_alpha = self._ib_config.ib_alpha if args.ib_alpha is None else args.ib_alpha
        self._ib_beta = self._ib_config.ib_beta if args.ib_beta is None else args.ib_beta
        self._ib_controller = None
        if args.ib_target_kl is not None:
            if self._ib_alpha <= 0:
                raise ValueError(f"ib_target_kl needs a starting alpha > 0, got ib_alpha={self._ib_alpha!r}.")
            self._ib_controller = KLController(
                self._ib_alpha, self._ib_alpha * self._ib_beta, args.ib_target_kl, args.ib_kl_controller_rate
            )
        self._ib_num_kl_positions = None  # KL positions of the accumulated batch, set with num_items_in_batch
        self._ib_step_kl = torch.zeros(2, dtype=torch.float64)  # (KL sum, weight) over this step's micro-batches
        self._ib_scale_checked = False  # the first training batch compares the penalty with ce (a warning)
        self.add_callback(_StepEnd(self))
        check_distributed_run(self)
        if trl_kernel_is_fast(self.accelerator.device):
            self._ib_model.fused_target_log_probs = chunked_target_log_probs

    __init__.__signature__ = SFT_TRAINER_SIGNATURE

    @property
    def _ib_config(self) -> IBLoraConfig:
        """The IBLoraConfig of the adapter being trained."""
        return self._ib_model.peft_config[self._ib_model._active_ib_adapter()]

    @property
    def _token_scale(self) -> int:
        """
        SFTTrainer multiplies losses normalized over every process's tokens by the number of distinct batches (DDP
        averages): the process count over the tensor-parallel size, since tensor-parallel ranks share one batch.
        """
        return self.accelerator.num_processes // self.get_tp_size() if self.args.average_tokens_across_devices else 1

    # ---- the weights of the penalty -------------------------------------------------------------------------

    def ib_alpha_beta(self) -> tuple[float, float]:
        """The (alpha, beta) in force at the current optimizer step, warmup and controller applied."""
        alpha, beta = self._ib_alpha, self._ib_beta
        if self._ib_controller is not None:
            alpha, beta = self._ib_controller.alpha, self._ib_controller.beta
        warmup = self._ib_warmup_steps()
        if warmup and self.state.global_step < warmup:
            alpha *= self.state.global_step / warmup
        return alpha, beta

    def _ib_warmup_steps(self) -> int:
        steps = self.args.ib_warmup_steps
        return int(steps) if steps >= 1 else math.ceil(self.state.max_steps * steps)

    def _ib_step_end(self) -> None:
        """After each optimizer step: feed the step's mean KL (over micro-batches and processes) to the controller."""
        step_kl = self.accelerator.reduce(self._ib_step_kl.to(self.accelerator.device), reduction="sum")
        self._ib_step_kl.zero_()
        past_warmup = self.state.global_step >= self._ib_warmup_steps()
        if self._ib_controller is not None and past_warmup and step_kl[1] > 0:
            self._ib_controller.update((step_kl[0] / step_kl[1]).item())

    # ---- loss --------------------------------------------------------------------------------------------------

    def _get_num_items_in_batch(self, batch_samples, device):
        """SFTTrainer's count of supervised tokens, plus the count of KL positions over the same batches."""
        num_items = super()._get_num_items_in_batch(batch_samples, device)
        mask_mode = self._ib_config.ib_kl_mask
        if num_items is None or mask_mode == "response":
            self._ib_num_kl_positions = num_items
            return num_items
        count = sum(
            b["attention_mask"].sum() if mask_mode == "attention" and "attention_mask" in b else b["input_ids"].numel()
            for b in batch_samples
        )
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        # As Trainer divides num_items_in_batch: ranks that share one batch counted its positions once each.
        self._ib_num_kl_positions = count / (self.get_tp_size() * self.get_cp_size() * self.get_sp_size())
        return num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        # SFTTrainer may run more than one forward here (the logits for `compute_metrics`, or a loss forward without
        # labels for `compute_loss_func`): the IB terms come from the first, with this batch's labels.
        with self._ib_model.collect_ib_terms(inputs.get("labels"), inputs.get("shift_labels")) as collected:
            result = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        ce, outputs = result if return_outputs else (result, None)
        terms = collected.terms
        if terms is None:
            raise RuntimeError(
                f"IBSFTTrainer: the {mode} forward computed no IB terms: the IB-LoRA adapter is disabled or not "
                f"active (active adapters: {self._ib_model.active_adapters}), or the batch has no labels."
            )
        alpha, beta = self.ib_alpha_beta()
        if num_items_in_batch is not None:
            # Normalized over the accumulated batch (and over processes) like SFTTrainer's CE, which DDP then averages.
            kl = terms.kl(self._ib_num_kl_positions) * self._token_scale
            ce_ib = terms.ce_ib(num_items_in_batch) * self._token_scale
        else:
            kl, ce_ib = terms.kl(), terms.ce_ib()
        penalty = alpha * (kl.mean() + beta * ce_ib.mean())
        loss = ce + penalty

        # Metrics: per-micro-batch means, gathered across processes.
        local = torch.stack([terms.kl().mean(), terms.ce_ib().mean()]).detach()
        kl_mean, ce_ib_mean = self.accelerator.gather_for_metrics(local.unsqueeze(0)).mean(0).tolist()
        if (
            mode == "train"
        ):  # the controller's signal: this process's KL, weighted by its positions, summed at step end
            weight = terms.num_kl_positions.double().cpu()
            self._ib_step_kl += torch.stack([local[0].double().cpu() * weight, weight])
        ce_mean = self._micro_batch_ce(ce, inputs, num_items_in_batch)
        for key, value in (
            ("ce", ce_mean),
            ("ib_kl", kl_mean),
            ("ib_ce", ce_ib_mean),
            ("ib_alpha", alpha),
            ("ib_penalty", alpha * (kl_mean + beta * ce_ib_mean)),
        ):
            self._metrics[mode][key].append(value)
        if mode == "train" and not self._ib_scale_checked:
            self._ib_scale_checked = True
            self._warn_if_penalty_swamps_ce(ce_mean, kl_mean, ce_ib_mean)
        return (loss, outputs) if return_outputs else loss

    def _warn_if_penalty_swamps_ce(self, ce: float, kl: float, ce_ib: float) -> None:
        """A warning when alpha * (KL + beta * ce_ib), at alpha's full value, exceeds PENALTY_WARNING_RATIO x ce."""
        penalty = self._ib_alpha * (kl + self._ib_beta * ce_ib)
        if not penalty > PENALTY_WARNING_RATIO * ce:
            return
        cause = (
            "IBLoraConfig(ib_input_norm='none') feeds the encoder the raw hidden state, whose massive activations "
            "(the attention sink at position 0 of pretrained LLMs) dominate the KL; ib_input_norm='rms' bounds it. "
            if self._ib_config.ib_input_norm == "none"
            else ""
        )
        logger.warning(
            f"The IB penalty alpha * (KL + beta * ce_ib) = {penalty:.4g} is {penalty / max(ce, 1e-12):.0f}x the task "
            f"loss ce = {ce:.4g} at the first step (ib_kl {kl:.4g} nats per position and dim, ib_ce {ce_ib:.4g}, "
            f"alpha {self._ib_alpha}, beta {self._ib_beta}): the IB terms will drive training. {cause}To weaken "
            "them: a smaller ib_alpha, ib_warmup_steps (ramp alpha) or ib_target_kl (hold the KL at a target)."
        )

    def _micro_batch_ce(self, ce: torch.Tensor, inputs: dict, num_items_in_batch) -> float:
        """Per-token task CE of this micro-batch, undoing SFTTrainer's accumulated-batch normalization; gathered."""
        if num_items_in_batch is not None:
            labels = inputs["shift_labels"] if "shift_labels" in inputs else inputs["labels"][:, 1:]
            ce = ce.detach() * num_items_in_batch / (self._token_scale * (labels != -100).sum().clamp(min=1))
        return self.accelerator.gather_for_metrics(ce.detach().reshape(1)).mean().item()

    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        """Our IB-LoRA card (hub_cards) with the training curves, instead of TRL's generic one."""
        if not self.is_world_process_zero():
            return
        from hub_cards import trainer_card

        trainer_card(self, model_name=model_name, datasets=dataset_name, tags=tags)

    # ---- checkpoints: the controller's state travels with them -----------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._ib_controller is not None and self.args.should_save:
            checkpoint = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            (checkpoint / CONTROLLER_FILE).write_text(json.dumps(self._ib_controller.state_dict()))

    def train(self, resume_from_checkpoint=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint and self._ib_controller is not None:
            state_file = Path(resume_from_checkpoint) / CONTROLLER_FILE
            if state_file.exists():
                self._ib_controller = KLController(**json.loads(state_file.read_text()))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


def check_has_ib_adapter(model) -> None:
    """Refuse a model with no IB-LoRA adapter (after SFTTrainer applied any `peft_config`), naming what it has."""
    if any(isinstance(c, IBLoraConfig) for c in getattr(model, "peft_config", {}).values()):
        return
    if isinstance(model, PeftModel):
        types = ", ".join(
            f"{name!r}: {getattr(c.peft_type, 'value', c.peft_type)}" for name, c in model.peft_config.items()
        )
        got = f"a PeftModel whose adapters are {{{types}}}"
    else:
        got = f"a {type(model).__name__} without a PEFT adapter"
    raise ValueError(
        f"IBSFTTrainer trains IB-LoRA adapters only and got {got}. Pass peft_config=IBLoraConfig(...) (from "
        "peft_ib), or a model wrapped with get_peft_model(model, IBLoraConfig(...)); for plain SFT or other PEFT "
        "methods use trl.SFTTrainer."
    )
