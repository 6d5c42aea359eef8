"""IBSFTTrainer: TRL's SFTTrainer plus the IB-FT penalty, loss = ce + alpha * (KL + beta * ce_ib).

The IB terms are computed inside the model's forward by the IB-LoRA adapter (see peft_ib.model); this trainer
weights them (warmup, KL controller), normalizes them over the whole accumulated batch exactly as SFTTrainer
normalizes its cross-entropy, adds them to SFTTrainer's loss and logs them.
"""

import json
import math
from pathlib import Path

import torch
from peft import PeftModel
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer

from peft_ib import IBLoraConfig, find_ib_model, ib_terms

from .ib_sft_config import IBSFTConfig
from .kl_controller import KLController

CONTROLLER_FILE = "ib_kl_controller.json"
INSTRUCTION_COLUMNS = ("Instruction", "Response")


def to_prompt_completion(dataset, prompt_column: str = "Instruction", completion_column: str = "Response"):
    """The paper's format: prompt = instruction + "\\n", completion = response, so the loss is on the response."""
    missing = [c for c in (prompt_column, completion_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Dataset has no column(s) {missing}; its columns are {dataset.column_names}.")
    return dataset.map(
        lambda row: {"prompt": row[prompt_column] + "\n", "completion": row[completion_column]},
        remove_columns=dataset.column_names,
    )


def _map_instruction_columns(dataset):
    """Datasets with the paper's Instruction/Response columns become prompt/completion datasets."""
    if dataset is None or not all(c in (dataset.column_names or []) for c in INSTRUCTION_COLUMNS):
        return dataset
    return to_prompt_completion(dataset, *INSTRUCTION_COLUMNS)


class _StepEnd(TrainerCallback):
    def __init__(self, trainer: "IBSFTTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._ib_step_end()


class IBSFTTrainer(SFTTrainer):
    """
    [`~trl.SFTTrainer`] for IB-LoRA adapters. Pass `peft_config=IBLoraConfig(...)` or a model already wrapped with
    one; every SFTTrainer option keeps working. Logs `ce` (task cross-entropy), `ib_kl`, `ib_ce`, `ib_alpha`,
    `ib_penalty` in train and eval; `loss` is the total. `eval_ce` is the number to compare with a plain SFTTrainer's
    `eval_loss`.
    """

    _tag_names = ["trl", "sft", "ib-lora", "information-bottleneck"]
    _name = "IB-SFT"

    def __init__(self, model, args: IBSFTConfig | None = None, train_dataset=None, eval_dataset=None, peft_config=None,
                 **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = IBSFTConfig(f"{str(name).split('/')[-1]}-IB-SFT")
        elif not isinstance(args, IBSFTConfig):
            raise TypeError(f"IBSFTTrainer needs args=IBSFTConfig(...), got {type(args).__name__}.")
        _check_has_ib_adapter(model, peft_config)
        if isinstance(eval_dataset, dict):
            eval_dataset = {name: _map_instruction_columns(ds) for name, ds in eval_dataset.items()}
        else:
            eval_dataset = _map_instruction_columns(eval_dataset)
        super().__init__(model, args=args, train_dataset=_map_instruction_columns(train_dataset),
                         eval_dataset=eval_dataset, peft_config=peft_config, **kwargs)
        self._ib_model = find_ib_model(self.model)
        self._ib_alpha = self._ib_config.ib_alpha if args.ib_alpha is None else args.ib_alpha
        self._ib_beta = self._ib_config.ib_beta if args.ib_beta is None else args.ib_beta
        self._ib_controller = None
        if args.ib_target_kl is not None:
            if self._ib_alpha <= 0:
                raise ValueError(f"ib_target_kl needs a starting alpha > 0, got ib_alpha={self._ib_alpha!r}.")
            self._ib_controller = KLController(self._ib_alpha, self._ib_alpha * self._ib_beta, args.ib_target_kl,
                                               args.ib_kl_controller_rate)
        self._ib_num_kl_positions = None  # KL positions of the accumulated batch, set with num_items_in_batch
        self._ib_step_kl = torch.zeros(2, dtype=torch.float64)  # (KL sum, weight) over this step's micro-batches
        self.add_callback(_StepEnd(self))

    @property
    def _ib_config(self) -> IBLoraConfig:
        """The IBLoraConfig of the adapter being trained."""
        return self._ib_model.peft_config[self._ib_model._active_ib_adapter()]

    @property
    def _token_scale(self) -> int:
        """SFTTrainer multiplies losses normalized over every process's tokens by the process count (DDP averages)."""
        return self.accelerator.num_processes if self.args.average_tokens_across_devices else 1

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
        self._ib_num_kl_positions = count
        return num_items

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        with self._ib_model.ib_terms_in_eval():
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        ce, outputs = result if return_outputs else (result, None)
        terms = ib_terms(self.model)
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
        if mode == "train":  # the controller's signal: this process's KL, weighted by its positions, summed at step end
            weight = terms.num_kl_positions.double().cpu()
            self._ib_step_kl += torch.stack([local[0].double().cpu() * weight, weight])
        ce_mean = self._micro_batch_ce(ce, inputs, num_items_in_batch)
        for key, value in (("ce", ce_mean), ("ib_kl", kl_mean), ("ib_ce", ce_ib_mean), ("ib_alpha", alpha),
                           ("ib_penalty", alpha * (kl_mean + beta * ce_ib_mean))):
            self._metrics[mode][key].append(value)
        return (loss, outputs) if return_outputs else loss

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


def _check_has_ib_adapter(model, peft_config) -> None:
    """Raise early, with the fix, when there is no IB-LoRA adapter to train."""
    hint = "Pass peft_config=IBLoraConfig(...) (from peft_ib), or a model wrapped with get_peft_model(model, IBLoraConfig(...))."
    if peft_config is not None:
        if not isinstance(peft_config, IBLoraConfig):
            raise ValueError(f"IBSFTTrainer got peft_config of type {type(peft_config).__name__}. {hint}")
        return
    if not isinstance(model, PeftModel) or not any(isinstance(c, IBLoraConfig) for c in model.peft_config.values()):
        raise ValueError(f"IBSFTTrainer needs a model with an IB-LoRA adapter, got {type(model).__name__}. {hint}")
