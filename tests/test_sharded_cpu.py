"""Sharded training on CPU, 2 processes over gloo: DeepSpeed ZeRO-3 and FSDP2, IB-LoRA and the plain-LoRA control.

Each run asserts that its parameters really were sharded (a test on an unsharded model would pass vacuously), and
compares with one process on the same global batch, weights and noise:
- ZeRO-3 through the user path: `accelerate launch --config_file examples/accelerate/zero3_cpu.yaml` of `ib-ft train`
  (tests/sharded_probe.py observes it), a zero.Init load from a model saved with save_pretrained, threshold 0;
- FSDP2 and ZeRO-3 in a plain loop (tests/sharded_worker.py under torchrun): one rank's batch fully masked at step 1.
The noise: logvar is clamped to [-31, -30] in the user path (std 3e-7, so z = mu to float tolerance), and the worker
draws it from one global tensor that each rank slices as one process would.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from test_cli_train import _free_port, assert_adapter_reloads, train
from tiny_models import tiny_llama, train_tokenizer
from trl_ib.cli import export
from trl_ib.trainer.distributed import check_distributed_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
DEEPSPEED_MISSING = (
    "ZeRO-3 needs deepspeed: DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed==0.19.8 (README)"
)
# Both arms: same LoRA, lr high enough that 3 steps move the adapter; logvar pinned (see the module docstring).
TRAIN = [
    "--dtype",
    "float32",
    "--max_steps",
    "3",
    "--report_to",
    "none",
    "--logging_steps",
    "1",
    "--per_device_train_batch_size",
    "4",
    "--ib_dim",
    "16",
    "--lora_r",
    "4",
    "--lora_dropout",
    "0",
    "--learning_rate",
    "1e-2",
    "--ib_logvar_min",
    "-31",
    "--ib_logvar_max",
    "-30",
    "--save_strategy",
    "no",
]


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    """A tiny Llama and its tokenizer, saved with save_pretrained (the path ZeRO-3 loads under zero.Init)."""
    base = tmp_path_factory.mktemp("base")
    tokenizer = train_tokenizer(base)
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(base)
    return base


def step_logs(logs: list[dict]) -> list[dict]:
    return [log for log in logs if "loss" in log]


@pytest.mark.slow
@pytest.mark.parametrize("peft_type", ["iblora", "lora"])
def test_zero3_user_path_matches_one_process(saved_base, tmp_path, peft_type):
    assert importlib.util.find_spec("deepspeed"), DEEPSPEED_MISSING
    flags = ["--model_name_or_path", str(saved_base), "--peft_type", peft_type, *TRAIN]
    out, probe = tmp_path / "zero3", tmp_path / "probe"
    probe.mkdir()
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "examples/accelerate/zero3_cpu.yaml",
        "--main_process_port",
        str(_free_port()),
        "tests/sharded_probe.py",
        "train",
        *flags,
        "--output_dir",
        str(out),
        "--ddp_backend",
        "gloo",
    ]
    result = subprocess.run(
        command, env={**ENV, "PROBE_OUT": str(probe)}, cwd=ROOT, capture_output=True, text=True, timeout=480
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]

    # Sharded: after step 1 every parameter, frozen base, LoRA and IB encoders alike, is a (0,) partition of the whole.
    for rank in ranks:
        shapes = rank["shapes"]
        assert any("lora_A" in name for name in shapes) and any("lm_head" in name for name in shapes)
        assert any("lora_ib_encoders" in name for name in shapes) == (peft_type == "iblora")
        assert all(local == [0] and math.prod(whole) > 0 for local, whole in shapes.values()), shapes

    # One process, the same global batch (2 micro-batches of 4 = 2 ranks x 4 rows), weights and noise.
    reference = train([*flags, "--output_dir", str(tmp_path / "ref"), "--gradient_accumulation_steps", "2"])
    sharded, single = step_logs(ranks[0]["logs"]), step_logs(reference.state.log_history)
    assert [log["step"] for log in sharded] == [1, 2, 3] and all(math.isfinite(log["loss"]) for log in sharded)
    keys = ["loss", "ce", "ib_kl", "ib_ce"] if peft_type == "iblora" else ["loss"]
    assert sharded[0]["loss"] > (sharded[0]["ce"] if peft_type == "iblora" else 0)  # the IB penalty is in the loss
    for key in keys:
        assert sharded[0][key] == pytest.approx(single[0][key], rel=1e-5), key

    # What the Trainer saved is exactly what was trained (gathered from the partitions), close to one process's
    # 3 steps, and a stock-PEFT load gives it back.
    saved = load_file(out / "adapter_model.safetensors")
    trained = load_file(probe / "trained.safetensors")
    single_state = get_peft_model_state_dict(reference.model)
    assert saved.keys() == trained.keys() == single_state.keys()
    assert any("lora_ib_encoders" in key for key in saved) == (peft_type == "iblora")
    for key, value in saved.items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0, msg=key)
        torch.testing.assert_close(value, single_state[key], rtol=1e-4, atol=1e-5, msg=key)
    assert max(value.abs().max() for key, value in saved.items() if "lora_B" in key) > 1e-3  # trained, not init
    if peft_type == "iblora":
        assert_adapter_reloads(out)
        lora = tmp_path / "exported"
        export.main(["--adapter", str(out), "--output", str(lora)])  # `ib-ft export`
        assert json.loads((lora / "adapter_config.json").read_text())["peft_type"] == "LORA"
        exported = load_file(lora / "adapter_model.safetensors")
        assert exported.keys() == {key for key in saved if "lora_ib_encoders" not in key}
        for key, value in exported.items():
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0)
    else:
        assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(saved_base), out)
        for key, value in get_peft_model_state_dict(loaded).items():
            torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


def assert_stock_peft_loads(adapter: Path, base: Path, expected: dict[str, torch.Tensor]) -> None:
    """The adapter loads with stock PEFT onto `base`, with exactly the `expected` adapter state."""
    loaded = get_peft_model_state_dict(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter))
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_fsdp2_and_zero3_loops_match_one_process_with_a_fully_masked_rank(tmp_path):
    """tests/sharded_worker.py: 3 steps of each engine x adapter, rank 1 without a supervised token at step 1 (with
    an early return in the IB branch, ZeRO-3 aborts there: a gloo collective mismatch on lm_head's gather)."""
    assert importlib.util.find_spec("deepspeed"), DEEPSPEED_MISSING
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "tests/sharded_worker.py",
        str(tmp_path),
    ]
    result = subprocess.run(command, env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=480)
    assert result.returncode == 0, result.stderr[-4000:]
    for engine in ("fsdp2", "zero3"):
        for peft_type in ("iblora", "lora"):
            run = tmp_path / f"{engine}-{peft_type}"
            report = json.loads(Path(f"{run}.json").read_text())
            shapes = report["local_and_whole_shapes"]
            assert any("lora_ib_encoders" in name for name in shapes) == (peft_type == "iblora")
            for name, (local, whole) in shapes.items():  # every parameter sharded: half of dim 0, or a (0,) partition
                assert local == ([whole[0] // 2, *whole[1:]] if engine == "fsdp2" else [0]), (engine, name)
            # Global per-token loss, ce, ib_kl, ib_ce at each step: sharded == one process on the whole batch.
            assert len(report["sharded"]) == 3
            for sharded, single in zip(report["sharded"], report["single"]):
                assert all(math.isfinite(x) for x in sharded)
                assert sharded == pytest.approx(single, rel=1e-5, abs=1e-6), (engine, peft_type)
            assert (report["sharded"][0][2] > 0) == (peft_type == "iblora")
            # The rank without a supervised token contributes exactly nothing (loss; KL and ce_ib sums per IB block).
            assert report["masked_rank_terms"] == [0.0] * (5 if peft_type == "iblora" else 1)
            trained = load_file(f"{run}-trained.safetensors")
            single = load_file(f"{run}-single.safetensors")
            assert trained.keys() == single.keys()
            for key, value in trained.items():  # whole (the encoders too) and trained as one process trains
                torch.testing.assert_close(value, single[key], rtol=1e-4, atol=1e-5, msg=key)
            assert_stock_peft_loads(run / "adapter", tmp_path / "base", trained)
            if peft_type == "iblora":
                export.main(["--adapter", str(run / "adapter"), "--output", str(tmp_path / f"{engine}-exported")])
                assert_stock_peft_loads(
                    tmp_path / f"{engine}-exported",
                    tmp_path / "base",
                    {k: v for k, v in trained.items() if "lora_ib_encoders" not in k},
                )


@pytest.mark.parametrize(
    "env, peft_type, message",
    [
        (
            {"WORLD_SIZE": "2"},
            "iblora",
            r"^2 processes were launched \(WORLD_SIZE=2\), but the Trainer runs each as a run "
            r"of its own .* pass --ddp_backend gloo",
        ),
        (
            {"ACCELERATE_USE_FSDP": "true"},
            "lora",
            r"^The accelerate config asks for FSDP, but accelerate runs this launch "
            r"as NO on cpu .* examples/accelerate/zero3_cpu.yaml",
        ),
    ],
)
def test_launches_that_would_train_wrongly_are_refused(tmp_path, monkeypatch, env, peft_type, message):
    """What `accelerate launch` sets in each process's environment, beside a Trainer that would not act on it: the
    IB trainer and the plain-LoRA control of `ib-ft train` refuse before the first step."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        train(["--max_steps", "1", "--output_dir", str(tmp_path), "--report_to", "none", "--peft_type", peft_type])
    assert not (tmp_path / "adapter_config.json").exists()


def test_engines_that_would_save_no_adapter_are_refused_and_the_shipped_configs_save_it():
    """ZeRO-3 without the 16-bit gather saves an empty adapter; FSDP with a sharded state dict, none at all."""
    fsdp = SimpleNamespace(state_dict_type="StateDictType.SHARDED_STATE_DICT")
    trainer = SimpleNamespace(
        args=SimpleNamespace(world_size=2),
        accelerator=SimpleNamespace(
            distributed_type=DistributedType.FSDP, state=SimpleNamespace(deepspeed_plugin=None, fsdp_plugin=fsdp)
        ),
    )
    with pytest.raises(
        ValueError,
        match=r"^FSDP with fsdp_state_dict_type StateDictType.SHARDED_STATE_DICT: "
        r"Trainer.save_model writes no adapter .* FULL_STATE_DICT",
    ):
        check_distributed_run(trainer)
    fsdp.state_dict_type = "StateDictType.FULL_STATE_DICT"
    check_distributed_run(trainer)
    fsdp_config = yaml.safe_load((ROOT / "examples/accelerate/fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"

    plugin = SimpleNamespace(zero_stage=3, deepspeed_config={"zero_optimization": {"stage": 3}})
    trainer = SimpleNamespace(
        args=SimpleNamespace(world_size=2),
        accelerator=SimpleNamespace(
            distributed_type=DistributedType.DEEPSPEED,
            state=SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=None),
        ),
    )
    with pytest.raises(
        ValueError,
        match=r"stage3_gather_16bit_weights_on_model_save=false: the Trainer would save an "
        r"empty adapter",
    ):
        check_distributed_run(trainer)
    plugin.deepspeed_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    check_distributed_run(trainer)
    accelerate_config = yaml.safe_load((ROOT / "examples/accelerate/zero3.yaml").read_text())
    assert accelerate_config["deepspeed_config"]["zero3_save_16bit_model"] is True
    cpu_json = json.loads((ROOT / "examples/accelerate/zero3_cpu.json").read_text())["zero_optimization"]
    assert cpu_json["stage3_gather_16bit_weights_on_model_save"] is True
    assert cpu_json["stage3_param_persistence_threshold"] == 0  # else a tiny model is never sharded


def test_peft_type_flag_names_its_values(tmp_path):
    with pytest.raises(ValueError, match=r"^peft_type='ia3': must be one of 'iblora', 'lora'\.$"):
        train(["--output_dir", str(tmp_path), "--peft_type", "ia3"])
