"""The README's promises that code can check: every Python block and the `ib-ft eval` line run as written (on a tiny
model), its test command is the one CI runs, and the IB field table of docs/TRAINING.md names IBLoraConfig's fields
with their defaults."""

import gzip
import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import AutoModelForCausalLM

from peft_ib.config import IB_FIELDS
from tiny_models import tiny_llama, train_tokenizer
from trl_ib.cli.eval import main as ib_ft_eval

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()
TRAINING = (ROOT / "docs" / "TRAINING.md").read_text()
HUB_MODEL = "deepseek-ai/deepseek-coder-7b-instruct-v1.5"
QUICKSTART = "Quickstart: change two names"


def section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else len(text)]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.mark.slow
def test_every_python_block_and_the_eval_line_run_as_written(tmp_path, monkeypatch):
    """The README's Python blocks, in order in one namespace, then its `ib-ft eval` line, with the Hub model swapped for
    a tiny one saved to disk and a four-row dataset. Two changes a CPU needs: `use_cpu=True` (SFTConfig defaults to
    bf16, which TRL refuses on a machine without a GPU unless told to use the CPU), and overrides appended to the
    eval line that keep it short."""
    model_dir = tmp_path / "model"
    tokenizer = train_tokenizer(model_dir)
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(model_dir)
    monkeypatch.chdir(tmp_path)
    blocks = code_blocks(README, "python")
    assert blocks == code_blocks(section(README, QUICKSTART), "python") and len(blocks) == 2
    train, export = blocks
    assert train.count("SFTConfig(output_dir") == 1 and train.count(HUB_MODEL) == 1
    dataset = Dataset.from_list([{"prompt": "def add(a, b):\n", "completion": "    return a + b\n"}] * 4)
    namespace = {"dataset": dataset}
    exec(
        train.replace(HUB_MODEL, str(model_dir)).replace("SFTConfig(output_dir", "SFTConfig(use_cpu=True, output_dir"),
        namespace,
    )
    adapter = json.loads((tmp_path / "out" / "ib-lora" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "IBLORA" and adapter["ib_dim"] == 256 and adapter["r"] == 32
    assert namespace["trainer"].state.global_step > 0

    exec(export, namespace)
    exported = json.loads((tmp_path / "out" / "lora" / "adapter_config.json").read_text())
    assert exported["peft_type"] == "LORA" and exported["r"] == 32
    input_ids = torch.tensor([[1, 5, 9, 14, 3]])
    logits = []
    for folder in ("ib-lora", "lora"):
        base = AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():
            logits.append(PeftModel.from_pretrained(base, tmp_path / "out" / folder).eval()(input_ids).logits)
    torch.testing.assert_close(logits[1], logits[0], rtol=0, atol=0)

    [bash] = code_blocks(section(README, QUICKSTART), "bash")
    argv = shlex.split(bash.replace("\\\n", " ").split("#")[0])
    assert argv[:2] == ["ib-ft", "eval"]
    problems = tmp_path / "HumanEval.jsonl.gz"
    problem = {
        "task_id": "t/0",
        "prompt": "def f():\n",
        "test": "def check(c):\n    assert c() == 1\n",
        "entry_point": "f",
    }
    problems.write_bytes(gzip.compress((json.dumps(problem) + "\n").encode()))
    argv = [arg.replace(HUB_MODEL, str(model_dir)).replace("HumanEval.jsonl.gz", str(problems)) for arg in argv[2:]]
    # hf: the tiny model's heads are narrower than vLLM's CPU attention serves (where vLLM is installed)
    ib_ft_eval(argv + ["--max_new_tokens", "4", "--backend", "hf", "--output_dir", str(tmp_path / "eval")])
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert sorted(results["pass_at_k_m"]) == ["pass@10^(1)", "pass@10^(10)", "pass@1^(1)"]
    assert results["args"]["adapter_path"] == "out/ib-lora" and results["num_samples"] == [10]


def test_the_readme_test_command_is_the_one_ci_runs():
    # the main environment's line: the installs, then the suite (the other environments run their own venv's pytest)
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    [ci_command] = [line.strip() for line in lines if line.startswith("pip install") and "pytest" in line]
    readme_commands = [line.strip() for block in code_blocks(README, "bash") for line in block.splitlines()]
    assert ci_command in readme_commands


def test_the_ib_field_table_matches_the_config():
    rows = re.findall(
        r"^\| `(ib_\w+)`(?:, `(ib_\w+)`)? \| `([^`]*)`(?:, `([^`]*)`)? \|",
        section(TRAINING, "The adapter: `IBLoraConfig`"),
        re.M,
    )
    table = {}
    for first, second, first_default, second_default in rows:
        table[first] = first_default
        if second:
            table[second] = second_default
    assert table == {f.name: repr(f.default).replace("'", '"') for f in IB_FIELDS}
