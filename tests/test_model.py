"""peft_ib.model: the IB terms against hand-computed and reference values, and the adapter's life cycle in PEFT."""

import json
import math
import re
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from peft import AutoPeftModelForCausalLM, LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from safetensors.torch import load_file
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from peft_ib import IBEncoder, IBLoraConfig, IBLoraModel, ib_terms
from peft_ib.model import find_decoder_blocks
from tiny_models import ToyBlock, batch, tiny_gpt2, tiny_llama

ARCHS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
IB_BLOCK = 2  # ib_layers=0.625 of 4 blocks: 2.5 rounds half up to hidden_states[3], the output of block 2
LORA = dict(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
IB = dict(ib_layers=0.625, ib_dim=8)
# tiny_models.batch(): rows of 12 / 10 / 8 real tokens, the first 4 tokens of each a prompt (labels -100).
NUM_REAL_TOKENS = 12 + 10 + 8
NUM_SUPERVISED = 8 + 6 + 4  # positions 3 .. last-1 of each row predict a response token
NUM_POSITIONS = 3 * 12


def ib_model(arch: str, **overrides) -> PeftModel:
    """A tiny IB-LoRA model in training mode, LoRA B non-zero so that LoRA changes the outputs."""
    base = ARCHS[arch]()
    torch.manual_seed(1234)
    config = IBLoraConfig(task_type="CAUSAL_LM", **{**LORA, **IB, **overrides})
    model = get_peft_model(base, config)
    return model.train()


def encoder_of(model, adapter="default", block=IB_BLOCK) -> IBEncoder:
    return model.base_model.lora_ib_encoders[adapter][str(block)]


def blocks_of(model):
    return find_decoder_blocks(model.get_base_model())[1]


def perturb_adapter(model, seed=99):
    """Move every adapter weight (LoRA and encoders) away from anything a fresh model could start from."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


def shifted(labels):
    """(B, N) next-token labels: position t is supervised with labels[t + 1]."""
    return torch.cat([labels[:, 1:], labels.new_full((labels.shape[0], 1), -100)], dim=1)


def kl_mask_of(mode, b):
    supervised = shifted(b["labels"]) != -100
    return {"attention": b["attention_mask"].bool(), "response": supervised, "all": torch.ones_like(supervised)}[mode]


def eval_logits(model, b):
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    model.train(was_training)
    return logits


# ---- the IB terms against closed forms and references --------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize(
    ("kl_mask", "count"), [("attention", NUM_REAL_TOKENS), ("response", NUM_SUPERVISED), ("all", NUM_POSITIONS)]
)
def test_kl_closed_form(arch, kl_mask, count):
    model = ib_model(arch, ib_kl_mask=kl_mask)
    b = batch()
    assert int(kl_mask_of(kl_mask, b).sum()) == count
    mu = [-1.5, -1.0, -0.25, 0.0, 0.1, 0.5, 1.0, 2.0]
    logvar = [-6.0, -4.0, -1.0, 0.0, 0.5, 2.0, 4.0, 7.0]  # -6 and 7 are clamped to [-4, 4]
    encoder = encoder_of(model)
    with torch.no_grad():
        encoder.mu.weight.zero_(), encoder.mu.bias.copy_(torch.tensor(mu))
        encoder.logvar.weight.zero_(), encoder.logvar.bias.copy_(torch.tensor(logvar))
    model(**b)
    terms = ib_terms(model)
    clamped = [min(max(lv, -4.0), 4.0) for lv in logvar]
    kl_per_position = sum(0.5 * (m * m + math.exp(lv) - 1 - lv) for m, lv in zip(mu, clamped))
    assert int(terms.num_kl_positions) == count
    assert int(terms.num_ce_positions) == NUM_SUPERVISED
    torch.testing.assert_close(terms.kl_sum, torch.tensor([count * kl_per_position]), rtol=1e-6, atol=0)
    torch.testing.assert_close(terms.kl(), torch.tensor([kl_per_position / 8]), rtol=1e-6, atol=0)


def naive_reference(model, b, seed, kl_mask):
    """KL and ce_ib sums the straightforward way: full-sequence tensors, full-vocab logits at every position.

    The noise is the same as the model's: it draws eps ~ N(0, I) right after the forward, one row per position in
    the KL or supervised mask (row-major order), so re-seeding and drawing that many rows reproduces it.
    """
    config = model.peft_config["default"]
    encoder = encoder_of(model)
    base = model.get_base_model()
    with torch.no_grad():
        hidden = eval_hidden_states(model, b)[IB_BLOCK + 1]  # (B, N, H)
        if config.ib_input_norm == "rms":
            hidden = hidden / hidden.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        supervised = shifted(b["labels"]) != -100
        in_kl = kl_mask_of(kl_mask, b)
        mu = hidden @ encoder.mu.weight.T + encoder.mu.bias  # (B, N, D)
        logvar = (hidden @ encoder.logvar.weight.T + encoder.logvar.bias).clamp(-4.0, 4.0)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)
        rows = in_kl | supervised
        torch.manual_seed(seed)
        eps = torch.zeros_like(mu)
        eps[rows] = torch.randn(int(rows.sum()), config.ib_dim)
        z = mu + torch.exp(logvar / 2) * eps
        h_ib = z @ encoder.up.weight.T + encoder.up.bias
        if config.ib_final_norm:
            h_ib = model.get_base_model().model.norm(h_ib)
        logits = base.get_output_embeddings()(h_ib)  # (B, N, V)
        ce = F.cross_entropy(logits.flatten(0, 1), shifted(b["labels"]).flatten(), reduction="sum")
    return kl[in_kl].sum(), ce


def eval_hidden_states(model, b):
    model.eval()
    with torch.no_grad():
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    model.train()
    return out.hidden_states


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("kl_mask", ["attention", "response", "all"])
def test_ce_ib_and_kl_equal_naive_full_logits_reference(arch, kl_mask):
    model = ib_model(arch, ib_kl_mask=kl_mask, ib_beta=0.5)
    with torch.no_grad():  # a larger decoder makes ce_ib depend clearly on the noise
        encoder_of(model).up.weight.mul_(10)
    b = batch()
    kl_ref, ce_ref = naive_reference(model, b, seed=11, kl_mask=kl_mask)
    torch.manual_seed(11)
    model(**b)
    terms = ib_terms(model)
    torch.testing.assert_close(terms.kl_sum, kl_ref.reshape(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.ce_sum, ce_ref.reshape(1), rtol=1e-5, atol=1e-5)
    count = kl_mask_of(kl_mask, b).sum()
    expected = 0.2 * (kl_ref / (count * 8) + 0.5 * ce_ref / NUM_SUPERVISED)
    torch.testing.assert_close(ib_terms(model).loss(), expected, rtol=1e-5, atol=1e-6)
    # The noise matters: a different seed gives a different ce_ib, so the equality above is not vacuous.
    torch.manual_seed(12)
    model(**b)
    assert not torch.allclose(ib_terms(model).ce_sum, ce_ref.reshape(1), rtol=1e-3)


def test_ce_ib_with_final_norm_equals_reference():
    model = ib_model("llama", ib_final_norm=True)
    with torch.no_grad():  # a larger decoder makes ce_ib depend clearly on the norm
        encoder_of(model).up.weight.mul_(10)
    b = batch()
    kl_ref, ce_ref = naive_reference(model, b, seed=3, kl_mask="attention")
    torch.manual_seed(3)
    model(**b)
    terms = ib_terms(model)
    torch.testing.assert_close(terms.kl_sum, kl_ref.reshape(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms.ce_sum, ce_ref.reshape(1), rtol=1e-5, atol=1e-5)
    model_without_norm = ib_model("llama", ib_final_norm=False)
    with torch.no_grad():
        encoder_of(model_without_norm).up.weight.mul_(10)
    torch.manual_seed(3)
    model_without_norm(**b)
    assert not torch.allclose(ib_terms(model_without_norm).ce_sum, terms.ce_sum, rtol=1e-3)


def test_lora_on_the_output_layer_is_part_of_the_ib_decoder():
    """With LoRA on lm_head the model's logits use the adapted head; ce_ib must too, and train its LoRA."""
    model = ib_model("llama", target_modules=["q_proj", "v_proj", "lm_head"])
    with torch.no_grad():
        encoder_of(model).up.weight.mul_(10)
    b = batch()
    _, ce_ref = naive_reference(model, b, seed=4, kl_mask="attention")  # calls the (LoRA) lm_head module
    torch.manual_seed(4)
    model(**b)
    torch.testing.assert_close(ib_terms(model).ce_sum, ce_ref.reshape(1), rtol=1e-5, atol=1e-5)
    ib_terms(model).loss().backward()
    lm_head = model.get_base_model().lm_head
    assert lm_head.lora_B["default"].weight.grad.abs().sum() > 0
    assert lm_head.base_layer.weight.grad is None


def official_ib_ft_loss(model, b, layer, alpha, beta, seed):
    """The loss of the official IB-FT code (OPTML-Group/MemorizationBarrier, util/ModelWithIB.py), re-implemented:
    all hidden states requested, h = hidden_states[layer + 1], z sampled over (B, N, D), KL `.mean()` over every
    element (padding included), full-vocab IB logits over the whole sequence, CE over labels != -100."""
    encoder = encoder_of(model)
    lm_head = model.get_base_model().get_output_embeddings()

    def supervised_ce(logits, labels):
        logits, labels = logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten()
        keep = labels != -100
        return F.cross_entropy(logits[keep], labels[keep])

    torch.manual_seed(seed)
    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True)
    h = out.hidden_states[layer + 1]
    mu, logvar = encoder.mu(h), encoder.logvar(h).clamp(min=-4.0, max=4.0)
    z = mu + (0.5 * logvar).exp() * torch.randn_like(logvar)
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()
    ce_ib = supervised_ce(lm_head(encoder.up(z)), b["labels"])
    ce = supervised_ce(out.logits, b["labels"])
    return ce + alpha * (kl + beta * ce_ib), kl, ce_ib


