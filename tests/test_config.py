"""peft_ib.config: IBLoraConfig validation, block resolution, JSON round trip, and every LoRA option alongside IB."""

import json

import pytest
import torch
from peft import LoraConfig, PeftConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from peft_ib import IBLoraConfig, ib_terms
from tiny_models import ToyBlock, batch, tiny_llama

# ---- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "allowed"),
    [
        ({"ib_layers": 0.0}, "ib_layers", "(0, 1]"),
        ({"ib_layers": 1.5}, "ib_layers", "(0, 1]"),
        ({"ib_layers": -0.5}, "ib_layers", "(0, 1]"),
        ({"ib_layers": []}, "ib_layers", "non-empty list of int"),
        ({"ib_layers": [1, 2, 1]}, "ib_layers", "unique"),
        ({"ib_layers": [1, True]}, "ib_layers", "non-empty list of int"),
        ({"ib_layers": [0.5]}, "ib_layers", "non-empty list of int"),
        ({"ib_layers": True}, "ib_layers", "an int block index, a list of ints, or a float in (0, 1]"),
        ({"ib_layers": "20"}, "ib_layers", "an int block index, a list of ints, or a float in (0, 1]"),
        ({"ib_dim": 0}, "ib_dim", "int >= 1"),
        ({"ib_dim": True}, "ib_dim", "int >= 1"),
        ({"ib_dim": 8.0}, "ib_dim", "int >= 1"),
        ({"ib_alpha": -0.1}, "ib_alpha", "number >= 0"),
        ({"ib_beta": -1}, "ib_beta", "number >= 0"),
        ({"ib_alpha": True}, "ib_alpha", "number >= 0"),
        ({"ib_logvar_min": 4.0, "ib_logvar_max": 4.0}, "ib_logvar_min", "smaller than ib_logvar_max"),
        ({"ib_logvar_min": 5.0, "ib_logvar_max": -5.0}, "ib_logvar_min", "smaller than ib_logvar_max"),
        ({"ib_kl_mask": "padding"}, "ib_kl_mask", "'attention', 'response', 'all'"),
        ({"ib_final_norm": "yes"}, "ib_final_norm", "True or False"),
        ({"ib_final_norm": 1}, "ib_final_norm", "True or False"),
    ],
)
def test_invalid_field_names_field_value_and_allowed(kwargs, field, allowed):
    with pytest.raises(ValueError) as info:
        IBLoraConfig(**kwargs)
    message = str(info.value)
    assert f"{field}={kwargs[field]!r}" in message
    assert allowed in message


def test_valid_fields_are_kept():
    config = IBLoraConfig(ib_layers=(3, -1), ib_dim=16, ib_alpha=0, ib_beta=0.02, ib_kl_mask="response")
    assert config.ib_layers == [3, -1]  # tuples become lists (JSON-friendly)
    assert (config.ib_dim, config.ib_alpha, config.ib_beta, config.ib_kl_mask) == (16, 0, 0.02, "response")
    assert IBLoraConfig().ib_layers == 0.625 and IBLoraConfig().ib_final_norm is False


# ---- resolve_ib_layers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ib_layers", "num_blocks", "expected"),
    [
        (0.625, 32, [19]),  # the paper: output of block 20 of 32 = hidden_states[20] = 0-based block 19
        (0.625, 4, [2]),  # 2.5 rounds half up to 3: hidden_states[3] = block 2
        (0.375, 4, [1]),  # 1.5 -> 2: hidden_states[2] = block 1
        (0.6, 4, [1]),  # 2.4 -> 2
        (0.7, 4, [2]),  # 2.8 -> 3
        (0.125, 4, [0]),  # 0.5 -> 1: the first block
        (1.0, 32, [31]),
        (5, 32, [5]),
        (-1, 4, [3]),
        (-4, 4, [0]),
        ([-1, 0, 2], 4, [0, 2, 3]),  # sorted, non-negative
    ],
)
def test_resolve_ib_layers(ib_layers, num_blocks, expected):
    assert IBLoraConfig(ib_layers=ib_layers).resolve_ib_layers(num_blocks) == expected


@pytest.mark.parametrize("ib_layers", [4, -5, [0, 7]])
def test_resolve_out_of_range_names_block_count(ib_layers):
    with pytest.raises(ValueError) as info:
        IBLoraConfig(ib_layers=ib_layers).resolve_ib_layers(4)
    assert "4 decoder blocks" in str(info.value)
    assert "-4 .. 3" in str(info.value)


def test_resolve_same_block_twice():
    with pytest.raises(ValueError, match=r"same block twice for 4 blocks"):
        IBLoraConfig(ib_layers=[3, -1]).resolve_ib_layers(4)


def test_resolve_float_that_rounds_to_the_embeddings():
    with pytest.raises(ValueError, match=r"hidden_states\[0\].*4 decoder blocks"):
        IBLoraConfig(ib_layers=0.1).resolve_ib_layers(4)  # 0.4 -> 0


