"""`ib-ft lm-eval`: lm-evaluation-harness's HFLM on an IB-LoRA adapter, through the route and through the export.

One tiny Llama and two local tasks (JSONL files + task YAMLs found with `--include_path`; nothing is downloaded): a
`generate_until` task on a HumanEval-layout problem file that `ib-ft eval` reads too, and a `multiple_choice` task.
Reference values come from our own loading (`import peft_ib`, `PeftModel.from_pretrained`): loglikelihoods
computed by hand, greedy completions written by `ib-ft eval`.
"""

import importlib.abc
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from peft import PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from hub_server import HubServer, Repo, serving
from peft_ib import IBLoraConfig, export_lora
from tiny_models import tiny_llama, train_tokenizer
from trl_ib import cli
from trl_ib.cli import eval as evaluation

PROBLEMS = [
    {"task_id": f"tiny/{index}", "prompt": prompt, "test": "def check(f):\n    assert f(1) == 1\n", "entry_point": "f"}
    for index, prompt in enumerate(
        [
            "def add(a, b):\n",
            "def mul(a, b):\n    return",
            "Write a function that returns the sum of a list.\n",
            "module top(input a",
            'def f(x):\n    """Return x."""\n',
        ]
    )
]
# "UU" cuts 3 of the 5 greedy completions of this adapter early, so both sides' stop handling is compared
STOP_SEQUENCES, MAX_NEW_TOKENS = ["\ndef ", "UU"], 16
HUB_ID = "user/ib-lora"  # the IB-LoRA folder on the local Hub stand-in, for `peft=` given a Hub id
# target_delimiter "" and contexts without trailing whitespace: lm-eval scores (context, choice) as they are
CHOICES = [
    {"context": "def add(a, b):", "choices": ["\n    return a + b", "\n    return a * b"], "label": 0},
    {"context": "def mul(a, b):", "choices": ["\n    return a + b", "\n    return a * b"], "label": 1},
    {"context": "Write a function", "choices": [" that returns the sum", " module top"], "label": 0},
]


def _task(name: str, data_file, **config) -> dict:
    data = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data_file)}}, "test_split": "test"}
    return {"task": name, **data, **config}


