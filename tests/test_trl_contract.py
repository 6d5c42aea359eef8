"""IBSFTTrainer keeps SFTTrainer's contracts: every path a TRL user takes with SFTTrainer + LoraConfig works with
IBSFTTrainer + IBLoraConfig, with SFTTrainer run beside it as the control where the two must agree (at ib_alpha=0
IB-FT is LoRA fine-tuning plus encoders that receive no weight, so the task numbers are SFTTrainer's exactly).

Resuming from a checkpoint is test_ib_sft_trainer.py's `test_resume_from_checkpoint_reproduces_the_run`.
"""

import math

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from test_ib_sft_trainer import BASE_ARGS, EncoderGrads, code_dataset, ib_config, make_trainer, train_logs
from tiny_models import tiny_llama, train_tokenizer
from trl_ib import IBSFTConfig, IBSFTTrainer

IB_TERMS = ("ce", "ib_kl", "ib_ce", "ib_alpha", "ib_penalty")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


def token_accuracy(prediction) -> dict[str, float]:
    """A `compute_metrics`: next-token accuracy on the supervised positions, from the logits."""
    logits, labels = prediction.predictions, prediction.label_ids
    predicted, targets = logits[:, :-1].argmax(-1), labels[:, 1:]
    keep = targets != -100
    return {"next_token_accuracy": float((predicted[keep] == targets[keep]).mean())}


def pair(tmp_path, tokenizer, eval_dataset=None, compute_metrics=None, **overrides):
    """(IBSFTTrainer + IBLoraConfig at ib_alpha 0, SFTTrainer + LoraConfig) on the same data, seed and LoRA settings."""
    ib = make_trainer(
        tmp_path / "ib",
        tokenizer,
        eval_dataset=eval_dataset,
        compute_metrics=compute_metrics,
        ib_alpha=0.0,
        **overrides,
    )
    lora = SFTTrainer(
        tiny_llama(),
        args=SFTConfig(output_dir=str(tmp_path / "lora"), **{**BASE_ARGS, **overrides}),
        train_dataset=code_dataset(8),
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
    )
    return ib, lora


# ---- evaluation: evaluate, predict, compute_metrics, prediction_loss_only -----------------------------------------


@pytest.mark.parametrize("prediction_loss_only", [True, False])
def test_evaluate_with_and_without_metrics_equals_sft_trainer(tmp_path, tokenizer, prediction_loss_only):
    compute_metrics = None if prediction_loss_only else token_accuracy
    ib, lora = pair(
        tmp_path,
        tokenizer,
        eval_dataset=code_dataset(4),
        per_device_eval_batch_size=4,
        prediction_loss_only=prediction_loss_only,
        compute_metrics=compute_metrics,
    )
    ours, theirs = ib.evaluate(), lora.evaluate()
    assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], rel=1e-6)
    assert ours["eval_ce"] == pytest.approx(theirs["eval_loss"], rel=1e-6)  # alpha 0: the total is the task loss
    assert all(math.isfinite(ours[f"eval_{key}"]) for key in IB_TERMS)
    if compute_metrics is not None:
        assert ours["eval_next_token_accuracy"] == theirs["eval_next_token_accuracy"]
    else:
        assert "eval_next_token_accuracy" not in ours


def test_evaluate_total_is_ce_plus_the_penalty(tmp_path, tokenizer):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        eval_dataset=code_dataset(4),
        per_device_eval_batch_size=4,
        compute_metrics=token_accuracy,
        ib_alpha=0.5,
        ib_beta=0.5,
    )
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(metrics["eval_ce"] + metrics["eval_ib_penalty"], rel=1e-5)
    assert metrics["eval_ib_penalty"] == pytest.approx(0.5 * (metrics["eval_ib_kl"] + 0.5 * metrics["eval_ib_ce"]))
    assert 0 <= metrics["eval_next_token_accuracy"] <= 1