@pytest.mark.parametrize("arch", list(ARCHS))
def test_paper_settings_equal_the_official_loss(arch):
    model = ib_model(arch, ib_kl_mask="all", ib_final_norm=False, ib_input_norm="none", ib_alpha=0.2, ib_beta=0.01)
    b = batch()
    with torch.no_grad():
        reference, kl_ref, ce_ib_ref = official_ib_ft_loss(model, b, IB_BLOCK, 0.2, 0.01, seed=5)
        torch.manual_seed(5)
        out = model(**b)
        total = out.loss
    terms = ib_terms(model)
    torch.testing.assert_close(terms.kl(), kl_ref.reshape(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms.ce_ib(), ce_ib_ref.reshape(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(total, reference, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_ib_gradients_reach_blocks_up_to_L_and_the_encoder_only(arch):
    model = ib_model(arch)
    model(**batch())
    ib_terms(model).loss().backward()
    pattern = re.compile(r"\.(?:layers|h)\.(\d+)\.")
    lora_params = [(n, p) for n, p in model.named_parameters() if "lora_" in n and "lora_ib_encoders" not in n]
    seen = set()
    for name, param in lora_params:
        block = int(pattern.search(name).group(1))
        seen.add(block)
        if block <= IB_BLOCK:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
        else:
            assert param.grad is None or not param.grad.any(), name
    assert seen == {0, 1, 2, 3}
    for name, param in encoder_of(model).named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)  # base stays frozen


def test_no_vocab_wide_tensor_for_the_whole_sequence_in_the_ib_branch():
    """Every tensor the IB forward creates beyond the plain LoRA forward's has at most S rows of vocab width."""

    class RecordShapes(TorchDispatchMode):
        """Shapes of the tensors every op creates, leaving out views of the (vocab, H) output weight."""

        def __init__(self, weight):
            super().__init__()
            self.weight_storage = weight.untyped_storage().data_ptr()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() != self.weight_storage:
                    self.shapes.append(tuple(tensor.shape))
            return out

    b = batch()
    vocab = 300
    ib = ib_model("llama")
    plain = get_peft_model(tiny_llama(), LoraConfig(task_type="CAUSAL_LM", **LORA)).train()
    shapes = {}
    for name, model in (("ib", ib), ("plain", plain)):
        with RecordShapes(model.get_base_model().get_output_embeddings().weight) as recorder:
            model(**b)
        shapes[name] = Counter(s for s in recorder.shapes if s and s[-1] == vocab)
    extra = shapes["ib"] - shapes["plain"]
    assert extra, "the IB branch computed no vocab-wide tensor at all: is the recorder seeing it?"
    for shape in extra:
        assert math.prod(shape[:-1]) <= NUM_SUPERVISED < NUM_POSITIONS, shape


# ---- save, load, export formats ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_save_and_reload(arch, tmp_path):
    model = ib_model(arch, ib_kl_mask="response", ib_logvar_min=-3.0)
    perturb_adapter(model)
    b = batch()
    logits = eval_logits(model, b)
    torch.manual_seed(21)
    model(**b)
    terms = ib_terms(model)
    model.save_pretrained(tmp_path)

    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    config = model.peft_config["default"]
    assert saved["peft_type"] == "IBLORA"
    for field in (
        "ib_layers",
        "ib_dim",
        "ib_alpha",
        "ib_beta",
        "ib_logvar_min",
        "ib_logvar_max",
        "ib_kl_mask",
        "ib_final_norm",
        "ib_blocks_path",
    ):
        assert saved[field] == getattr(config, field), field
    weights = load_file(tmp_path / "adapter_model.safetensors")
    encoder_keys = {k for k in weights if "lora_ib_encoders" in k}
    assert encoder_keys == {
        f"base_model.lora_ib_encoders.{IB_BLOCK}.{part}.{kind}"
        for part in ("mu", "logvar", "up")
        for kind in ("weight", "bias")
    }  # adapter-name free, like LoRA's keys
    for part in ("mu", "logvar", "up"):
        assert torch.equal(
            weights[f"base_model.lora_ib_encoders.{IB_BLOCK}.{part}.weight"], getattr(encoder_of(model), part).weight
        )

    plain_load = PeftModel.from_pretrained(ARCHS[arch](), tmp_path)
    assert not plain_load.training
    assert torch.equal(eval_logits(plain_load, b), logits)
    assert not any(p.requires_grad for p in encoder_of(plain_load).parameters())

    for kwargs in ({"is_trainable": True}, {"is_trainable": True, "adapter_name": "renamed"}):
        loaded = PeftModel.from_pretrained(ARCHS[arch](), tmp_path, **kwargs).train()
        adapter = kwargs.get("adapter_name", "default")
        assert all(p.requires_grad for p in encoder_of(loaded, adapter).parameters())
        assert torch.equal(eval_logits(loaded, b), logits)
        torch.manual_seed(21)
        loaded(**b)
        reloaded = ib_terms(loaded)
        assert torch.equal(reloaded.kl_sum, terms.kl_sum) and torch.equal(reloaded.ce_sum, terms.ce_sum), kwargs


def test_auto_peft_model_for_causal_lm(tmp_path):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_llama().save_pretrained(base_dir)
    model = ib_model("llama")
    perturb_adapter(model)
    model.peft_config["default"].base_model_name_or_path = str(base_dir)
    model.save_pretrained(adapter_dir)
    b = batch()
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter_dir)
    assert isinstance(loaded.base_model, IBLoraModel)
    assert torch.equal(eval_logits(loaded, b), eval_logits(model, b))


# ---- inference runs no IB computation ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_eval_generate_and_disabled_adapters_run_no_ib(arch):
    model = ib_model(arch)
    perturb_adapter(model)
    b = batch()
    block = blocks_of(model)[IB_BLOCK]
    hooks_seen = []
    block.register_forward_pre_hook(lambda module, args: hooks_seen.append(len(module._forward_hooks)))

    model(**b)  # positive control: a training forward with labels hooks the block and records terms
    assert hooks_seen == [1] and ib_terms(model).layers == [IB_BLOCK]

    def assert_no_ib():
        assert hooks_seen and set(hooks_seen) == {0}
        with pytest.raises(RuntimeError, match="No IB terms"):
            ib_terms(model)
        hooks_seen.clear()

    hooks_seen.clear()
    model.eval()
    with torch.no_grad():
        logits = model(**b).logits
    assert_no_ib()
    model.generate(input_ids=b["input_ids"][:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert_no_ib()
    model.train()
    model.generate(input_ids=b["input_ids"][:1, :5], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert_no_ib()
    with model.disable_adapter():
        base_logits = model(**b).logits
    assert_no_ib()
    with torch.no_grad():
        reference_base_logits = ARCHS[arch]()(**b).logits
    torch.testing.assert_close(base_logits, reference_base_logits, rtol=0, atol=0)

    plain = get_peft_model(ARCHS[arch](), LoraConfig(task_type="CAUSAL_LM", **LORA))
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "lora_ib_encoders" not in k})
    assert torch.equal(eval_logits(plain, b), logits)
    assert not torch.allclose(logits, reference_base_logits)  # LoRA is not a no-op here


@pytest.mark.parametrize("arch", list(ARCHS))
def test_merge_and_unload(arch):
    model = ib_model(arch)
    perturb_adapter(model)
    b = batch()
    logits = eval_logits(model, b)
    model(**b)
    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        merged_logits = merged(**b).logits
    torch.testing.assert_close(merged_logits, logits, rtol=0, atol=1e-5)
    for name, module in merged.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert not isinstance(module, IBEncoder) and "lora" not in name, name
    with pytest.raises(ValueError, match="holds no IB-LoRA adapter"):
        ib_terms(merged)


def test_multiple_adapters(tmp_path):
    model = ib_model("llama")
    model.add_adapter("second", IBLoraConfig(task_type="CAUSAL_LM", **{**LORA, "ib_layers": 1, "ib_dim": 4}))
    first_encoders = model.base_model.lora_ib_encoders["default"]
    second_encoders = model.base_model.lora_ib_encoders["second"]
    assert list(second_encoders) == ["1"] and second_encoders["1"].mu.out_features == 4
    b = batch()

    def trainable(encoders):
        return {p.requires_grad for p in encoders.parameters()}

    assert trainable(first_encoders) == {True} and trainable(second_encoders) == {False}
    model(**b)
    assert ib_terms(model).layers == [IB_BLOCK]

    model.set_adapter("second")
    assert trainable(first_encoders) == {False} and trainable(second_encoders) == {True}
    model(**b)
    assert ib_terms(model).layers == [1] and ib_terms(model, "second").ib_dim == 4
    with pytest.raises(RuntimeError, match="No IB terms for adapter 'default'"):
        ib_terms(model, "default")
    ib_terms(model).loss().backward()
    assert second_encoders["1"].mu.weight.grad is not None and first_encoders["2"].mu.weight.grad is None

    model.set_adapter("default")
    model.save_pretrained(tmp_path)
    first_saved = load_file(tmp_path / "adapter_model.safetensors")
    second_saved = load_file(tmp_path / "second" / "adapter_model.safetensors")
    assert {k for k in first_saved if "lora_ib_encoders" in k} == {
        f"base_model.lora_ib_encoders.2.{p}.{k}" for p in ("mu", "logvar", "up") for k in ("weight", "bias")
    }
    assert {k for k in second_saved if "lora_ib_encoders" in k} == {
        f"base_model.lora_ib_encoders.1.{p}.{k}" for p in ("mu", "logvar", "up") for k in ("weight", "bias")
    }
    assert torch.equal(second_saved["base_model.lora_ib_encoders.1.up.weight"], second_encoders["1"].up.weight)

    model.delete_adapter("second")
    assert list(model.base_model.lora_ib_encoders) == ["default"]
    assert not any("second" in name for name, _ in model.named_parameters())
    model(**b)
    assert ib_terms(model).layers == [IB_BLOCK]


# ---- PEFT's tuner life cycle: checks before any change ------------------------------------------------------------


def snapshot(model: nn.Module) -> list:
    """What adding an adapter can change: every module's type, hooks, peft_config and parameters (trainability,
    values)."""
    return [
        (
            name,
            type(module),
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            hasattr(module, "peft_config"),
            [(p_name, p.requires_grad, p.detach().tolist()) for p_name, p in module.named_parameters(recurse=False)],
        )
        for name, module in model.named_modules()
    ]


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"ib_layers": 4}, r"ib_layers=4: block index 4 is out of range for a model with 4 decoder blocks"),
        ({"ib_layers": 0.1}, r"ib_layers=0.1 selects hidden_states\[0\]"),
        ({"ib_blocks_path": "model.norm"}, r"ib_blocks_path='model.norm' does not name an nn.ModuleList"),
    ],
)
def test_a_config_that_does_not_fit_leaves_the_model_untouched(overrides, error):
    base = tiny_llama()
    before = snapshot(base)
    with pytest.raises(ValueError, match=error):
        get_peft_model(base, IBLoraConfig(task_type="CAUSAL_LM", **{**LORA, **IB, **overrides}))
    assert snapshot(base) == before


