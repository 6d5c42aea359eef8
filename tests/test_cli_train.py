"""`ib-ft train`: the built-in default, YAML + flags, errors that name the field, and multi-process runs on CPU."""

import json
import os
import socket
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch
import yaml
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import peft_ib  # noqa: F401  (registers the IBLORA type with PEFT)
from peft_ib import find_ib_model
from peft_ib.config import IB_FIELDS
from trl_ib import IBSFTConfig, cli
from trl_ib.cli.train import IBArguments, load_data, make_parser, run

FAST = [
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
    "--save_strategy",
    "no",
]


def train(argv: list[str]):
    """What `ib-ft train ARGV` does, returning the trainer."""
    return run(*make_parser().parse_args_and_config(args=argv))


def assert_adapter_reloads(output_dir: Path, trained_model=None) -> PeftModel:
    """The saved adapter loads with stock PEFT onto the saved base, with the weights that were trained."""
    config = json.loads((output_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "IBLORA"
    assert (output_dir / "adapter_model.safetensors").exists() and (output_dir / "README.md").exists()
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    loaded = PeftModel.from_pretrained(base, output_dir)
    saved = load_file(output_dir / "adapter_model.safetensors")
    state = get_peft_model_state_dict(loaded)
    assert state.keys() == saved.keys() and any("lora_ib_encoders" in key for key in saved)
    for key, value in saved.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    if trained_model is not None:
        trained = get_peft_model_state_dict(trained_model)
        for key, value in saved.items():
            torch.testing.assert_close(trained[key].cpu(), value, rtol=0, atol=0, msg=key)
        # The base the adapter names is the one it was trained on (LoRA-wrapped layers hold it as base_layer).
        trained_base = dict(trained_model.get_base_model().named_parameters())
        for name, value in base.named_parameters():
            wrapped = name.replace(".weight", ".base_layer.weight")
            torch.testing.assert_close(trained_base.get(name, trained_base.get(wrapped)), value, rtol=0, atol=0)
    return loaded


def test_builtin_default_writes_an_adapter_that_reloads(tmp_path):
    out = tmp_path / "out"
    trainer = train(["--max_steps", "2", "--output_dir", str(out), "--report_to", "none"])
    assert trainer.state.global_step == 2
    loaded = assert_adapter_reloads(out, trainer.model)
    encoders = find_ib_model(loaded).lora_ib_encoders["default"]
    assert list(encoders) == ["2"]  # default ib_layers 0.625 of the built-in model's 4 blocks -> block 2 (0-based)
    assert encoders["2"].mu.out_features == 256
    assert "IB-LoRA" in (out / "README.md").read_text()
    # The built-in base is random: it is saved beside the adapter and recorded as its base, so the one-liner of the
    # adapter card loads it.
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(out / "base_model")
    auto = AutoPeftModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(find_ib_model(auto).lora_ib_encoders["default"]["2"].up.weight, encoders["2"].up.weight)


def test_yaml_config_and_flag_overrides(tmp_path):
    out = tmp_path / "out"
    config = {
        "output_dir": str(out),
        "report_to": "none",
        "save_strategy": "no",
        "max_steps": 2,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "lora_r": 4,
        "lora_alpha": 8,
        "ib_layers": [1, 3],
        "ib_dim": 12,
        "ib_alpha": 0.3,
        "ib_beta": 0.05,
        "ib_kl_mask": "response",
        "ib_warmup_steps": 1,
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    trainer = train(["--config", str(tmp_path / "run.yaml"), "--ib_alpha", "0.7", "--lora_r", "6"])
    saved = json.loads((out / "adapter_config.json").read_text())
    assert saved["ib_layers"] == [1, 3] and saved["ib_dim"] == 12 and saved["ib_kl_mask"] == "response"
    assert saved["ib_beta"] == 0.05 and saved["lora_alpha"] == 8
    assert saved["ib_alpha"] == 0.7 and saved["r"] == 6  # the flags win over the YAML
    args = trainer.args
    assert (args.max_steps, args.ib_alpha, args.ib_beta, args.ib_warmup_steps) == (2, 0.7, 0.05, 1)
    assert trainer._ib_alpha == 0.7 and [log["ib_alpha"] for log in trainer.state.log_history if "loss" in log] == [
        0.0,
        0.7,
    ]
    assert sorted(find_ib_model(trainer.model).lora_ib_encoders["default"]) == ["1", "3"]
    assert_adapter_reloads(out, trainer.model)


@pytest.mark.parametrize("yaml_value, expected", [(2, 2), (0.5, 0.5), ([0, 3], [0, 3]), ("1,2", [1, 2])])
def test_yaml_ib_layers_keep_their_yaml_type(tmp_path, yaml_value, expected):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"ib_layers": yaml_value, "output_dir": str(tmp_path)}))
    *_, ib_args = make_parser().parse_args_and_config(args=["--config", str(tmp_path / "run.yaml")])
    assert ib_args.encoder_settings()["ib_layers"] == expected


