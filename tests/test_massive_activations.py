"""IBLoraConfig.ib_input_norm: the encoder reads h / rms(h), so a massive activation cannot dominate the KL."""

import math

import pytest
import torch
from datasets import Dataset
from peft import get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_ib import IBEncoder, IBLoraConfig, ib_terms
from peft_ib.layer import kl_to_standard_normal
from peft_ib.model import find_decoder_blocks
from tiny_models import batch, tiny_llama, train_tokenizer
from trl_ib import IBSFTConfig, IBSFTTrainer
from trl_ib.builtin import code_dataset, resolve_model

IB_BLOCK = 1
CE_FIRST_BATCH = 1.0186  # ce of SmolLM2-135M-Instruct on the first batch of 4 shipped rows (seed 0), nats per token
SINK_SCALE = 1000.0  # position 0's hidden state made 1000x larger: SmolLM2-135M's sink is ~110x its median norm


def test_rms_input_is_h_over_its_rms():
    encoder = IBEncoder(2, 2, -4.0, 4.0, "rms")
    with torch.no_grad():
        encoder.mu.weight.copy_(torch.eye(2)), encoder.mu.bias.zero_()
    h = torch.tensor([[3.0, 4.0], [0.0, -2.0]])  # rms: sqrt((9 + 16) / 2), sqrt(4 / 2)
    mu, _ = encoder.encode(h)
    expected = torch.tensor(
        [[3 / math.sqrt(12.5 + 1e-6), 4 / math.sqrt(12.5 + 1e-6)], [0.0, -2 / math.sqrt(2 + 1e-6)]]
    )
    torch.testing.assert_close(mu, expected, rtol=1e-6, atol=0)
    # 'none' is the paper's encoder: mu = W_mu h + b_mu on h itself.
    raw = IBEncoder(2, 2, -4.0, 4.0, "none")
    raw.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(raw.encode(h)[0], h, rtol=0, atol=0)


def test_kl_at_initialization_is_model_independent():
    """
    With h / rms(h) (norm sqrt(H)) and PEFT-style nn.Linear init (weights and bias U(-1/sqrt(H), 1/sqrt(H))), mu and
    logvar are each ~N(0, s2) with s2 = 1/3 + 1/(3H) over initializations, so the expected KL per position and dim is
    1/2 (s2 + E[exp(logvar)] - 1 - E[logvar]) = 1/2 (s2 + exp(s2 / 2) - 1): ~0.258, whatever the scale of h.
    """
    hidden, dim, positions, seeds = 256, 64, 16, 40
    s2 = 1 / 3 + 1 / (3 * hidden)
    expected = 0.5 * (s2 + math.exp(s2 / 2) - 1)
    generator = torch.Generator().manual_seed(0)
    h = torch.randn(positions, hidden, generator=generator)
    h[0] *= SINK_SCALE
    kls = {"small": [], "large": []}
    for seed in range(seeds):
        torch.manual_seed(seed)
        encoder = IBEncoder(hidden, dim, -4.0, 4.0, "rms")
        with torch.no_grad():
            kls["small"].append(kl_to_standard_normal(*encoder.encode(h)).mean().item())
            kls["large"].append(kl_to_standard_normal(*encoder.encode(h * 500)).mean().item())
    assert sum(kls["small"]) / seeds == pytest.approx(expected, rel=0.03)
    assert kls["large"] == pytest.approx(kls["small"], rel=1e-5)  # invariant to the scale of h