def test_out_of_range_at_get_peft_model_names_the_models_block_count():
    with pytest.raises(ValueError, match=r"ib_layers=7: block index 7 is out of range for a model with 4 decoder"):
        get_peft_model(tiny_llama(), IBLoraConfig(r=2, target_modules=["q_proj"], ib_dim=4, ib_layers=7))


# ---- architectures the block search does not know ---------------------------------------------------------------


class ToyConfig(PretrainedConfig):
    model_type = "ib_toy"

    def __init__(self, vocab_size=40, hidden_size=16, num_blocks=3, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size, self.num_blocks = vocab_size, hidden_size, num_blocks


class ToyLM(PreTrainedModel):
    """A causal LM whose blocks sit at `stack` (none of the paths searched) and that has no final norm."""

    config_class = ToyConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.stack = nn.ModuleList(ToyBlock(config.hidden_size) for _ in range(config.num_blocks))
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self):
        return self.head

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        h = self.embed(input_ids)
        for block in self.stack:
            h = block(h)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
        return CausalLMOutput(loss=loss, logits=logits)


def toy_lm():
    torch.manual_seed(0)
    return ToyLM(ToyConfig())


def test_unknown_architecture_names_paths_looked_for_and_ib_blocks_path():
    with pytest.raises(ValueError) as info:
        get_peft_model(toy_lm(), IBLoraConfig(r=2, target_modules=["proj"], ib_dim=4, ib_layers=1))
    message = str(info.value)
    assert "ToyLM" in message
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        assert path in message
    assert "ib_blocks_path" in message


def test_ib_blocks_path_not_a_module_list():
    with pytest.raises(ValueError, match=r"ib_blocks_path='head' does not name an nn.ModuleList in ToyLM"):
        get_peft_model(toy_lm(), IBLoraConfig(r=2, target_modules=["proj"], ib_layers=1, ib_blocks_path="head"))


def test_unknown_architecture_works_with_ib_blocks_path():
    model = get_peft_model(
        toy_lm(), IBLoraConfig(r=2, target_modules=["proj"], ib_dim=4, ib_layers=-2, ib_blocks_path="stack")
    )
    model.train()
    input_ids = torch.arange(2, 22).reshape(2, 10)
    labels = input_ids.clone()
    labels[:, :3] = -100
    encoder = model.base_model.lora_ib_encoders["default"]["1"]  # -2 of 3 blocks
    with torch.no_grad():  # known mu / logvar: KL per position = sum_d 0.5 * (m^2 + e^l - 1 - l)
        encoder.mu.weight.zero_(), encoder.mu.bias.fill_(0.5)
        encoder.logvar.weight.zero_(), encoder.logvar.bias.fill_(1.0)
    out = model(input_ids=input_ids, labels=labels)
    terms = ib_terms(model)
    assert terms.layers == [1]
    assert int(terms.num_kl_positions) == 20  # no attention_mask: every position
    assert int(terms.num_ce_positions) == 2 * 7  # labels at 3..9 -> supervised positions 2..8
    per_dim = 0.5 * (0.25 + torch.e - 1 - 1.0)
    torch.testing.assert_close(terms.kl(), torch.tensor([per_dim]))
    out.loss.backward()
    assert encoder.up.weight.grad.abs().sum() > 0
    block0_lora = model.base_model.model.stack[0].proj.lora_B["default"].weight
    assert block0_lora.grad is not None


def test_final_norm_on_a_model_without_one_errors_at_get_peft_model():
    config = IBLoraConfig(r=2, target_modules=["proj"], ib_layers=1, ib_blocks_path="stack", ib_final_norm=True)
    with pytest.raises(ValueError, match=r"ib_final_norm=True, but ToyLM has none of the final-norm attributes norm"):
        get_peft_model(toy_lm(), config)


# ---- JSON round trip ------------------------------------------------------------------------------------------

IB_FIELDS = (
    "ib_layers",
    "ib_dim",
    "ib_alpha",
    "ib_beta",
    "ib_logvar_min",
    "ib_logvar_max",
    "ib_kl_mask",
    "ib_final_norm",
    "ib_blocks_path",
)


def test_json_round_trip(tmp_path):
    config = IBLoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=["q_proj", "v_proj"],
        ib_layers=[0, -1],
        ib_dim=16,
        ib_alpha=0.1,
        ib_beta=0.02,
        ib_logvar_min=-3.0,
        ib_logvar_max=5.0,
        ib_kl_mask="response",
        ib_final_norm=True,
        ib_blocks_path="model.layers",
        task_type="CAUSAL_LM",
    )
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == "IBLORA"
    assert {name: saved[name] for name in IB_FIELDS} == {
        "ib_layers": [0, -1],
        "ib_dim": 16,
        "ib_alpha": 0.1,
        "ib_beta": 0.02,
        "ib_logvar_min": -3.0,
        "ib_logvar_max": 5.0,
        "ib_kl_mask": "response",
        "ib_final_norm": True,
        "ib_blocks_path": "model.layers",
    }
    for loader in (PeftConfig, IBLoraConfig):
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is IBLoraConfig
        assert loaded.peft_type == "IBLORA"
        assert loaded.to_dict() == config.to_dict()


