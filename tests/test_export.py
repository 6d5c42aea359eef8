"""peft_ib.export: an IB-LoRA adapter exported as plain LoRA loads with stock PEFT, without peft_ib, same logits."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

from peft_ib import IBLoraConfig, export_lora
from tiny_models import batch, tiny_llama

# Runs in a fresh interpreter: stock transformers + PEFT only, peft_ib never imported.
STOCK_PEFT_LOAD = textwrap.dedent(
    """
    import sys
    import torch
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForCausalLM

    base_dir, adapter_dir, inputs_path, logits_path = sys.argv[1:5]
    assert PeftConfig.from_pretrained(adapter_dir).peft_type == "LORA"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    inputs = torch.load(inputs_path)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert "peft_ib" not in sys.modules, "the stock loader imported peft_ib"
    torch.save(logits, logits_path)
    """
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An IB-LoRA model whose LoRA and encoder weights are far from init, its eval logits and the base on disk."""
    root = tmp_path_factory.mktemp("export")
    tiny_llama().save_pretrained(root / "base")
    torch.manual_seed(3)
    config = IBLoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        rank_pattern={"v_proj": 2},
        init_lora_weights=False,
        ib_layers=0.625,
        ib_dim=8,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(tiny_llama(), config)
    generator = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))
    model.eval()
    inputs = {k: v for k, v in batch().items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
    return root, model, inputs, logits


def test_export_writes_plain_lora(trained, tmp_path):
    _, model, _, _ = trained
    out = export_lora(model, tmp_path / "lora")
    assert out == tmp_path / "lora"
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["peft_type"] == "LORA"
    assert not [key for key in saved if key.startswith("ib_")]
    assert saved["inference_mode"] is True  # as PEFT's own save_pretrained writes it
    ib_config = model.peft_config["default"]
    for field in ("r", "lora_alpha", "rank_pattern", "init_lora_weights", "task_type"):
        assert saved[field] == getattr(ib_config, field), field
    assert set(saved["target_modules"]) == {"q_proj", "v_proj", "down_proj"}

    weights = load_file(out / "adapter_model.safetensors")
    assert not [key for key in weights if "ib_encoders" in key]
    # Exactly the tensors a plain LoRA adapter with the same options holds, with the trained values.
    plain = get_peft_model(
        tiny_llama(), LoraConfig(**{k: saved[k] for k in ("r", "lora_alpha", "target_modules", "rank_pattern")})
    )
    plain_dir = tmp_path / "plain"
    plain.save_pretrained(plain_dir)
    plain_weights = load_file(plain_dir / "adapter_model.safetensors")
    assert {k: v.shape for k, v in weights.items()} == {k: v.shape for k, v in plain_weights.items()}
    params = dict(model.named_parameters())
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    assert torch.equal(weights[key], params[key.replace("lora_B.weight", "lora_B.default.weight")])
    assert (out / "README.md").exists()  # the export model card


def test_exported_adapter_loads_in_stock_peft_without_peft_ib(trained, tmp_path):
    root, model, inputs, logits = trained
    out = export_lora(model, tmp_path / "lora")
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": "", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            STOCK_PEFT_LOAD,
            str(root / "base"),
            str(out),
            str(tmp_path / "inputs.pt"),
            str(tmp_path / "logits.pt"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    stock_logits = torch.load(tmp_path / "logits.pt")
    assert torch.equal(stock_logits, logits)
    with torch.no_grad():
        base_logits = tiny_llama()(**inputs).logits
    assert not torch.allclose(stock_logits, base_logits)  # the adapter was applied


def test_export_from_a_saved_adapter_directory(trained, tmp_path):
    _, model, _, _ = trained
    model.save_pretrained(tmp_path / "ib")
    from_model = export_lora(model, tmp_path / "from_model")
    from_path = export_lora(str(tmp_path / "ib"), tmp_path / "from_path")
    assert json.loads((from_path / "adapter_config.json").read_text()) == json.loads(
        (from_model / "adapter_config.json").read_text()
    )
    path_weights = load_file(from_path / "adapter_model.safetensors")
    model_weights = load_file(from_model / "adapter_model.safetensors")
    assert path_weights.keys() == model_weights.keys() and path_weights
    for key, value in model_weights.items():
        assert torch.equal(path_weights[key], value), key


def test_export_refuses_a_plain_lora_adapter(tmp_path):
    get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    with pytest.raises(ValueError, match="expects an IB-LoRA adapter.*got peft_type LORA"):
        export_lora(str(tmp_path / "lora"), tmp_path / "out")
