"""FSDP2 and DeepSpeed ZeRO-3 runs of `ib-ft train`, with the shipped accelerate configs: GPU only.

accelerate 1.15 enables FSDP only on accelerators (on CPU, `--use_fsdp` + `--use_cpu` silently becomes plain DDP),
and ZeRO-3 needs deepspeed and CUDA, so these are marked `gpu` and deselected by default (pyproject addopts).
On a CUDA machine: `python -m pytest -m gpu tests/test_sharded_gpu.py` (ZeRO-3 also needs `pip install deepspeed`).
"""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from test_cli_train import FAST, _free_port, assert_adapter_reloads

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("engine", ["fsdp", "zero3"])
def test_sharded_training_logs_ib_terms_and_saves_a_loadable_adapter(engine, tmp_path):
    assert torch.cuda.is_available(), "the gpu tests need CUDA"
    if engine == "zero3":
        assert importlib.util.find_spec("deepspeed"), "ZeRO-3 needs `pip install deepspeed`"
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"examples/accelerate/{engine}.yaml",
        "--num_processes", str(torch.cuda.device_count()), "--main_process_port", str(_free_port()),
        "-m", "trl_ib.cli", "train", "--max_steps", "3", "--output_dir", str(out), "--bf16", "true",
        *FAST[:-2], "--save_strategy", "steps", "--save_steps", "3",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    logs = [log for log in json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
            if "loss" in log]
    assert [log["step"] for log in logs] == [1, 2, 3]
    assert all(log["ib_kl"] > 0 and log["ib_ce"] > 0 for log in logs)
    assert_adapter_reloads(out)