def test_a_second_adapter_that_does_not_fit_changes_nothing():
    model = ib_model("llama")
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"block index 9 is out of range"):
        model.add_adapter("second", IBLoraConfig(task_type="CAUSAL_LM", **{**LORA, "ib_layers": 9}))
    assert snapshot(model) == before
    assert list(model.peft_config) == ["default"] and list(model.base_model.lora_ib_encoders) == ["default"]


def test_only_ib_lora_configs_and_only_through_the_tuner():
    base = tiny_llama()
    before = snapshot(base)
    with pytest.raises(TypeError, match=r"IBLoraModel needs an IBLoraConfig, got LoraConfig"):
        IBLoraModel(base, LoraConfig(**LORA), "default")
    assert snapshot(base) == before
    # The encoders live on the tuner, which `inject_adapter_in_model` would throw away: PEFT refuses, as for VeRA.
    with pytest.raises(ValueError, match="uses shared state"):
        inject_adapter_in_model(IBLoraConfig(**LORA, **IB), base)


# ---- batch layouts and memory-saving modes -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
def test_padding_free_packed_batch_equals_separate_sequences(arch):
    # logvar pinned at a tiny variance (std e^-20) so z = mu up to float rounding and the three runs share the noise.
    model = ib_model(arch, ib_logvar_min=-40.0)
    encoder = encoder_of(model)
    with torch.no_grad():
        encoder.logvar.weight.zero_(), encoder.logvar.bias.fill_(-40.0)
    ids = batch()["input_ids"][0]
    first, second = ids[:7], ids[7:12]
    first_labels, second_labels = first.clone(), second.clone()
    first_labels[:3] = -100  # prompt of 3 tokens
    second_labels[:2] = -100  # prompt of 2 tokens: the first token is -100, no cross-sequence target
    packed = {
        "input_ids": torch.cat([first, second])[None],
        "labels": torch.cat([first_labels, second_labels])[None],
        "position_ids": torch.cat([torch.arange(7), torch.arange(5)])[None],
        "use_cache": False,
    }
    model(**packed)
    packed_terms = ib_terms(model)
    assert int(packed_terms.num_kl_positions) == 12  # every token: no attention_mask, no padding
    assert int(packed_terms.num_ce_positions) == 4 + 3
    sums = []
    for ids_, labels in ((first, first_labels), (second, second_labels)):
        model(input_ids=ids_[None], labels=labels[None], use_cache=False)
        sums.append(ib_terms(model))
    assert [int(t.num_kl_positions) for t in sums] == [7, 5] and [int(t.num_ce_positions) for t in sums] == [4, 3]
    torch.testing.assert_close(packed_terms.kl_sum, sums[0].kl_sum + sums[1].kl_sum, rtol=1e-5, atol=0)
    torch.testing.assert_close(packed_terms.ce_sum, sums[0].ce_sum + sums[1].ce_sum, rtol=1e-5, atol=0)