def test_predict_equals_sft_trainer(tmp_path, tokenizer):
    ib, lora = pair(tmp_path, tokenizer, compute_metrics=token_accuracy)
    data = ib.train_dataset.select(range(3))  # predict takes prepared (tokenized) rows, as SFTTrainer's does
    ours, theirs = ib.predict(data), lora.predict(data)
    assert ours.predictions.shape == theirs.predictions.shape and ours.predictions.shape[0] == 3
    np.testing.assert_allclose(ours.predictions, theirs.predictions, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(ours.label_ids, theirs.label_ids)
    assert ours.metrics["test_loss"] == pytest.approx(theirs.metrics["test_loss"], rel=1e-6)
    assert ours.metrics["test_next_token_accuracy"] == theirs.metrics["test_next_token_accuracy"]


def test_training_with_eval_strategy_and_compute_metrics(tmp_path, tokenizer):
    trainer = make_trainer(
        tmp_path,
        tokenizer,
        eval_dataset=code_dataset(4),
        eval_strategy="steps",
        eval_steps=1,
        compute_metrics=token_accuracy,
        ib_alpha=0.3,
    )
    trainer.train()
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    assert [log["step"] for log in evals] == [1, 2]
    for log in evals:
        assert all(math.isfinite(log[f"eval_{key}"]) for key in IB_TERMS) and "eval_next_token_accuracy" in log
        assert log["eval_ib_alpha"] == 0.3


# ---- losses SFTTrainer builds from full logits --------------------------------------------------------------------


def shifted_ce(outputs, labels, num_items_in_batch=None):
    """A `compute_loss_func`: the mean next-token cross-entropy on the supervised positions."""
    logits, targets = outputs.logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
    return torch.nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100)


@pytest.mark.parametrize("loss", ["compute_loss_func", "label_smoothing"])
def test_full_logits_losses_train_the_encoders(tmp_path, tokenizer, loss):
    """SFTTrainer runs such losses on a forward without labels: the IB terms still come from that forward (with the
    batch's labels), so the encoders train; at alpha 0 the losses are SFTTrainer's."""
    overrides = {"label_smoothing_factor": 0.1} if loss == "label_smoothing" else {}
    grads = EncoderGrads()
    ib = make_trainer(tmp_path / "ib", tokenizer, callbacks=[grads], ib_alpha=0.5, **overrides)
    zero, lora = pair(tmp_path, tokenizer, **overrides)
    if loss == "compute_loss_func":
        ib.compute_loss_func = zero.compute_loss_func = lora.compute_loss_func = shifted_ce
    ib.train()
    assert all(norm > 0 for norms in grads.norms for norm in norms.values()) and len(grads.norms) == 2
    zero.train()
    lora.train()
    for ours, theirs in zip(train_logs(zero), train_logs(lora), strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)


# ---- data formats and training options --------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] }}{% endgeneration %}"
    "{% else %}{{ message['content'] }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def _messages_dataset(n: int) -> Dataset:
    rows = code_dataset(n)
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
                for row in rows
            ]
        }
    )


