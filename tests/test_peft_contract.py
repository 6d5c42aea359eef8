"""IB-LoRA keeps PEFT's contracts: every public PeftModel path a LoRA user takes, on four architectures, with LoRA
run beside it as the control (the same call, the same assertion, `LoraConfig` in place of `IBLoraConfig`).

Tiny Llama, Qwen2, GPT-2 and OPT models are built from configs and saved to a temporary folder, so `from_pretrained`
and `AutoPeftModelForCausalLM` load them by path, as they would a Hub id.
"""

import logging
from pathlib import Path

import pytest
import torch
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Trainer,
    TrainingArguments,
)

from peft_ib import IBLoraConfig, find_ib_model, ib_loss, ib_terms
from tiny_models import batch, tiny_gpt2, tiny_llama

VOCAB = 300


def tiny_qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=0,
            tie_word_embeddings=False,
        )
    )


def tiny_opt() -> OPTForCausalLM:
    torch.manual_seed(0)
    return OPTForCausalLM(
        OPTConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            word_embed_proj_dim=32,
            ffn_dim=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=256,
            pad_token_id=0,
            dropout=0.0,
            attention_dropout=0.0,
        )
    )


ARCHS = {"llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2, "opt": tiny_opt}
METHODS = {"ib-lora": IBLoraConfig, "lora": LoraConfig}


def adapter_config(method: str, **overrides):
    # init_lora_weights=False: LoRA's B is random, so an adapter changes the logits and round trips are not vacuous.
    fields = {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": "all-linear",
        "init_lora_weights": False,
        "task_type": "CAUSAL_LM",
        **overrides,
    }
    if method == "ib-lora":
        fields = {"ib_layers": 1, "ib_dim": 8, **fields}
    return METHODS[method](**fields)


@pytest.fixture(params=list(ARCHS))
def base_dir(request, tmp_path_factory):
    """A saved tiny base model of each architecture, loaded by path like a Hub id."""
    directory = tmp_path_factory.mktemp(request.param)
    ARCHS[request.param]().save_pretrained(directory)
    return str(directory)


@pytest.fixture(params=list(METHODS))
def method(request):
    return request.param


def load_base(base_dir, **kwargs):
    return AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)


def make_peft(base_dir, method, seed=1, **kwargs):
    torch.manual_seed(seed)
    return get_peft_model(load_base(base_dir), adapter_config(method), **kwargs)


def logits(model, b=None) -> torch.Tensor:
    b = batch(VOCAB) if b is None else b
    model.eval()
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def adapter_state(model, adapter="default") -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n and f".{adapter}." in n}


def encoder_state(model, adapter="default") -> dict[str, torch.Tensor]:
    ib = find_ib_model(model)
    return {n: p.detach().clone() for n, p in ib.lora_ib_encoders[adapter].named_parameters()}


def assert_same_encoders(model, reference, adapter="default", reference_adapter="default"):
    if not isinstance(model.peft_config[adapter], IBLoraConfig):
        return
    mine, theirs = encoder_state(model, adapter), encoder_state(reference, reference_adapter)
    assert mine.keys() == theirs.keys() and mine
    for name in mine:
        assert mine[name].device.type != "meta", name
        torch.testing.assert_close(mine[name], theirs[name], rtol=0, atol=0)


# ---- save and load ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_load_round_trip(base_dir, method, tmp_path, safe_serialization):
    model = make_peft(base_dir, method)
    expected = logits(model)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    weights = "adapter_model.safetensors" if safe_serialization else "adapter_model.bin"
    assert (tmp_path / weights).exists()
    loaded = PeftModel.from_pretrained(load_base(base_dir), tmp_path)
    torch.testing.assert_close(logits(loaded), expected)
    assert_same_encoders(loaded, model)
    assert type(loaded.peft_config["default"]) is METHODS[method]


