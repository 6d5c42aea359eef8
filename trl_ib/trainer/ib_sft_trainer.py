"""IBSFTTrainer: TRL's SFTTrainer plus the IB-FT penalty, loss = ce + alpha * (KL + beta * ce_ib).

The IB terms are computed inside the model's forward by the IB-LoRA adapter (see peft_ib.model); this trainer
weights them (warmup, KL controller), normalizes them over the whole accumulated batch exactly as SFTTrainer
normalizes its cross-entropy, adds them to SFTTrainer's loss and logs them. The method: docs/METHOD.md.
"""

import copy
import inspect
import json
import math
from dataclasses import fields, replace
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import HPSearchBackend, get_last_checkpoint, number_of_arguments
from transformers.utils import is_triton_available, logging
from trl import SFTTrainer
from trl.kernels import ChunkedLogProbFunction
from trl.trainer.utils import add_fused_lm_head, get_config_model_id, maybe_gather_lm_head_ctx

from peft_ib import IBLoraConfig, find_ib_model

from .distributed import check_distributed_run
from .ib_sft_config import IBSFTConfig
from .kl_controller import KLController
from .search_backends import (
    check_some_trial_completed,
    load_study,
    metric_objective,
    optuna_study_kwargs,
    resolve_backend,
)
from .search_space import DEFAULT_IB_SPACE, optuna_space, ray_space, split_params

CONTROLLER_FILE = "ib_kl_controller.json"
# The first training batch warns when the IB penalty at full alpha exceeds this multiple of the task loss.
PENALTY_WARNING_RATIO = 10.0

logger = logging.get_logger(__name__)