def model_with_sink(input_norm: str, sink_scale: float):
    """A tiny IB-LoRA Llama whose IB block output has position 0 multiplied by `sink_scale` (an attention sink)."""
    torch.manual_seed(0)
    model = get_peft_model(
        tiny_llama(),
        IBLoraConfig(r=4, target_modules="all-linear", ib_layers=IB_BLOCK, ib_dim=8, ib_input_norm=input_norm),
    )

    def massive_first_position(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = torch.cat([hidden[:, :1] * sink_scale, hidden[:, 1:]], dim=1)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    find_decoder_blocks(model.get_base_model())[1][IB_BLOCK].register_forward_hook(massive_first_position)
    return model.train()


@pytest.mark.parametrize("input_norm", ["rms", "none"])
def test_a_massive_position_dominates_the_kl_only_without_the_norm(input_norm):
    kl = {}
    for scale in (1.0, SINK_SCALE):
        model = model_with_sink(input_norm, scale)
        torch.manual_seed(5)
        model(**batch())
        kl[scale] = ib_terms(model).kl_sum.item()
    if input_norm == "rms":
        # h / rms(h) does not see the scale, up to eps = 1e-6 next to mean(h^2) ~ 4e-4 (embeddings of std 0.02).
        assert kl[SINK_SCALE] == pytest.approx(kl[1.0], rel=1e-3)
    else:
        # mu^2 grows ~1e6x at 3 of the 30 KL positions (position 0 of each row): those 3 are the whole KL.
        assert kl[SINK_SCALE] > 100 * kl[1.0]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.mark.parametrize("input_norm, warns", [("none", True), ("rms", False)])
def test_trainer_warns_when_the_first_penalty_swamps_ce(tmp_path, tokenizer, caplog, input_norm, warns):
    model = model_with_sink(input_norm, 10 * SINK_SCALE)  # the tiny random model's ce is ~5.7 nats
    data = Dataset.from_dict(
        {
            "prompt": [f"Write f{i}\n" for i in range(4)],
            "completion": [f"def f{i}(a):\n    return a\n" for i in range(4)],
        }
    )
    args = IBSFTConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=1,
        logging_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = IBSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer)
    with caplog.at_level("WARNING", logger="trl_ib.trainer.ib_sft_trainer"):
        trainer.train()
    log = trainer.state.log_history[0]
    messages = [r.getMessage() for r in caplog.records if r.name == "trl_ib.trainer.ib_sft_trainer"]
    assert (log["ib_penalty"] > 10 * log["ce"]) == warns
    if warns:
        (message,) = messages
        assert f"{log['ib_penalty'] / log['ce']:.0f}x the task loss" in message
        assert "ib_input_norm='rms'" in message and "ib_alpha" in message
    else:
        assert messages == []


def test_config_rejects_unknown_input_norm():
    with pytest.raises(ValueError, match=r"ib_input_norm='layer': must be one of 'rms', 'none'"):
        IBLoraConfig(ib_input_norm="layer")


# ---- the real model: SmolLM2-135M-Instruct, whose attention sink is ~110x the median norm at block 18 ---------------


def smollm2_train_logs(tmp_path, input_norm: str, max_steps: int) -> list[dict]:
    """IBSFTTrainer's per-step train logs on the built-in base: the paper's depth 0.625, D 64, batches of 4 rows."""
    path = resolve_model("smollm2-135m-instruct")
    peft_config = IBLoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", ib_layers=0.625, ib_dim=64, ib_input_norm=input_norm
    )
    args = IBSFTConfig(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_steps=max_steps,
        logging_steps=1,
        per_device_train_batch_size=4,
        learning_rate=1e-4,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
    )
    trainer = IBSFTTrainer(
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        args=args,
        train_dataset=code_dataset().select(range(8)),
        processing_class=AutoTokenizer.from_pretrained(path),
        peft_config=peft_config,
    )
    trainer.train()
    return [log for log in trainer.state.log_history if "ib_penalty" in log]


@pytest.mark.slow
def test_smollm2_first_steps_with_the_default_norm(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="trl_ib.trainer.ib_sft_trainer"):
        logs = smollm2_train_logs(tmp_path, "rms", max_steps=2)
    assert not [r for r in caplog.records if r.name == "trl_ib.trainer.ib_sft_trainer"]
    for log in logs:
        assert log["loss"] == pytest.approx(log["ce"] + log["ib_penalty"], rel=1e-4)
        assert log["ib_penalty"] == pytest.approx(0.2 * (log["ib_kl"] + 0.01 * log["ib_ce"]), rel=1e-4)
    first = logs[0]
    # The base model's own loss on the shipped rows, and the KL of a fresh encoder on h / rms(h): ~0.26 expected.
    assert first["ce"] == pytest.approx(CE_FIRST_BATCH, rel=1e-3)
    assert 0.15 < first["ib_kl"] < 0.4
    assert first["ib_penalty"] < 0.2 * first["ce"]


@pytest.mark.slow
def test_smollm2_without_the_norm_the_sink_swamps_ce_and_the_trainer_says_so(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="trl_ib.trainer.ib_sft_trainer"):
        (first,) = smollm2_train_logs(tmp_path, "none", max_steps=1)
    assert first["ce"] == pytest.approx(CE_FIRST_BATCH, rel=1e-3)  # the same batch: ce does not see the IB branch
    assert first["ib_kl"] > 1000 and first["ib_penalty"] > 100 * first["ce"]
    (message,) = [r.getMessage() for r in caplog.records if r.name == "trl_ib.trainer.ib_sft_trainer"]
    assert "ib_input_norm='none'" in message and "ib_input_norm='rms' bounds it" in message