def test_selected_adapters_and_adapter_name(base_dir, method, tmp_path):
    model = make_peft(base_dir, method)
    model.add_adapter("other", adapter_config(method, r=2))
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert (tmp_path / "other" / "adapter_config.json").exists() and not (tmp_path / "adapter_config.json").exists()
    model.set_adapter("other")
    expected = logits(model)
    loaded = PeftModel.from_pretrained(load_base(base_dir), tmp_path / "other", adapter_name="renamed")
    assert loaded.active_adapter == "renamed"
    torch.testing.assert_close(logits(loaded), expected)
    assert_same_encoders(loaded, model, "renamed", "other")


@pytest.mark.parametrize("is_trainable", [True, False])
def test_from_pretrained_is_trainable(base_dir, method, tmp_path, is_trainable):
    make_peft(base_dir, method).save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(load_base(base_dir), tmp_path, is_trainable=is_trainable)
    adapter = {n: p.requires_grad for n, p in loaded.named_parameters() if "lora_" in n}
    assert adapter and set(adapter.values()) == {is_trainable}
    assert not any(p.requires_grad for n, p in loaded.named_parameters() if "lora_" not in n)


@pytest.mark.parametrize("auto_class", [False, True])
def test_low_cpu_mem_usage_loading(base_dir, method, tmp_path, auto_class):
    model = make_peft(base_dir, method)
    expected = logits(model)
    model.save_pretrained(tmp_path)
    if auto_class:
        loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path, low_cpu_mem_usage=True)
    else:
        loaded = PeftModel.from_pretrained(load_base(base_dir), tmp_path, low_cpu_mem_usage=True)
    assert not any(p.device.type == "meta" for p in loaded.parameters())
    torch.testing.assert_close(logits(loaded), expected)
    assert_same_encoders(loaded, model)
    # load_adapter too, as a second adapter
    loaded.load_adapter(tmp_path, adapter_name="again", low_cpu_mem_usage=True)
    loaded.set_adapter("again")
    torch.testing.assert_close(logits(loaded), expected)
    assert_same_encoders(loaded, model, "again")


def test_auto_peft_model_loads_the_base_by_path(base_dir, method, tmp_path):
    model = make_peft(base_dir, method)
    model.save_pretrained(tmp_path)
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.peft_config["default"].base_model_name_or_path == base_dir
    torch.testing.assert_close(logits(loaded), logits(model))