def enable_checkpointing(model, use_reentrant: bool) -> None:
    """transformers' activation checkpointing on `model`'s base, by the name the installed release gives it
    (`activation_checkpointing_enable`; `gradient_checkpointing_enable` before it, deprecated since)."""
    base = model.get_base_model()
    if hasattr(base, "activation_checkpointing_enable"):
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": use_reentrant})
        assert base.is_activation_checkpointing
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
        assert base.is_gradient_checkpointing


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("use_reentrant", [False, True])
def test_gradient_checkpointing_same_loss_and_gradients(arch, use_reentrant, monkeypatch):
    """With either checkpointing flavour, the IB terms are computed once per training forward, from the forward's
    block outputs (a block that runs again in the backward recomputation changes nothing), and the loss, the terms
    and every gradient equal those without checkpointing. (Up to transformers 5.22 the recomputation reruns a block's
    forward hooks, from 5.23 on only its `forward`: what holds must not depend on that.)"""
    b = batch()
    results = []
    for checkpointing in (False, True):
        model = ib_model(arch)
        if checkpointing:
            enable_checkpointing(model, use_reentrant)
        computed = []
        compute = model.base_model._ib_terms
        monkeypatch.setattr(model.base_model, "_ib_terms", lambda *args: computed.append(1) or compute(*args))
        torch.manual_seed(8)
        out = model(**b)
        loss = out.loss
        loss.backward()
        assert len(computed) == 1  # once in the forward; the backward computes no terms
        assert not any(block._forward_hooks for block in blocks_of(model))  # the capture hooks left with the forward
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), ib_terms(model), grads))
    (loss, terms, grads), (loss_ckpt, terms_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms_ckpt.kl_sum, terms.kl_sum, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(terms_ckpt.ce_sum, terms.ce_sum, rtol=1e-6, atol=1e-6)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 6
    for name, grad in grads.items():
        assert grad is not None and grads_ckpt[name] is not None, name
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-7, msg=name)


