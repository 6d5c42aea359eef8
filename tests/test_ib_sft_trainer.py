"""IBSFTTrainer / IBSFTConfig on tiny models: the loss it optimizes, its normalization, its schedules, checkpoints."""

import json
import math
import statistics
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from torch import nn
from transformers import TrainerCallback, TrainingArguments
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

import peft_ib.model as peft_ib_model
import trl_ib.trainer.ib_sft_trainer as ib_sft_trainer
from peft_ib import IBLoraConfig, find_ib_model, ib_terms
from peft_ib.layer import kl_to_standard_normal
from tiny_models import tiny_llama, train_tokenizer
from trl_ib import IBSFTConfig, IBSFTTrainer, to_prompt_completion
from trl_ib.trainer.ib_sft_trainer import CONTROLLER_FILE, chunked_target_log_probs, trl_kernel_is_fast

IB_BLOCK = 1  # of the tiny Llama's 4 blocks

# float32 (bf16=False): these tests compare against float32 recomputations; test_precision.py covers the bf16 default
BASE_ARGS = dict(
    report_to="none",
    use_cpu=True,
    bf16=False,
    dataloader_num_workers=0,
    logging_steps=1,
    save_strategy="no",
    seed=0,
    per_device_train_batch_size=2,
    max_steps=2,
    learning_rate=1e-2,
    lr_scheduler_type="constant",
    disable_tqdm=True,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def code_dataset(n: int) -> Dataset:
    """Prompt/completion pairs whose completions have 2, 3 or 4 lines: batches of different lengths."""
    return Dataset.from_dict(
        {
            "prompt": [f"Write f{i}\n" for i in range(n)],
            "completion": [f"def f{i}(a, b):\n" + "    a = a + b\n" * (i % 3) + "    return a\n" for i in range(n)],
        }
    )


def ib_config(**overrides) -> IBLoraConfig:
    return IBLoraConfig(
        **{"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "ib_layers": IB_BLOCK, "ib_dim": 8, **overrides}
    )


def make_trainer(
    tmp_path,
    tokenizer,
    train_dataset=None,
    peft_config=None,
    model=None,
    trainer_cls=IBSFTTrainer,
    eval_dataset=None,
    callbacks=None,
    compute_metrics=None,
    **overrides,
):
    args = IBSFTConfig(**{**BASE_ARGS, "output_dir": str(tmp_path), **overrides})
    return trainer_cls(
        tiny_llama() if model is None else model,
        args=args,
        train_dataset=code_dataset(8) if train_dataset is None else train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=ib_config() if peft_config is None and model is None else peft_config,
        callbacks=callbacks,
        compute_metrics=compute_metrics,
    )


def train_logs(trainer) -> list[dict]:
    return [log for log in trainer.state.log_history if "loss" in log]


def encoders(trainer):
    return find_ib_model(trainer.model).lora_ib_encoders["default"]


def trainable_params(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


class RecordingTrainer(IBSFTTrainer):
    """Records, for every training micro-batch: its inputs, the RNG state and the parameters before the forward."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.recorded = getattr(self, "recorded", [])
            self.recorded.append(
                {
                    "inputs": {k: v.clone() for k, v in inputs.items() if torch.is_tensor(v)},
                    "rng": torch.get_rng_state(),
                    "params": trainable_params(model),
                }
            )
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class EncoderGrads(TrainerCallback):
    """Norm of the gradient of every IB encoder parameter, just before each optimizer step."""

    def __init__(self):
        self.norms: list[dict[str, float]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms.append(
            {
                name: 0.0 if p.grad is None else p.grad.norm().item()
                for name, p in find_ib_model(model).lora_ib_encoders.named_parameters()
            }
        )


# ---- the loss ---------------------------------------------------------------------------------------------------


def test_logged_total_equals_independent_recomputation(tmp_path, tokenizer):
    alpha, beta = 0.5, 0.4
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        trainer_cls=RecordingTrainer,
        per_device_train_batch_size=3,
        max_steps=1,
        ib_alpha=alpha,
        ib_beta=beta,
    )
    trainer.train()
    (log,) = train_logs(trainer)
    (record,) = trainer.recorded
    inputs = record["inputs"]
    assert len(set(inputs["attention_mask"].sum(1).tolist())) > 1, "the batch should mix lengths (padding)"

    # Recompute from scratch: same parameters, same batch, same RNG state, full logits, the formulas of
    # docs/METHOD.md ("The objective").
    model = trainer.model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in record["params"]:
                p.copy_(record["params"][name])
    captured = {}
    block = model.base_model.model.model.layers[IB_BLOCK]
    handle = block.register_forward_hook(
        lambda m, a, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    model.train()
    torch.set_rng_state(record["rng"])
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits  # (B, N, V)
        handle.remove()
        labels = inputs["labels"]
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)

        encoder = encoders(trainer)[str(IB_BLOCK)]
        h = captured["h"][inputs["attention_mask"].bool()]  # (P, H): every real token, in row-major order
        h = h / h.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()  # ib_input_norm="rms", the default
        mu = encoder.mu(h)
        logvar = encoder.logvar(h).clamp(-4.0, 4.0)
        kl = kl_to_standard_normal(mu, logvar).mean()  # over real tokens and latent dims ("attention" mask)
        # The model draws eps for the P real-token rows first; the forward before it draws nothing (no dropout).
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        next_labels = torch.cat([labels[:, 1:], torch.full_like(labels[:, :1], -100)], dim=1)
        rows = next_labels[inputs["attention_mask"].bool()]  # (P,) next-token label of each real token
        supervised = rows != -100
        logits_ib = model.get_output_embeddings()(encoder.up(z[supervised]))
        ce_ib = F.cross_entropy(logits_ib, rows[supervised])

    total = ce + alpha * (kl + beta * ce_ib)
    assert log["loss"] == pytest.approx(total.item(), abs=1e-5)
    assert log["ce"] == pytest.approx(ce.item(), abs=1e-5)
    assert log["ib_kl"] == pytest.approx(kl.item(), abs=1e-6)
    assert log["ib_ce"] == pytest.approx(ce_ib.item(), abs=1e-5)
    assert log["ib_alpha"] == alpha
    assert log["ib_penalty"] == pytest.approx((alpha * (kl + beta * ce_ib)).item(), abs=1e-6)
    assert alpha * (kl + beta * ce_ib).item() > 1e-3  # the penalty is not negligible next to the tolerance


def _one_sgd_step(tmp_path, tokenizer, batch_size, accumulation):
    # The IB branch samples z = mu + exp(logvar / 2) * eps, and the two runs draw eps in different shapes and order.
    # With the logvar head set to weight 0, bias -40 (and the clamp opened to -40) the noise is scaled by
    # exp(-20) = 2e-9, so z = mu to float precision in both runs, while KL and ce_ib still carry their full gradients.
    trainer = make_trainer(
        tmp_path / f"b{batch_size}x{accumulation}",
        tokenizer,
        peft_config=ib_config(init_lora_weights=False, ib_logvar_min=-40.0),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        ib_alpha=0.5,
        ib_beta=0.5,
    )
    with torch.no_grad():
        for encoder in encoders(trainer).values():
            encoder.logvar.weight.zero_()
            encoder.logvar.bias.fill_(-40.0)
    before = trainable_params(trainer.model)
    micro_batches = [b for _, b in zip(range(accumulation), trainer.get_train_dataloader())]
    trainer.train()
    return before, trainable_params(trainer.model), micro_batches


def test_gradient_accumulation_matches_one_big_batch(tmp_path, tokenizer):
    before, big, _ = _one_sgd_step(tmp_path, tokenizer, batch_size=8, accumulation=1)
    before_ga, accumulated, micro_batches = _one_sgd_step(tmp_path, tokenizer, batch_size=4, accumulation=2)
    # The two micro-batches differ in supervised tokens and real tokens, so per-micro-batch means would not match.
    supervised = [int((b["labels"][:, 1:] != -100).sum()) for b in micro_batches]
    real = [int(b["attention_mask"].sum()) for b in micro_batches]
    assert supervised[0] != supervised[1] and real[0] != real[1]
    assert micro_batches[0]["input_ids"].shape[1] != micro_batches[1]["input_ids"].shape[1]

    assert before.keys() == big.keys() == accumulated.keys()
    assert any("lora_ib_encoders" in name for name in big) and any("lora_A" in name for name in big)
    for name in before:
        torch.testing.assert_close(before_ga[name], before[name], rtol=0, atol=0)
        moved = (big[name] - before[name]).abs().max().item()
        assert moved > 1e-4, f"{name} barely moved ({moved}); the comparison would be vacuous"
        torch.testing.assert_close(accumulated[name], big[name], rtol=0, atol=1e-6, msg=name)


# ---- alpha: warmup and controller -------------------------------------------------------------------------------


@pytest.mark.parametrize("warmup, max_steps", [(4, 6), (0.5, 8)])
def test_warmup_ramps_alpha(tmp_path, tokenizer, warmup, max_steps):
    alpha = 0.3
    trainer = make_trainer(
        tmp_path, tokenizer, per_device_train_batch_size=1, max_steps=max_steps, ib_alpha=alpha, ib_warmup_steps=warmup
    )
    trainer.train()
    logs = train_logs(trainer)
    expected = [alpha * min(step, 4) / 4 for step in range(max_steps)]  # 4 = int(4) = ceil(0.5 * 8)
    assert [log["ib_alpha"] for log in logs] == pytest.approx(expected, rel=1e-12)
    assert logs[0]["ib_penalty"] == 0 and logs[0]["loss"] == pytest.approx(logs[0]["ce"], rel=1e-6)
    assert logs[-1]["ib_penalty"] > 0


@pytest.mark.slow
def test_kl_controller_settles_at_target(tmp_path, tokenizer):
    target, rate, alpha0, beta0 = 0.004, 0.2, 0.2, 0.5
    # One fixed batch of 8 (shuffled each step), Adam lr 2e-2: the KL responds to alpha within a few steps. The
    # loop is underdamped (log alpha integrates the error; Adam's momentum lags), so it is judged on the mean.
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        per_device_train_batch_size=8,
        max_steps=60,
        learning_rate=2e-2,
        peft_config=ib_config(ib_input_norm="none"),
        ib_alpha=alpha0,
        ib_beta=beta0,
        ib_target_kl=target,
        ib_kl_controller_rate=rate,
    )
    trainer.train()
    logs = train_logs(trainer)
    kls = [log["ib_kl"] for log in logs]
    alphas = [log["ib_alpha"] for log in logs]
    assert alphas[0] == alpha0 and kls[0] > 1.5 * target  # starts well above the target

    # Every step applies log(alpha) += rate * clip(log(KL / target), -1, 1) to the step's KL: alpha grows while
    # the KL is above the target and shrinks while it is below, and both happen in this run.
    for step in range(len(logs) - 1):
        error = max(-1.0, min(1.0, math.log(kls[step] / target)))
        assert alphas[step + 1] == pytest.approx(alphas[step] * math.exp(rate * error), rel=1e-9)
    grew = [a1 > a0 for a0, a1 in zip(alphas, alphas[1:])]
    above = [kl > target for kl in kls[:-1]]
    assert grew == above and any(grew) and not all(grew)

    # The ce_ib weight alpha * beta stays fixed: read back from the logged penalty alpha * (KL + beta * ce_ib).
    for log in logs:
        ce_weight = (log["ib_penalty"] - log["ib_alpha"] * log["ib_kl"]) / log["ib_ce"]
        assert ce_weight == pytest.approx(alpha0 * beta0, rel=1e-6)
    assert trainer._ib_controller.ce_weight == pytest.approx(alpha0 * beta0, rel=1e-12)

    last = kls[-len(kls) // 5 :]
    assert statistics.mean(last) == pytest.approx(target, rel=0.3)
    assert alphas[-1] > 2 * alpha0  # it got there by moving alpha, not because the KL started near the target


# ---- checkpoints ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_from_checkpoint_reproduces_the_run(tmp_path, tokenizer):
    settings = dict(
        trainer_cls=RecordingTrainer,
        train_dataset=code_dataset(12),
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        ib_target_kl=0.004,
        ib_kl_controller_rate=0.2,
        ib_warmup_steps=1,
        lr_scheduler_type="linear",
        warmup_steps=2,
    )
    full = make_trainer(tmp_path / "full", tokenizer, **settings)
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-3"

    # The checkpoint holds the adapter with its IB encoders and the controller's state after step 3.
    saved = load_file(checkpoint / "adapter_model.safetensors")
    assert any("lora_ib_encoders" in key for key in saved)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", CONTROLLER_FILE):
        assert (checkpoint / name).exists(), name
    controller_state = json.loads((checkpoint / CONTROLLER_FILE).read_text())
    full_logs = train_logs(full)
    assert controller_state["alpha"] == full_logs[3]["ib_alpha"] != full_logs[0]["ib_alpha"]

    resumed = make_trainer(tmp_path / "resumed", tokenizer, **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # log_history restarts from the checkpoint's trainer_state.json (steps 1-3), then the resumed run appends 4-6.
    assert [log["step"] for log in train_logs(resumed)] == [1, 2, 3, 4, 5, 6]
    resumed_logs = train_logs(resumed)[3:]

    # The resumed run starts from step 3's weights (LoRA and encoders, fresh ones were initialized)...
    start = resumed.recorded[0]["params"]
    for name, value in full.recorded[3]["params"].items():
        torch.testing.assert_close(start[name], value, rtol=0, atol=0, msg=name)
    # ...and continues exactly: same batches, noise, learning rates, alphas, losses and final weights.
    for ours, theirs in zip(resumed_logs, full_logs[3:]):
        for key in ("loss", "ce", "ib_kl", "ib_ce", "ib_alpha", "learning_rate", "grad_norm"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-9), (ours["step"], key)
    assert resumed._ib_controller.state_dict() == pytest.approx(full._ib_controller.state_dict(), rel=1e-9)
    end, full_end = trainable_params(resumed.model), trainable_params(full.model)
    for name in full_end:
        torch.testing.assert_close(end[name], full_end[name], rtol=0, atol=1e-6, msg=name)


# ---- what the trainer accepts -----------------------------------------------------------------------------------


def test_rejects_models_without_an_ib_adapter(tmp_path, tokenizer):
    """Refused with the adapter type it got; SFTTrainer's own argument checks still come first."""
    args = IBSFTConfig(**{**BASE_ARGS, "output_dir": str(tmp_path)})
    data = code_dataset(2)
    with pytest.raises(ValueError, match=r"adapters are \{'default': LORA\}.*IBLoraConfig.*trl.SFTTrainer"):
        IBSFTTrainer(
            tiny_llama(),
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=LoraConfig(r=4, target_modules="all-linear"),
        )
    with pytest.raises(ValueError, match=r"got a LlamaForCausalLM without a PEFT adapter.*IBLoraConfig"):
        IBSFTTrainer(tiny_llama(), args=args, train_dataset=data, processing_class=tokenizer)
    plain = get_peft_model(tiny_llama(), LoraConfig(r=4, target_modules="all-linear"), adapter_name="mine")
    with pytest.raises(ValueError, match=r"adapters are \{'mine': LORA\}"):
        IBSFTTrainer(plain, args=args, train_dataset=data, processing_class=tokenizer)
    with pytest.raises(ValueError, match=r"^`train_dataset` is required$"):  # TRL's message, not ours
        IBSFTTrainer(tiny_llama(), args=args, processing_class=tokenizer)


def test_two_name_switch_from_sft_trainer_positional_and_keyword(tmp_path, tokenizer):
    """
    The README's promise: an SFTTrainer + LoraConfig call becomes IB-FT by changing two names, in SFTTrainer's
    positional order too, with the SFTConfig kept. At ib_alpha=0 the IB run takes SFTTrainer's steps exactly.
    """
    args = SFTConfig(**{**BASE_ARGS, "output_dir": str(tmp_path), "bf16": False})
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)
    data = code_dataset(8)
    lora = dict(r=4, lora_alpha=8, target_modules="all-linear")

    def ib_lora():
        return IBLoraConfig(**lora, ib_layers=IB_BLOCK, ib_dim=8, ib_alpha=0.0)

    trainers = {
        "SFTTrainer": SFTTrainer(tiny_llama(), args, collator, data, None, tokenizer, peft_config=LoraConfig(**lora)),
        "positional": IBSFTTrainer(tiny_llama(), args, collator, data, None, tokenizer, peft_config=ib_lora()),
        "keyword": IBSFTTrainer(
            model=tiny_llama(),
            args=args,
            data_collator=collator,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=ib_lora(),
        ),
    }
    for name in ("positional", "keyword"):
        trainer = trainers[name]
        assert trainer.data_collator is collator and trainer.train_dataset.num_rows == 8, name
        assert isinstance(trainer.args, IBSFTConfig) and trainer.args is not args
        converted, given = trainer.args.to_dict(), args.to_dict()
        ib_fields = {f for f in converted if f.startswith("ib_")}
        assert {k: v for k, v in converted.items() if k not in ib_fields} == given | {
            "ddp_find_unused_parameters": False
        }  # IBSFTConfig's rule (see the last test)
        assert all(converted[f] == IBSFTConfig.__dataclass_fields__[f].default for f in ib_fields)
    losses = {}
    for name, trainer in trainers.items():
        trainer.train()
        losses[name] = [log["loss"] for log in train_logs(trainer)]
    assert len(losses["SFTTrainer"]) == 2
    assert losses["positional"] == losses["keyword"] == losses["SFTTrainer"]


def test_training_arguments_convert_like_sft_trainer_converts_them(tmp_path, tokenizer):
    plain = TrainingArguments(**{**BASE_ARGS, "output_dir": str(tmp_path)}, gradient_accumulation_steps=3)
    trainer = IBSFTTrainer(get_peft_model(tiny_llama(), ib_config()), plain, None, code_dataset(2), None, tokenizer)
    assert isinstance(trainer.args, IBSFTConfig)
    assert (trainer.args.gradient_accumulation_steps, trainer.args.learning_rate) == (3, BASE_ARGS["learning_rate"])
    assert trainer.args.completion_only_loss is None and trainer.args.ib_alpha is None  # SFT and IB defaults
    with pytest.raises(
        TypeError, match=r"args of type dict: pass an IBSFTConfig, an SFTConfig or a TrainingArguments"
    ):
        IBSFTTrainer(tiny_llama(), {"output_dir": str(tmp_path)}, None, code_dataset(2), peft_config=ib_config())


def test_token_scale_divides_out_tensor_parallel_ranks():
    # SFTTrainer scales its loss by num_processes // tp_size: tensor-parallel ranks share one batch.
    def scale(num_processes, tp_size, average=True):
        trainer = SimpleNamespace(
            accelerator=SimpleNamespace(num_processes=num_processes),
            get_tp_size=lambda: tp_size,
            args=SimpleNamespace(average_tokens_across_devices=average),
        )
        return IBSFTTrainer._token_scale.fget(trainer)

    assert (scale(8, 1), scale(8, 2), scale(8, 8), scale(8, 2, average=False)) == (8, 4, 1, 1)


def test_accepts_a_model_already_wrapped_with_ib_lora(tmp_path, tokenizer):
    model = get_peft_model(tiny_llama(), ib_config(ib_dim=6))
    grads = EncoderGrads()
    trainer = make_trainer(tmp_path, tokenizer, model=model, max_steps=1, callbacks=[grads])
    assert trainer.model is model and encoders(trainer)[str(IB_BLOCK)].mu.out_features == 6
    trainer.train()
    assert all(norm > 0 for norm in grads.norms[0].values())


@pytest.mark.parametrize(
    "field, value",
    [
        ("ib_alpha", -0.1),
        ("ib_beta", -1.0),
        ("ib_warmup_steps", -2),
        ("ib_target_kl", 0.0),
        ("ib_target_kl", -0.5),
        ("ib_kl_controller_rate", 0.0),
    ],
)
def test_config_errors_name_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=rf"^{field}={value!r}: must be"):
        IBSFTConfig(output_dir=str(tmp_path), report_to="none", **{field: value})


def test_controller_needs_a_positive_starting_alpha(tmp_path, tokenizer):
    with pytest.raises(ValueError, match=r"ib_target_kl needs a starting alpha > 0, got ib_alpha=0.0"):
        make_trainer(tmp_path, tokenizer, ib_alpha=0.0, ib_target_kl=0.01)


# ---- data formats ---------------------------------------------------------------------------------------------


def test_instruction_response_columns_map_to_the_papers_format(tmp_path, tokenizer):
    data = Dataset.from_dict(
        {
            "Instruction": ["Write add", "Write mul"],
            "Response": ["def add(a, b):\n    return a + b\n", "def mul(a, b):\n    return a * b\n"],
        }
    )
    mapped = to_prompt_completion(data)
    assert mapped.column_names == ["prompt", "completion"]
    assert mapped[0] == {"prompt": "Write add\n", "completion": "def add(a, b):\n    return a + b\n"}
    with pytest.raises(ValueError, match=r"no column\(s\) \['Answer'\]"):
        to_prompt_completion(data, "Instruction", "Answer")

    trainer = make_trainer(tmp_path, tokenizer, train_dataset=mapped, eval_dataset=mapped)
    for dataset in (trainer.train_dataset, trainer.eval_dataset):
        row = dataset[1]
        assert row["prompt"] == "Write mul\n"
        assert row["completion"] == "def mul(a, b):\n    return a * b\n" + tokenizer.eos_token
        labels = trainer.data_collator([row])["labels"][0]
        num_prompt = len(tokenizer("Write mul\n")["input_ids"])
        assert (labels[:num_prompt] == -100).all() and (labels[num_prompt:] != -100).all()
        assert tokenizer.decode(labels[num_prompt:]) == "def mul(a, b):\n    return a * b\n" + tokenizer.eos_token


def test_evaluate_logs_the_ib_terms(tmp_path, tokenizer):
    trainer = make_trainer(
        tmp_path, tokenizer, eval_dataset=code_dataset(4), per_device_eval_batch_size=4, ib_alpha=0.5, ib_beta=0.5
    )
    metrics = trainer.evaluate()
    for key in ("eval_ce", "eval_ib_kl", "eval_ib_ce", "eval_ib_alpha", "eval_ib_penalty"):
        assert math.isfinite(metrics[key]) and metrics[key] > 0, key
    # One eval batch: eval_loss is its total ce + alpha * (KL + beta * ce_ib).
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ce"] + metrics["eval_ib_penalty"], rel=1e-5)
    assert metrics["eval_ib_penalty"] == pytest.approx(
        0.5 * (metrics["eval_ib_kl"] + 0.5 * metrics["eval_ib_ce"]), rel=1e-9
    )
    # ...and leaves the adapter as it found it: a plain eval forward computes no IB terms.
    batch = next(iter(trainer.get_eval_dataloader()))
    trainer.model.eval()
    with torch.no_grad():
        trainer.model(**batch)
    with pytest.raises(RuntimeError, match="No IB terms"):
        ib_terms(trainer.model)


def test_ddp_unused_parameter_search_is_off(tmp_path):
    # DDP cannot see the IB terms among the model's outputs; its unused-parameter search would break the IB encoders.
    assert IBSFTConfig(output_dir=str(tmp_path), report_to="none").ddp_find_unused_parameters is False
    with pytest.raises(ValueError, match=r"^ddp_find_unused_parameters=True: DDP cannot see the IB terms"):
        IBSFTConfig(output_dir=str(tmp_path), report_to="none", ddp_find_unused_parameters=True)


# ---- ce_ib: peft_ib's row tiles, or TRL's kernel where the trainer hands it in ---------------------------------


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_row_tiles_equal_trl_chunked_kernel(monkeypatch, softcap):
    """peft_ib computes ce_ib in recomputed row tiles of cross_entropy (several tiles forced here by a small tile);
    TRL's ChunkedLogProbFunction (its torch fold on a CPU) agrees in value and gradient."""
    monkeypatch.setattr(peft_ib_model, "CE_TILE_ELEMENTS", 3 * 50)  # 3 rows a tile: 3 tiles for 7 rows
    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False)
    h_ib = torch.randn(7, 16, requires_grad=True)
    targets = torch.randint(0, 50, (7,))

    def log_probs_and_grad(fused):
        h_ib.grad = None
        log_probs = peft_ib_model._target_log_probs(head, h_ib, targets, softcap, 1.5, fused)
        (log_probs * torch.arange(1.0, 8.0)).sum().backward()
        return log_probs.detach(), h_ib.grad.clone()

    tiles, tiles_grad = log_probs_and_grad(None)
    kernel, kernel_grad = log_probs_and_grad(chunked_target_log_probs)
    logits = head(h_ib.detach()) * 1.5
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    naive = -F.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(tiles, naive, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kernel, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tiles_grad, kernel_grad, atol=1e-5, rtol=1e-5)


def test_trl_kernel_is_handed_in_where_trl_folds_in_triton(tmp_path, tokenizer, monkeypatch):
    from trl.kernels.chunked_logprob import _use_triton  # TRL's private rule, pinned here, never imported by trl_ib

    for device in ("cpu", "cuda", "xpu", "mps"):
        assert trl_kernel_is_fast(torch.device(device)) == _use_triton(torch.device(device)), device
    assert find_ib_model(make_trainer(tmp_path, tokenizer).model).fused_target_log_probs is None  # this CPU

    calls = []

    def recording(*args):
        calls.append(len(args[2]))
        return chunked_target_log_probs(*args)

    monkeypatch.setattr(ib_sft_trainer, "trl_kernel_is_fast", lambda device: True)
    monkeypatch.setattr(ib_sft_trainer, "chunked_target_log_probs", recording)
    trainer = make_trainer(tmp_path, tokenizer, max_steps=1)
    assert find_ib_model(trainer.model).fused_target_log_probs is recording
    trainer.train()
    assert len(calls) == 1 and calls[0] > 0 and math.isfinite(train_logs(trainer)[0]["ib_ce"])