def write_tasks(directory) -> None:
    """The JSONL files and the `tiny_gen` / `tiny_mc` task YAMLs in `directory` (for `--include_path`)."""
    directory.mkdir()
    for name, rows in (("problems", PROBLEMS), ("choices", CHOICES)):
        (directory / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    generation = {"until": STOP_SEQUENCES, "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS}
    tasks = {
        "tiny_gen": _task(
            "tiny_gen",
            directory / "problems.jsonl",
            output_type="generate_until",
            doc_to_text="{{prompt}}",
            doc_to_target="{{entry_point}}",
            generation_kwargs=generation,
            metric_list=[{"metric": "exact_match"}],
        ),
        "tiny_mc": _task(
            "tiny_mc",
            directory / "choices.jsonl",
            output_type="multiple_choice",
            doc_to_text="{{context}}",
            doc_to_choice="{{choices}}",
            doc_to_target="label",
            target_delimiter="",
            metric_list=[{"metric": "acc"}],
        ),
    }
    for name, task in tasks.items():
        (directory / f"{name}.yaml").write_text(yaml.safe_dump(task))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """base/ (tiny Llama + tokenizer), ib-lora/ (weights far from init), lora/ (its export) and tasks/."""
    root = tmp_path_factory.mktemp("lm_eval")
    tokenizer = train_tokenizer(root / "base")
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(root / "base")
    torch.manual_seed(3)
    config = IBLoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        init_lora_weights=False,
        ib_dim=8,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(tiny_llama(vocab_size=len(tokenizer)), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(0.3 * torch.randn_like(param))
    model.save_pretrained(root / "ib-lora")
    export_lora(model, root / "lora")
    write_tasks(root / "tasks")
    return root


def harness_args(root, adapter) -> list[str]:
    """lm-eval arguments for `tiny_gen` and `tiny_mc` on base + `adapter`, one request at a time on the CPU."""
    return [
        "--model",
        "hf",
        "--model_args",
        f"pretrained={root / 'base'},peft={adapter}",
        "--tasks",
        "tiny_gen",
        "tiny_mc",
        "--include_path",
        str(root / "tasks"),
        "--device",
        "cpu",
        "--batch_size",
        "1",
    ]


@pytest.fixture(scope="module")
def hub(workspace):
    """A local Hub serving the IB-LoRA folder as `HUB_ID`."""
    server = HubServer(("127.0.0.1", 0))
    repo = server.repos[HUB_ID] = Repo()
    repo.branches["main"] = repo.commit(None, {p.name: p.read_bytes() for p in (workspace / "ib-lora").iterdir()})
    with serving(server):
        yield server


@pytest.fixture(scope="module")
def route(workspace, hub):
    """The per-request outputs of `ib-ft lm-eval` (a fresh interpreter, as a user runs it) on the IB-LoRA adapter,
    given as a Hub id: {"tiny_gen": [completion, ...] in problem order, "tiny_mc": [(context, choice,
    loglikelihood), ...]}, read from lm-eval's `--log_samples` files."""
    output = workspace / "route"
    command = [sys.executable, "-m", "trl_ib.cli", "lm-eval", *harness_args(workspace, HUB_ID)]
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(workspace / "hf_home"), "HF_HUB_DISABLE_XET": "1"}
    subprocess.run(
        [*command, "--output_path", str(output), "--log_samples"],
        check=True,
        capture_output=True,
        timeout=500,
        env=env,
    )
    assert f"GET /{HUB_ID}/resolve/main/adapter_model.safetensors" in " ".join(hub.requests)
    (run_dir,) = output.iterdir()
    samples = {}
    for task in ("tiny_gen", "tiny_mc"):
        (path,) = run_dir.glob(f"samples_{task}_*.jsonl")
        rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda row: row["doc_id"])
        samples[task] = rows
    completions = [row["filtered_resps"][0] for row in samples["tiny_gen"]]
    loglikelihoods = [
        (args["arg_0"], args["arg_1"], float(response[0][0]))  # logged as repr strings: float() is exact
        for row in samples["tiny_mc"]
        for args, response in zip(row["arguments"].values(), row["resps"])
    ]
    return {"tiny_gen": completions, "tiny_mc": loglikelihoods}


def hand_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """sum log p(continuation tokens | context), the continuation being the tokens of context + continuation after
    those of the context; in float32, as lm-eval sums."""
    whole = tokenizer(context + continuation)["input_ids"]
    context_length = len(tokenizer(context)["input_ids"])
    assert whole[:context_length] == tokenizer(context)["input_ids"], "the tokenizer merges across the boundary"
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0, context_length - 1 :]
    targets = torch.tensor(whole[context_length:])
    return float(torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).sum())


@pytest.mark.slow
def test_route_gives_our_loglikelihoods(workspace, route):
    """(b) IB-LoRA through `ib-ft lm-eval`: every multiple-choice loglikelihood equals the one computed by hand on
    our own loading of the adapter, to the last bit, and differs from the base model's."""
    tokenizer = AutoTokenizer.from_pretrained(workspace / "base")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(workspace / "base"), workspace / "ib-lora")
    ours = [hand_loglikelihood(model.eval(), tokenizer, context, choice) for context, choice, _ in route["tiny_mc"]]
    assert len(ours) == 6
    assert [value for *_, value in route["tiny_mc"]] == ours
    with model.disable_adapter():
        base = [hand_loglikelihood(model, tokenizer, context, choice) for context, choice, _ in route["tiny_mc"]]
    assert min(abs(a - b) for a, b in zip(ours, base)) > 0.01


@pytest.mark.slow
def test_route_and_ib_ft_eval_give_the_same_greedy_completions(workspace, route):
    """ib-ft eval (completion mode, greedy, the same stop sequences and token budget) and `ib-ft lm-eval` on the
    same IB-LoRA adapter and prompts: 5 of 5 completions identical, 3 of them cut by a stop sequence."""
    output = workspace / "ib_ft_eval"
    evaluation.main(
        [
            "--model_name_or_path",
            str(workspace / "base"),
            "--adapter_path",
            str(workspace / "ib-lora"),
            "--dataset",
            str(workspace / "tasks" / "problems.jsonl"),
            "--prompt_mode",
            "completion",
            "--temperature",
            "0",
            "--num_samples",
            "1",
            "--k",
            "1",
            "--m",
            "1",
            "--max_new_tokens",
            str(MAX_NEW_TOKENS),
            "--batch_size",
            "1",
            "--stop_sequences",
            *STOP_SEQUENCES,
            "--timeout",
            "2",
            "--num_workers",
            "1",
            "--output_dir",
            str(output),
            "--backend",
            "hf",  # the tiny model's heads are narrower than vLLM's CPU attention serves
        ]
    )
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    assert [row["task_id"] for row in rows] == [problem["task_id"] for problem in PROBLEMS]
    completions = [row["completion"] for row in rows]
    assert completions == route["tiny_gen"]
    tokenizer = AutoTokenizer.from_pretrained(workspace / "base")
    # well under the token budget: generation ended at a stop sequence
    stopped = [len(tokenizer(text)["input_ids"]) < MAX_NEW_TOKENS - 1 for text in completions]
    assert sum(stopped) == 3, completions