def test_data_loading_maps_the_papers_columns(tmp_path):
    """The paper's Instruction/Response rows become prompt = instruction + "\\n", completion = response; other
    column names by --prompt_column/--completion_column; prompt/completion rows pass as they are."""
    rows = [{"Instruction": "Write add", "Response": "def add(a, b):\n    return a + b\n", "Tests": "assert 1"}]
    (tmp_path / "paper.jsonl").write_text(json.dumps(rows[0]) + "\n")
    plain = {"prompt": "Write add\n", "completion": "def add(): ...\n"}
    (tmp_path / "plain.jsonl").write_text(json.dumps(plain) + "\n")
    expected = {"prompt": "Write add\n", "completion": "def add(a, b):\n    return a + b\n"}

    def load(path, *flags):
        script_args, *_, ib_args = make_parser().parse_args_and_config(
            args=["--output_dir", str(tmp_path), "--dataset_name", str(tmp_path / path), *flags]
        )
        return load_data(script_args, ib_args)

    train_rows, eval_rows = load("paper.jsonl")
    assert train_rows.to_list() == [expected] and eval_rows is None
    train_rows, _ = load("paper.jsonl", "--prompt_column", "Tests", "--completion_column", "Response")
    assert train_rows.to_list() == [{"prompt": "assert 1\n", "completion": expected["completion"]}]
    assert load("plain.jsonl")[0].to_list() == [plain]
    with pytest.raises(ValueError, match=r"no column\(s\) \['Answer'\]"):
        load("paper.jsonl", "--prompt_column", "Instruction", "--completion_column", "Answer")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ib_kl_mask", "x"], r"ib_kl_mask='x': must be one of 'attention', 'response', 'all'"),
        (["--ib_layers", "abc"], r"ib_layers='abc': expected a relative depth"),
        (["--ib_layers", "1.5"], r"ib_layers=1.5: a float is a relative depth and must be in \(0, 1\]"),
        (["--ib_dim", "0"], r"ib_dim=0: must be an int >= 1"),
        (["--ib_alpha", "-1"], r"ib_alpha=-1.0: must be None .* or a number >= 0"),
        (["--ib_target_kl", "0"], r"ib_target_kl=0.0: must be None"),
        (["--no_such_flag", "1"], r"not used by the HfArgumentParser: \['--no_such_flag', '1'\]"),
    ],
)
def test_bad_flags_fail_at_parse_time_naming_the_field(tmp_path, argv, message):
    with pytest.raises(ValueError, match=message):
        make_parser().parse_args_and_config(args=["--output_dir", str(tmp_path), *argv])


def test_bad_yaml_fields_name_the_key(tmp_path):
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path), "ib_alpah": 0.3}))
    with pytest.raises(ValueError, match=r"Unknown arguments from config file: \['--ib_alpah', '0.3'\]"):
        make_parser().parse_args_and_config(args=["--config", str(tmp_path / "typo.yaml")])
    (tmp_path / "mask.yaml").write_text(yaml.safe_dump({"output_dir": str(tmp_path), "ib_kl_mask": "prompt"}))
    with pytest.raises(ValueError, match=r"ib_kl_mask='prompt'"):
        make_parser().parse_args_and_config(args=["--config", str(tmp_path / "mask.yaml")])


def test_cli_dispatches_to_train(tmp_path):
    with pytest.raises(ValueError, match="ib_layers='x'"):
        cli.main(["train", "--debug", "--output_dir", str(tmp_path), "--ib_layers", "x"])


# ---- several processes on CPU (gloo) ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch(tmp_path: Path, train_flags: list[str]) -> subprocess.CompletedProcess:
    """Two processes of `ib-ft train` on CPU, data parallel over gloo.

    `accelerate launch --cpu --num_processes 2` starts ONE process (accelerate's simple launcher). Two CPU processes
    need the torchrun launcher (`--multi_gpu`, which only spawns them) plus `--use_cpu true` for the trainer, which
    makes accelerate join them as MULTI_CPU (gloo). No GPU is visible.
    """
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "trl_ib.cli",
        "train",
        "--use_cpu",
        "true",
        *train_flags,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=420, cwd=tmp_path)


@pytest.mark.slow
def test_data_parallel_two_processes_on_cpu(tmp_path):
    out = tmp_path / "out"
    result = _launch(
        tmp_path,
        ["--max_steps", "3", "--output_dir", str(out), *FAST[:-2], "--save_strategy", "steps", "--save_steps", "3"],
    )
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    logs = [log for log in state["log_history"] if "loss" in log]
    assert [log["step"] for log in logs] == [1, 2, 3]
    for log in logs:
        assert log["ib_kl"] > 0 and log["ib_ce"] > 0 and log["ce"] > 0
    # 2 processes x 4 rows per step over the 96 built-in examples: 3 steps are a quarter epoch (one process: 1/8).
    assert logs[-1]["epoch"] == pytest.approx(0.25)
    assert_adapter_reloads(out)


def test_ib_flags_are_the_configs_fields_with_its_defaults_and_help():
    """`ib-ft train`'s IB flags come from IBLoraConfig (one source): same names, defaults and help; ib_layers is
    given as text; ib_alpha / ib_beta are IBSFTConfig's flags."""
    flags = {f.name: f for f in fields(IBArguments)}
    for config_field in IB_FIELDS:
        if config_field.name in ("ib_alpha", "ib_beta"):
            assert config_field.name not in flags and config_field.name in IBSFTConfig.__dataclass_fields__
            continue
        flag = flags[config_field.name]
        expected = str(config_field.default) if config_field.name == "ib_layers" else config_field.default
        assert flag.default == expected
        assert flag.metadata["help"].startswith(config_field.metadata["help"])
    assert sorted(set(flags) - {f.name for f in IB_FIELDS}) == ["completion_column", "peft_type", "prompt_column"]