# The per-token outputs of the fused LM head SFTTrainer.__init__ adds to its model (a trial's new base gets the same).
FUSED_OUTPUTS = ("log_probs", "entropy", "is_top1")
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
# SFTTrainer's, with Trainer's `model_init` (what `hyperparameter_search` calls for each trial's base model) added:
# `model` may then be left out.
IB_SFT_TRAINER_SIGNATURE = SFT_TRAINER_SIGNATURE.replace(
    parameters=[
        *(p.replace(default=None) if p.name == "model" else p for p in SFT_TRAINER_SIGNATURE.parameters.values()),
        inspect.Parameter("model_init", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
)


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

    Beyond SFTTrainer: `model_init` (keyword, as in transformers' Trainer) builds the base model instead of `model`,
    and `hyperparameter_search` searches IBLoraConfig and IBSFTConfig fields, a fresh adapter per trial
    (docs/TUNING.md).
    """

    _tag_names = ["trl", "sft", "ib-lora", "information-bottleneck"]
    _name = "IB-SFT"

    def __init__(self, *positional, **keywords):
        # Bound to SFTTrainer's own signature: a positional call means what it means for SFTTrainer.
        call = IB_SFT_TRAINER_SIGNATURE.bind(self, *positional, **keywords)
        call.apply_defaults()
        model_init = call.arguments.pop("model_init")
        if call.arguments["model"] is None:  # Trainer's rule: a model, or a model_init that builds one
            if model_init is None:
                raise ValueError("IBSFTTrainer needs a model (a Hub id, a local path or a model) or a model_init.")
            call.arguments["model"] = model_init() if number_of_arguments(model_init) == 0 else model_init(None)
        model = call.arguments["model"]
        call.arguments["args"] = as_ib_sft_config(call.arguments["args"], model)
        super().__init__(*call.args[1:], **call.kwargs)  # SFTTrainer's own argument checks come first
        check_has_ib_adapter(self.model)
        self.model_init = model_init  # as in Trainer: when set, every `train()` starts from a model it builds
        self._ib_bind(self.model)
        # Each trial's adapter is this one with the trial's values (Trainer's `peft_config` may be None).
        self._ib_adapter_config = copy.deepcopy(self._ib_config)
        self.add_callback(_StepEnd(self))
        check_distributed_run(self)

    def _ib_bind(self, model) -> None:
        """Read the IB-LoRA adapter of `model` and the IB fields of `args` into this trainer's state: at `__init__`,
        and for each model a `model_init` or a hyperparameter-search trial builds."""
        args = self.args
        self._ib_model = find_ib_model(model)
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
        if trl_kernel_is_fast(self.accelerator.device):
            self._ib_model.fused_target_log_probs = chunked_target_log_probs

    __init__.__signature__ = IB_SFT_TRAINER_SIGNATURE

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

        # TRL writes it with every checkpoint; a search trial's goes to the trial's folder, beside its adapter.
        output_dir = self._get_output_dir(getattr(self, "_trial", None))
        trainer_card(self, model_name=model_name, datasets=dataset_name, tags=tags, output_dir=output_dir)

    # ---- checkpoints: the controller's state travels with them -----------------------------------------------

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self._ib_controller is not None and self.args.should_save:
            checkpoint = Path(self._get_output_dir(trial)) / f"checkpoint-{self.state.global_step}"
            (checkpoint / CONTROLLER_FILE).write_text(json.dumps(self._ib_controller.state_dict()))

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
        if resume_from_checkpoint and self._ib_controller is not None:
            state_file = Path(resume_from_checkpoint) / CONTROLLER_FILE
            if state_file.exists():
                self._ib_controller = KLController(**json.loads(state_file.read_text()))
        output = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        if trial is not None and self.hp_search_backend is not None:
            # Each trial's adapter and log, in the folder BestRun.run_id names (`<output_dir>/run-<run_id>`).
            run_dir = self._get_output_dir(trial)
            self.save_model(run_dir)
            if self.args.should_save:
                self.state.save_to_json(str(Path(run_dir) / "trainer_state.json"))
        return output

    # ---- hyperparameter search: a fresh base model and IB-LoRA adapter per trial -------------------------------

    def hyperparameter_search(
        self,
        hp_space=None,
        compute_objective=None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: str | HPSearchBackend | None = None,
        hp_name=None,
        **kwargs,
    ):
        """
        [`~transformers.Trainer.hyperparameter_search`] for IB-FT: every trial trains a fresh IB-LoRA adapter on a
        fresh base model, so fields of IBLoraConfig (`ib_alpha`, `ib_beta`, `ib_dim`, `ib_layers`, `r`, ...) are
        searchable beside those of IBSFTConfig (`learning_rate`, `ib_target_kl`, ...).

        The base of each trial is the trainer's own base model with the previous adapter unloaded (IB-LoRA
        training leaves base weights untouched), or what `model_init` returns when the trainer was given one: Ray
        Tune, DeepSpeed ZeRO-3, FSDP, `bf16_full_eval` / `fp16_full_eval` and `modules_to_save` need a `model_init`
        (the first three cannot hand the trainer's model to a trial, the others change base weights). Each trial's
        final adapter is saved to `<output_dir>/run-<trial>`.

        Args:
            hp_space: a search space in the form of `trl_ib.trainer.search_space` (a dict, also what a YAML file
                gives), or transformers' callable. Default: `DEFAULT_IB_SPACE` (ib_alpha, ib_beta, ib_layers, ib_dim).
            compute_objective: metrics -> objective. Default: `eval_ce`, the task loss on `eval_dataset`;
                `metric_objective("eval_pass@1^(1)")` reads Pass@1 from a `PassAtKMCallback(every_n_steps=None)`.
            n_trials: trials in the study, those a stored study already finished included (Optuna).
            direction: "minimize" (the default, for eval_ce) or "maximize" (for Pass@k^(m)).
            backend: "optuna" (the default; `pip install "ib-ft[tune]"`) or "ray" (`pip install "ib-ft[ray]"`).
            hp_name: trial -> the name of its folder under `output_dir`.
            kwargs: Optuna: `storage` (a URL such as "sqlite:///study.db": a search started again with it continues
                the stored study), `study_name` ("ib-ft"), `heartbeat_interval` (60 s), `sampler` (TPE seeded with
                `args.seed`), `pruner` (Optuna's median pruner, which acts on the evaluations of `eval_strategy`),
                `timeout`, `n_jobs`, `gc_after_trial`, `catch`. Ray: `ray.tune.run`'s arguments.

        Returns:
            transformers' `BestRun` (run_id, objective, hyperparameters, run_summary: the Optuna study or Ray Tune's
            ExperimentAnalysis, which `trl_ib.trainer.search_backends.trial_rows` turns into one row per trial).
        """
        backend = resolve_backend(backend)
        if self.model_init is None:
            self._check_base_reusable(backend)
            self.model_init = self._unloaded_base
        space = DEFAULT_IB_SPACE if hp_space is None else hp_space
        if isinstance(space, dict):
            space = (optuna_space if backend == HPSearchBackend.OPTUNA else ray_space)(space)
        compute_objective = compute_objective or metric_objective("eval_ce")
        search = (space, compute_objective)
        if backend == HPSearchBackend.RAY:
            self._ib_model = None  # travels to each trial without the model, as transformers sends the trainer
            return super().hyperparameter_search(*search, n_trials, direction, backend, hp_name, **kwargs)
        study_kwargs, n_left = optuna_study_kwargs(kwargs, n_trials, self.args.seed)
        try:
            best = super().hyperparameter_search(*search, n_left, direction, backend, hp_name, **study_kwargs)
        except ValueError:
            check_some_trial_completed(load_study(study_kwargs))
            raise
        return best if best is None else best._replace(run_summary=load_study(study_kwargs))

    def _check_base_reusable(self, backend: HPSearchBackend) -> None:
        """Refuse, naming the cause, a search whose trials cannot start from the trainer's own base model."""
        config = self._ib_adapter_config
        causes = {
            "backend='ray' sends the trainer to each trial without its model": backend == HPSearchBackend.RAY,
            "DeepSpeed ZeRO-3 shards the base model in place": self._is_zero3(),
            "FSDP shards the base model in place": self.is_fsdp_enabled,
            "bf16_full_eval / fp16_full_eval cast the base model's weights": self.args.bf16_full_eval
            or self.args.fp16_full_eval,
            "modules_to_save / trainable_token_indices train base modules that unloading keeps": bool(
                config.modules_to_save or config.trainable_token_indices
            ),
        }
        for cause, applies in causes.items():
            if applies:
                raise ValueError(
                    f"hyperparameter_search: {cause}, so each trial needs its own base model: give IBSFTTrainer "
                    "model_init=..., a function returning the base model (e.g. lambda: "
                    "AutoModelForCausalLM.from_pretrained(model_id)); each trial's IBLoraConfig is applied to it."
                )

    def _is_zero3(self) -> bool:
        return self.is_deepspeed_enabled and self.accelerator.state.deepspeed_plugin.zero_stage == 3

    def _unloaded_base(self):
        """The base model under the current IB-LoRA adapter, that adapter unloaded (removed, not merged)."""
        return self._ib_model.unload()

    def _trial_params(self, trial) -> dict:
        """{field: value} of a trial: Optuna's drawn by `hp_space`, Ray Tune's and W&B's given as a dict."""
        if self.hp_search_backend == HPSearchBackend.OPTUNA:
            return self.hp_space(trial)
        return {key: value for key, value in trial.items() if key != "wandb"}

    def call_model_init(self, trial=None):
        """`model_init`'s model with an IB-LoRA adapter: the trainer's IBLoraConfig, with the trial's values."""
        model = super().call_model_init(trial)
        adapter_values = {}
        if trial is not None and self.hp_search_backend is not None:
            adapter_values = split_params(self._trial_params(trial))[1]
        if self.model_init != self._unloaded_base:  # a new base: SFTTrainer's fused LM head, as at its __init__
            add_fused_lm_head(model.get_base_model() if isinstance(model, PeftModel) else model, outputs=FUSED_OUTPUTS)
        if not isinstance(model, PeftModel):
            # As SFTTrainer applies `peft_config`: adapters in the base's dtype under ZeRO-3, input grads for
            # gradient checkpointing.
            config = replace(copy.deepcopy(self._ib_adapter_config), **adapter_values)
            set_seed(self.args.seed)  # the adapter's initialization, whatever building the base drew
            model = get_peft_model(model, config, autocast_adapter_dtype=not self._is_zero3())
            if self.args.gradient_checkpointing:
                model.enable_input_require_grads()
        elif adapter_values:
            raise ValueError(
                f"The search space sets adapter fields ({', '.join(adapter_values)}), but model_init returned a "
                "PeftModel, whose adapter is fixed: return the base model and each trial's IBLoraConfig is applied."
            )
        check_has_ib_adapter(model)
        self._ib_bind(model)
        return model

    def _hp_search_setup(self, trial) -> None:
        """Trainer's setup of a trial with the IBSFTConfig values only (the IBLoraConfig ones went to
        `call_model_init`), then the IB state read again from the trial's args."""
        if self.hp_search_backend is None or trial is None:
            return super()._hp_search_setup(trial)
        training_values = split_params(self._trial_params(trial))[0]
        hp_space, self.hp_space = self.hp_space, lambda _trial: training_values
        try:
            super()._hp_search_setup(trial if self.hp_search_backend == HPSearchBackend.OPTUNA else training_values)
        finally:
            self.hp_space = hp_space
        self._ib_bind(self.model)


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