class ToyConfig(PretrainedConfig):
    model_type = "ib_toy_checkpointed"


class ReentrantCheckpointedLM(PreTrainedModel):
    """Checkpoints each block call (hooks included) with reentrant checkpointing, together with an op applied to the
    block's output, so the output the hooks see is made under no_grad and never gets a grad_fn. (Without the op,
    autograd.Function hands back the very tensor the hook saw, now with a grad_fn, and IB training just works.)"""

    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList(ToyBlock(16) for _ in range(3))
        self.head = nn.Linear(16, 50, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, labels=None, **kwargs):
        h = self.embed(input_ids).requires_grad_()
        for block in self.blocks:
            h = checkpoint(lambda x, block=block: 0.5 * block(x), h, use_reentrant=True)
        logits = self.head(h)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutput(loss=loss, logits=logits)


def test_block_run_under_no_grad_is_a_clear_error():
    torch.manual_seed(0)
    model = get_peft_model(
        ReentrantCheckpointedLM(ToyConfig()),
        IBLoraConfig(r=2, target_modules=["proj"], ib_dim=4, ib_layers=1, ib_blocks_path="blocks"),
    ).train()
    input_ids = torch.arange(2, 22).reshape(2, 10)
    with pytest.raises(RuntimeError, match=r"carry no gradient.*use_reentrant': False"):
        model(input_ids=input_ids, labels=input_ids)
    assert all(not block._forward_hooks for block in model.base_model.model.blocks)