# ---- every LoRA option alongside IB -----------------------------------------------------------------------------

LORA_OPTIONS = {
    "r_alpha": dict(r=2, lora_alpha=5, target_modules=["q_proj", "o_proj"]),
    "dropout": dict(lora_dropout=0.1, target_modules=["q_proj", "v_proj"]),
    "all_linear": dict(target_modules="all-linear"),
    "list": dict(target_modules=["k_proj", "down_proj"]),
    "patterns": dict(
        target_modules=["q_proj", "v_proj", "down_proj"], rank_pattern={"v_proj": 3}, alpha_pattern={"down_proj": 7}
    ),
    "rslora": dict(target_modules=["q_proj", "v_proj"], use_rslora=True),
    "init_false": dict(target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    "gaussian": dict(target_modules=["q_proj", "v_proj"], init_lora_weights="gaussian"),
    "modules_to_save": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head"]),
    "dora": dict(target_modules=["q_proj", "v_proj"], use_dora=True),
}


def _lora_pair(options):
    options = {"r": 4, "lora_alpha": 8, **options}
    torch.manual_seed(7)
    plain = get_peft_model(tiny_llama(), LoraConfig(**options))
    torch.manual_seed(7)
    ib = get_peft_model(tiny_llama(), IBLoraConfig(**options, ib_dim=4, ib_layers=0.625))
    return plain, ib


@pytest.mark.parametrize("name", list(LORA_OPTIONS))
def test_lora_option_alongside_ib(name):
    plain, ib = _lora_pair(LORA_OPTIONS[name])
    plain_state = plain.state_dict()
    ib_state = {k: v for k, v in ib.state_dict().items() if "lora_ib_encoders" not in k}
    # The same modules with the same shapes, and (same seed, encoders made after LoRA) the same values.
    assert {k: v.shape for k, v in ib_state.items()} == {k: v.shape for k, v in plain_state.items()}
    for key, value in plain_state.items():
        assert torch.equal(ib_state[key], value), key
    trainable = {n for n, p in plain.named_parameters() if p.requires_grad}
    ib_trainable = {n for n, p in ib.named_parameters() if p.requires_grad}
    encoder_params = {n for n in ib_trainable if "lora_ib_encoders" in n}
    assert ib_trainable - encoder_params == trainable
    assert len(encoder_params) == 6  # mu, logvar, up: weight and bias, one encoder (block 2)
    plain_layers = {n: m for n, m in plain.named_modules() if isinstance(m, LoraLayer)}
    ib_layers = {n: m for n, m in ib.named_modules() if isinstance(m, LoraLayer)}
    assert plain_layers.keys() == ib_layers.keys() and plain_layers
    for module_name, layer in plain_layers.items():
        assert ib_layers[module_name].scaling == layer.scaling, module_name  # r, alpha, rslora, patterns
        assert ib_layers[module_name].r == layer.r, module_name

    ib.train()
    out = ib(**batch())
    terms = ib_terms(ib)
    assert terms.layers == [2] and torch.isfinite(terms.kl_sum).all() and torch.isfinite(terms.ce_sum).all()
    out.loss.backward()
    encoder = ib.base_model.lora_ib_encoders["default"]["2"]
    for param in encoder.parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0
    first_block_lora = [p for n, p in ib.named_parameters() if "layers.0." in n and "lora_" in n and p.requires_grad]
    assert first_block_lora and all(p.grad is not None for p in first_block_lora)


def test_option_patterns_and_rslora_values():
    """Hand-computed LoRA scalings, so the comparison with plain LoRA is not trivially equal-but-wrong."""
    _, ib = _lora_pair(LORA_OPTIONS["patterns"])
    layers = ib.base_model.model.model.layers[0]
    assert layers.self_attn.q_proj.scaling["default"] == 8 / 4
    assert layers.self_attn.v_proj.r["default"] == 3 and layers.self_attn.v_proj.scaling["default"] == 8 / 3
    assert layers.mlp.down_proj.scaling["default"] == 7 / 4
    _, ib = _lora_pair(LORA_OPTIONS["rslora"])
    assert ib.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == 8 / 4**0.5


def test_modules_to_save_lm_head_is_the_ib_branchs_output_projection():
    """ce_ib decodes with the model's own lm_head, i.e. the trainable copy when lm_head is in modules_to_save."""
    _, ib = _lora_pair(LORA_OPTIONS["modules_to_save"])
    ib.train()
    ib(**batch())
    ib_terms(ib).loss().backward()
    wrapper = ib.base_model.model.lm_head
    assert wrapper.modules_to_save["default"].weight.grad.abs().sum() > 0
    assert wrapper.original_module.weight.grad is None
