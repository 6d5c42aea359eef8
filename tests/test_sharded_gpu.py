"""FSDP2 and DeepSpeed ZeRO-3 through accelerate on GPUs: what tests/test_sharded_cpu.py cannot run on a CPU.

accelerate 1.15 applies FSDP only on accelerators (on CPU `ib-ft train` refuses an FSDP config), and the shipped GPU
configs (examples/accelerate/fsdp.yaml, zero3.yaml: nccl, bf16, the default persistence threshold) run only there.
Both load the base from a model saved with save_pretrained (ZeRO-3: the zero.Init load), large enough that its
matrices exceed DeepSpeed's 1e5-element persistence threshold and are really partitioned; IB-LoRA and the plain-LoRA
control. Marked `gpu`, deselected by default (pyproject addopts). On a machine with CUDA:
`python -m pytest -m gpu tests/test_sharded_gpu.py` (ZeRO-3 also needs deepspeed, README: the install line).
Not run yet: no GPU was available while building.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from test_cli_train import FAST, _free_port, assert_adapter_reloads
from tiny_models import tiny_llama, train_tokenizer

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    """hidden 512: q_proj (512 x 512) and lm_head (300 x 512) exceed ZeRO-3's default persistence threshold."""
    base = tmp_path_factory.mktemp("base")
    tokenizer = train_tokenizer(base)
    tiny_llama(vocab_size=len(tokenizer), hidden=512, num_layers=2).save_pretrained(base)
    return base


@pytest.mark.parametrize("peft_type", ["iblora", "lora"])
@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_sharded_training_on_gpus_from_a_saved_model(engine, peft_type, saved_base, tmp_path):
    processes = torch.cuda.device_count()
    assert processes >= 2, "the gpu tests shard over 2 or more CUDA devices"
    out, probe = tmp_path / "out", tmp_path / "probe"
    probe.mkdir()
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        f"examples/accelerate/{engine}.yaml",
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(_free_port()),
        "tests/sharded_probe.py",
        "train",
        "--model_name_or_path",
        str(saved_base),
        "--peft_type",
        peft_type,
        "--max_steps",
        "3",
        "--output_dir",
        str(out),
        "--bf16",
        "true",
        *FAST,
    ]
    result = subprocess.run(
        command, env={**os.environ, "PROBE_OUT": str(probe)}, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = json.loads((probe / "rank0.json").read_text())
    big = {name: shapes for name, shapes in rank0["shapes"].items() if math.prod(shapes[1]) > 1e5}
    assert any("q_proj.base_layer" in name for name in big) and any("lm_head" in name for name in big)
    for name, (local, whole) in big.items():  # sharded: a (0,) ZeRO-3 partition, or a DTensor shard of dim 0
        assert local == ([0] if engine == "zero3" else [math.ceil(whole[0] / processes), *whole[1:]]), name
    logs = [log for log in rank0["logs"] if "loss" in log]
    assert [log["step"] for log in logs] == [1, 2, 3] and all(math.isfinite(log["loss"]) for log in logs)
    if peft_type == "iblora":
        assert all(log["ib_kl"] > 0 and log["ib_ce"] > 0 for log in logs)
        assert_adapter_reloads(out)
    else:
        assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
        PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved_base), out)
