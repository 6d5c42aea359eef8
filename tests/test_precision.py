"""The dtype rule (trl_ib.precision) and the IB terms under bf16 autocast."""

import pytest
import torch
from peft import get_peft_model

from peft_ib import IBLoraConfig, ib_terms
from tiny_models import batch, tiny_llama
from trl_ib import IBSFTConfig, precision
from trl_ib.cli.eval import EvalArguments


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_cpu_rule_follows_the_cpu_capability(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert precision.native_bf16("cpu") is expected
    assert precision.default_dtype("cpu") == (torch.bfloat16 if expected else torch.float32)
    assert precision.resolve_dtype("rule", device="cpu") == precision.default_dtype("cpu")


def test_cuda_rule_asks_for_hardware_bf16_not_emulation(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: asked.append(including_emulation) or False
    )
    assert precision.native_bf16("cuda:0") is False and asked == [False]
    assert precision.native_bf16("meta") is False


def test_explicit_dtypes_and_a_bad_one():
    assert precision.resolve_dtype("float32") is torch.float32
    assert precision.resolve_dtype("bfloat16") is torch.bfloat16
    assert precision.resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="dtype='bf16': must be one of rule, auto, float32, bfloat16, float16"):
        precision.resolve_dtype("bf16")
    with pytest.raises(ValueError, match="dtype='fp32': must be one of"):
        EvalArguments(model_name_or_path="m", dataset="x", dtype="fp32")


@pytest.mark.parametrize("native", [True, False])
def test_ib_sft_config_bf16_default_is_the_rule_and_overrides_win(tmp_path, monkeypatch, native):
    monkeypatch.setattr("trl_ib.trainer.ib_sft_config.native_bf16", lambda device: native)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: None)  # a CPU-only machine
    args = IBSFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    assert (args.bf16, args.device.type) == (native, "cpu")
    assert (
        IBSFTConfig(output_dir=str(tmp_path), report_to="none").bf16 is False
    )  # transformers: CPU bf16 needs use_cpu
    assert IBSFTConfig(output_dir=str(tmp_path), report_to="none", bf16=False).bf16 is False


def test_ib_terms_are_float32_under_bf16_autocast_and_close_to_float32():
    torch.manual_seed(0)
    model = get_peft_model(tiny_llama(), IBLoraConfig(r=4, target_modules="all-linear", ib_layers=1, ib_dim=8))
    model.train()
    inputs = batch()
    terms = {}
    for name, enabled in (("float32", False), ("bf16", True)):
        torch.manual_seed(1)  # the same z noise
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            model(**inputs)
        terms[name] = ib_terms(model)
    assert terms["bf16"].kl_sum.dtype == terms["bf16"].ce_sum.dtype == torch.float32
    torch.testing.assert_close(terms["bf16"].kl(), terms["float32"].kl(), rtol=0.05, atol=0)
    torch.testing.assert_close(terms["bf16"].ce_ib(), terms["float32"].ce_ib(), rtol=0.05, atol=0)