FORMATS = {
    "packing": dict(args={"packing": True}),
    "padding_free": dict(args={"padding_free": True, "max_length": None}),
    "gradient_checkpointing": dict(
        args={"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    ),
    "completion_only": dict(args={"completion_only_loss": True}),
    "messages": dict(data=_messages_dataset),
    "assistant_only": dict(data=_messages_dataset, args={"assistant_only_loss": True}),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_formats_train_the_encoder(tmp_path, tokenizer, name):
    spec = FORMATS[name]
    if "data" in spec:
        tokenizer = train_tokenizer(tmp_path / "chat")
        tokenizer.chat_template = CHAT_TEMPLATE
    grads = EncoderGrads()
    trainer = make_trainer(
        tmp_path, tokenizer, train_dataset=spec.get("data", code_dataset)(4), callbacks=[grads], **spec.get("args", {})
    )
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.train()
    logs = train_logs(trainer)
    assert len(logs) == 2 and len(grads.norms) == 2
    for log in logs:
        assert math.isfinite(log["ib_kl"]) and log["ib_kl"] > 0 and math.isfinite(log["ib_ce"]) and log["ib_ce"] > 0
    for norms in grads.norms:
        assert norms and all(norm > 0 for norm in norms.values()), norms

    if name in ("packing", "padding_free"):  # one flat row, sequences told apart by position_ids
        assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
        assert (batch["position_ids"] == 0).sum() >= 2
    if name == "completion_only":  # no loss on the prompt, all of it on the completion
        row = trainer.train_dataset[0]
        prompt_ids = tokenizer(row["prompt"])["input_ids"]
        labels = trainer.data_collator([row])["labels"][0]
        assert (labels[: len(prompt_ids)] == -100).all()
        assert tokenizer.decode(labels[len(prompt_ids) :]) == row["completion"]
    if name == "assistant_only":  # the loss is on the assistant's content only
        labels = batch["labels"][0]
        assert tokenizer.decode(labels[labels != -100]) == code_dataset(4)[0]["completion"]


# ---- the model: by id, by instance, already wrapped; its tags -----------------------------------------------------


@pytest.mark.parametrize("given", ["id", "instance", "wrapped"])
def test_model_by_id_instance_or_wrapped(tmp_path, tokenizer, given):
    """SFTTrainer seeds before it wraps the model, so an id and an instance give the same run; a model the user
    wrapped after seeding the same way does too."""
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    reference = make_trainer(tmp_path / "reference", tokenizer, ib_alpha=0.5)
    reference.train()
    if given == "wrapped":
        base = tiny_llama()
        set_seed(BASE_ARGS["seed"])
        trainer = make_trainer(tmp_path / given, tokenizer, ib_alpha=0.5, model=get_peft_model(base, ib_config()))
    else:
        args = IBSFTConfig(**{**BASE_ARGS, "output_dir": str(tmp_path / given), "ib_alpha": 0.5})
        trainer = IBSFTTrainer(
            str(base_dir) if given == "id" else tiny_llama(),
            args=args,
            train_dataset=code_dataset(8),
            peft_config=ib_config(),
            processing_class=None if given == "id" else tokenizer,
        )
    trainer.train()
    for ours, theirs in zip(train_logs(trainer), train_logs(reference), strict=True):
        for key in ("loss", "ce", "ib_kl", "ib_ce"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), key
    assert {"trl", "sft", "ib-lora", "information-bottleneck"} <= set(trainer.model.model_tags)


PUSH = """
import json
import torch
from datasets import Dataset
from huggingface_hub import HfApi, ModelCard
from peft import AutoPeftModelForCausalLM
from tiny_models import tiny_llama, train_tokenizer
import tempfile
from peft_ib import IBLoraConfig
from trl_ib import IBSFTConfig, IBSFTTrainer

tiny_llama().push_to_hub("user/sft-base")
train_tokenizer(tempfile.mkdtemp()).push_to_hub("user/sft-base")
data = Dataset.from_dict({"prompt": ["Write add\\n", "Write mul\\n"] * 2,
                          "completion": ["def add(a, b):\\n    return a + b\\n", "def mul(a, b):\\n    return a * b\\n"] * 2})
args = IBSFTConfig(tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=2, report_to="none", use_cpu=True,
                   bf16=False, save_strategy="no", push_to_hub=True, hub_model_id="user/ib-sft", logging_steps=1)
trainer = IBSFTTrainer("user/sft-base", args=args, train_dataset=data,
                       peft_config=IBLoraConfig(r=4, target_modules="all-linear", ib_layers=1, ib_dim=8))
trainer.train()
trainer.push_to_hub(dataset_name="user/code")
card = ModelCard.load("user/ib-sft")
loaded = AutoPeftModelForCausalLM.from_pretrained("user/ib-sft")
pushed = trainer.model.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight
got = loaded.get_base_model().model.layers[0].self_attn.q_proj.lora_B["default"].weight
print(json.dumps({"tags": card.data.tags, "base_model": card.data.base_model, "text": card.text,
                  "files": sorted(f.rfilename for f in HfApi().model_info("user/ib-sft").siblings),
                  "peft_type": loaded.peft_config["default"].peft_type, "same_weights": torch.equal(pushed, got)}))
"""


@pytest.mark.slow
def test_push_to_hub_from_a_model_id(run_client):
    """The whole Hub path: base and tokenizer loaded by id, trained, pushed with the trainer's card, loaded back."""
    pushed = run_client(PUSH)
    assert pushed["base_model"] == "user/sft-base" and pushed["peft_type"] == "IBLORA" and pushed["same_weights"]
    assert {"ib-lora", "information-bottleneck", "trl", "sft"} <= set(pushed["tags"])
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(pushed["files"])
    assert "| `ib_kl` |" in pushed["text"]