# ---- merge, unload, generate ------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["merge", "safe_merge", "merge_and_unload", "unload"])
def test_merge_and_unload(base_dir, method, how):
    model = make_peft(base_dir, method)
    adapted, base = logits(model), logits(load_base(base_dir))
    if how == "merge":
        model.merge_adapter()
        torch.testing.assert_close(logits(model), adapted, rtol=1e-4, atol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(logits(model), adapted, rtol=1e-4, atol=1e-5)
    elif how == "safe_merge":
        model.base_model.merge_adapter(safe_merge=True)
        torch.testing.assert_close(logits(model), adapted, rtol=1e-4, atol=1e-5)
    elif how == "merge_and_unload":
        merged = model.merge_and_unload()
        assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
        torch.testing.assert_close(logits(merged), adapted, rtol=1e-4, atol=1e-5)
    else:
        plain = model.unload()
        assert not any("lora_" in n for n, _ in plain.named_parameters())
        torch.testing.assert_close(logits(plain), base)


def test_generate_is_the_merged_models_generate(base_dir, method):
    model = make_peft(base_dir, method)
    prompt = batch(VOCAB)["input_ids"][:1, :6]
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    model.eval()
    generated = model.generate(input_ids=prompt, **settings)
    merged = model.merge_and_unload()
    assert generated.tolist() == merged.generate(input_ids=prompt, **settings).tolist()
    assert generated.shape == (1, 12)


# ---- adapters: disable, delete, add, set, combine, mixed batches ------------------------------------------------


def test_disable_delete_add_set_adapters(base_dir, method):
    model = make_peft(base_dir, method)
    adapted, base = logits(model), logits(load_base(base_dir))
    with model.disable_adapter():
        torch.testing.assert_close(logits(model), base)
    torch.testing.assert_close(logits(model), adapted)
    torch.manual_seed(2)
    model.add_adapter("other", adapter_config(method, r=2))
    model.set_adapter("other")
    other = logits(model)
    assert not torch.allclose(other, adapted)
    model.set_adapter("default")
    torch.testing.assert_close(logits(model), adapted)
    model.delete_adapter("other")
    assert "other" not in model.peft_config
    assert not any(".other." in n for n, _ in model.named_parameters())
    if method == "ib-lora":
        assert list(find_ib_model(model).lora_ib_encoders) == ["default"]


def test_add_weighted_adapter(base_dir, method, caplog):
    model = make_peft(base_dir, method)
    torch.manual_seed(2)
    model.add_adapter("other", adapter_config(method))
    with caplog.at_level(logging.WARNING, logger="peft_ib.model"):
        model.add_weighted_adapter(["default", "other"], [0.5, 0.5], "combined", combination_type="cat")
    # "cat" keeps both ranks: each LoRA layer's combined delta is the weighted sum of the two deltas
    layer = next(m for m in model.modules() if isinstance(m, BaseTunerLayer) and "combined" in m.lora_A)
    torch.testing.assert_close(
        layer.get_delta_weight("combined"),
        0.5 * layer.get_delta_weight("default") + 0.5 * layer.get_delta_weight("other"),
    )
    if method == "ib-lora":
        assert "newly initialized" in caplog.text
        assert encoder_state(model, "combined").keys() == encoder_state(model, "default").keys()
    else:
        assert "newly initialized" not in caplog.text


def test_mixed_adapter_batches(base_dir, method):
    # OPT flattens (batch, seq) before its MLP, where PEFT cannot tell the rows apart: its attention only there.
    targets = ["q_proj", "k_proj", "v_proj", "out_proj"] if Path(base_dir).name.startswith("opt") else "all-linear"
    torch.manual_seed(1)
    model = get_peft_model(load_base(base_dir), adapter_config(method, target_modules=targets))
    torch.manual_seed(2)
    model.add_adapter("other", adapter_config(method, target_modules=targets))
    b = batch(VOCAB, batch_size=3)
    per_adapter = {}
    for name in ("default", "other"):
        model.set_adapter(name)
        per_adapter[name] = logits(model, b)
    with torch.no_grad():
        mixed = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            adapter_names=["default", "other", "__base__"],
        ).logits
    torch.testing.assert_close(mixed[0], per_adapter["default"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1], per_adapter["other"][1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[2], logits(load_base(base_dir), b)[2], rtol=1e-5, atol=1e-6)


# ---- dtypes and modes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_autocast_adapter_dtype(base_dir, method, tmp_path, dtype, autocast_adapter_dtype):
    """LoRA's contract, for every adapter weight: float32 with autocast_adapter_dtype=True, else the base's dtype."""
    expected = torch.float32 if autocast_adapter_dtype else dtype
    model = get_peft_model(
        load_base(base_dir, dtype=dtype), adapter_config(method), autocast_adapter_dtype=autocast_adapter_dtype
    )
    model.add_adapter("other", adapter_config(method), autocast_adapter_dtype=autocast_adapter_dtype)
    adapter = {n: p.dtype for n, p in model.named_parameters() if "lora_" in n}
    assert {n for n in adapter if "lora_ib_encoders" in n} or method == "lora"
    assert set(adapter.values()) == {expected}
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(
        load_base(base_dir, dtype=dtype), tmp_path, autocast_adapter_dtype=autocast_adapter_dtype
    )
    assert {p.dtype for n, p in loaded.named_parameters() if "lora_" in n} == {expected}


def test_inference_mode_freezes_every_adapter_weight(base_dir, method):
    model = get_peft_model(load_base(base_dir), adapter_config(method, inference_mode=True))
    assert not any(p.requires_grad for p in model.parameters())
    assert sum(1 for n, _ in model.named_parameters() if "lora_ib_encoders" in n) == (6 if method == "ib-lora" else 0)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_trainable_parameter_gets_a_gradient_from_the_output_loss(base_dir, method, checkpointing):
    """A training forward with labels, then `out.loss.backward()` (what Trainer and plain loops do): every trainable
    parameter, the IB encoders included, gets a nonzero gradient."""
    model = make_peft(base_dir, method)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    model(**batch(VOCAB)).loss.backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_ib_encoders" in n for n in trainable) == (method == "ib-lora")
    missing = [n for n, p in trainable.items() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# ---- the IB penalty in the output loss --------------------------------------------------------------------------


def test_output_loss_is_ce_plus_the_penalty_and_ib_loss_refuses_to_count_it_twice(base_dir):
    model = make_peft(base_dir, "ib-lora")
    model.train()
    b = batch(VOCAB)
    find_ib_model(model).ib_penalty_in_loss = False
    torch.manual_seed(3)
    ce = model(**b).loss
    penalty = ib_loss(model)  # allowed: the penalty is not in the loss
    find_ib_model(model).ib_penalty_in_loss = True
    torch.manual_seed(3)
    total = model(**b).loss
    torch.testing.assert_close(total, ce + penalty)
    torch.testing.assert_close(penalty, ib_terms(model).loss())
    assert ib_terms(model).in_loss
    with pytest.raises(RuntimeError, match="already in the model output's `loss`"):
        ib_loss(model)
    # eval mode: no IB terms, the loss is the task loss
    model.eval()
    with torch.no_grad():
        torch.manual_seed(3)
        torch.testing.assert_close(model(**b).loss, ce)


def test_gradient_accumulation_weights_the_penalty_like_the_task_loss(base_dir):
    """With `num_items_in_batch` (Trainer's count of the accumulated batch's supervised tokens) the task loss is
    ce_sum / N; the penalty is weighted by this micro-batch's share S / N of those tokens."""
    model = make_peft(base_dir, "ib-lora")
    model.train()
    b = batch(VOCAB)
    num_supervised = int((b["labels"][:, 1:] != -100).sum())
    n = 3 * num_supervised
    torch.manual_seed(4)
    mean_loss = model(**b).loss
    penalty = ib_terms(model).loss()
    torch.manual_seed(4)
    accumulated = model(**b, num_items_in_batch=torch.tensor(n)).loss
    torch.testing.assert_close(accumulated, (mean_loss - penalty) * num_supervised / n + penalty * num_supervised / n)


def test_a_penalty_that_gets_no_gradient_warns_once(base_dir, caplog):
    model = make_peft(base_dir, "ib-lora")
    model.train()
    b = batch(VOCAB)
    with caplog.at_level(logging.WARNING, logger="peft_ib.model"):
        for _ in range(2):  # a loop that backpropagates out.loss: silent
            model(**b).loss.backward()
        model(**b)
        assert "got no gradient" not in caplog.text
        for _ in range(3):  # a loop that builds its own loss from the logits drops the penalty
            out = model(**b)
            nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten()).backward()
    assert caplog.text.count("got no gradient") == 1


def test_transformers_trainer_trains_ib_ft(base_dir, tmp_path):
    """transformers' Trainer, which backpropagates the model's own loss, trains the IB encoders; LoRA alone would
    leave them as initialized."""
    from datasets import Dataset

    model = make_peft(base_dir, "ib-lora")
    before = encoder_state(model)
    b = batch(VOCAB, batch_size=4)
    data = Dataset.from_dict({k: v.tolist() for k, v in b.items()})
    args = TrainingArguments(
        str(tmp_path),
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=2,
        learning_rate=1e-2,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    Trainer(model=model, args=args, train_dataset=data).train()
    after = encoder_state(model)
    assert all(not torch.equal(before[n], after[n]) for n in before)


# ---- a model IB cannot attach to is left as it was --------------------------------------------------------------


class NoHead(nn.Module):
    """A decoder block list at `model.layers`, but no output layer: IB has nothing to decode z with."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))

    def forward(self, x):
        for layer in self.model.layers:
            x = layer(x)
        return x


def test_a_refused_model_is_left_unchanged():
    model = NoHead()
    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(ValueError, match=r"get_output_embeddings\(\) gives NoneType"):
        get_peft_model(model, IBLoraConfig(r=2, target_modules=["0", "1"], ib_layers=0, ib_dim=2))
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert not hasattr(model, "peft_config")