@pytest.mark.slow
def test_exported_lora_in_hflm_matches_the_route(workspace, route):
    """(a) The `ib-ft export` output given to HFLM as `peft=`: the same loglikelihoods and greedy completions as the
    IB-LoRA adapter through the route; the base alone gives other loglikelihoods."""

    def run(lm):
        pairs = [(context, choice) for context, choice, _ in route["tiny_mc"]]
        scores = lm.loglikelihood([Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)])
        generation = {"until": STOP_SEQUENCES, "do_sample": False, "max_gen_toks": MAX_NEW_TOKENS}
        requests = [Instance("generate_until", {}, (p["prompt"], generation), i) for i, p in enumerate(PROBLEMS)]
        return [value for value, _ in scores], lm.generate_until(requests)

    base_dir = str(workspace / "base")
    exported = HFLM(pretrained=base_dir, peft=str(workspace / "lora"), device="cpu", batch_size=1)
    loglikelihoods, completions = run(exported)
    assert loglikelihoods == [value for *_, value in route["tiny_mc"]]
    assert completions == route["tiny_gen"]
    base_loglikelihoods, _ = run(HFLM(pretrained=base_dir, device="cpu", batch_size=1))
    assert min(abs(a - b) for a, b in zip(loglikelihoods, base_loglikelihoods)) > 0.01


@pytest.mark.slow
def test_raw_ib_lora_folder_fails_in_stock_lm_eval(workspace):
    """Without the route (stock `python -m lm_eval`, peft_ib never imported) PEFT cannot read peft_type IBLORA: the
    README's warning."""
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", *harness_args(workspace, workspace / "ib-lora")],
        capture_output=True,
        text=True,
        timeout=500,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode != 0
    assert "KeyError: 'IBLORA'" in result.stderr
    assert "peft/peft_model.py" in result.stderr  # raised by PeftModel.from_pretrained, as lm-eval calls it


def test_arguments_reach_lm_eval_unchanged(monkeypatch):
    """lm-eval's CLI entry reads sys.argv: it sees ours after "lm-eval" exactly, with IB-LoRA registered; the
    caller's sys.argv is restored."""
    import lm_eval.__main__
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    seen = []  # (sys.argv, IBLORA registered) at each call
    record = lambda: seen.append((sys.argv[:], "IBLORA" in PEFT_TYPE_TO_CONFIG_MAPPING))  # noqa: E731
    monkeypatch.setattr(lm_eval.__main__, "cli_evaluate", record)
    argv = sys.argv[:]
    arguments = ["--model", "hf", "--model_args", "pretrained=m,peft=user/adapter", "--tasks", "a,b", "--limit", "2"]
    cli.main(["lm-eval", *arguments])
    assert seen == [(["lm-eval", *arguments], True)]
    assert sys.argv == argv


class _NoLmEval(importlib.abc.MetaPathFinder):
    """Makes `import lm_eval` fail as it does where lm-eval is not installed."""

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] == "lm_eval":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


def test_missing_lm_eval_names_the_install(monkeypatch):
    for name in [name for name in sys.modules if name.partition(".")[0] == "lm_eval"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_NoLmEval(), *sys.meta_path])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["lm-eval", "--model", "hf", "--tasks", "tiny_gen"])
    assert str(exit_info.value) == (
        "ib-ft lm-eval needs lm-evaluation-harness, and importing it failed (no module 'lm_eval'). "
        'Install it with: pip install "ib-ft[lm-eval]"'
    )
