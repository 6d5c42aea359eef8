"""trl_ib.generation.vllm_generation: vLLM's completions are `generate_samples`' completions, adapters included.

The tests marked `vllm` need vLLM (`pip install "ib-ft[vllm]"`, docs/INSTALL.md); they are deselected by default and
run with `python -m pytest -m vllm tests/test_vllm_generation.py`. The others run everywhere.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model

from peft_ib import IBLoraConfig
from tiny_models import CHAT_TEMPLATE, tiny_llama, train_tokenizer
from trl_ib import builtin
from trl_ib.code_eval.extraction import cut_at_stop
from trl_ib.generation.hf_generation import generate_samples
from trl_ib.generation.prompting import PromptFormat
from trl_ib.generation.vllm_generation import (
    INSTALL_HINT,
    generate_samples_vllm,
    generate_samples_with,
    lora_rank,
    resolve_backend,
    vllm_dtype,
)

PROMPTS = ["def add(a, b):\n", "Write a function that returns the sum of a list.\n", "module top(input a", "def mul("]
# Stops the tiny random model writes: "QQ" and "|%" in completion mode; in chat mode every answer starts with "P"
# right after the prompt's closing "\n", so "\nP" spans the prompt boundary there and must not stop (new tokens only).
STOPS = ["QQ", "|%", "\nP"]
SAMPLED_STOPS = ["\x06", "dd", "urn"]  # frequent in its samples at temperature 1
MAX_NEW_TOKENS, MAX_LENGTH = 24, 512  # a chat prompt takes ~300 tokens of the tiny tokenizer


def base_model(vocab_size):
    """A random tiny Llama: 2 blocks of width 128, so head size 32, the smallest vLLM's CPU attention serves."""
    torch.manual_seed(0)
    return builtin.tiny_llama(vocab_size, hidden_size=128, num_layers=2, max_positions=MAX_LENGTH)


def adapter(model, config, directory, seed):
    """`model` with `config`'s adapter, its weights moved far from init so completions change; saved to `directory`."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.add_(0.3 * torch.randn_like(param))
    peft_model.save_pretrained(directory)
    return peft_model.eval()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(tiny Llama folder, tokenizer with a chat template, LoRA and IB-LoRA PEFT models and their folders, a vLLM LLM)."""
    from trl_ib.generation.vllm_generation import make_llm

    root = tmp_path_factory.mktemp("vllm")
    tokenizer = train_tokenizer(root / "model")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "model")
    base_model(len(tokenizer)).save_pretrained(root / "model")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    lora = adapter(
        base_model(len(tokenizer)), LoraConfig(r=8, lora_alpha=16, target_modules=targets), root / "lora", seed=1
    )
    ib_config = IBLoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "down_proj"],
        ib_layers=0.5,
        ib_dim=8,
        task_type="CAUSAL_LM",
    )
    ib = adapter(base_model(len(tokenizer)), ib_config, root / "ib", seed=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
        llm = make_llm(str(root / "model"), max_lora_rank=8, dtype="float32", max_model_len=MAX_LENGTH)
    return root, tokenizer, {"lora": lora, "ib": ib}, llm


@pytest.mark.vllm
@pytest.mark.parametrize("mode", ["completion", "chat"])
@pytest.mark.parametrize("adapter_name", [None, "lora", "ib"])
def test_greedy_completions_equal_generate_samples(served, mode, adapter_name):
    root, tokenizer, peft_models, llm = served
    prompt_format = PromptFormat(mode)
    model = base_model(len(tokenizer)) if adapter_name is None else (peft_models[adapter_name])
    expected = generate_samples(model.eval(), tokenizer, PROMPTS, 2, 0.0, 1.0, MAX_NEW_TOKENS, STOPS, 2, prompt_format)
    lora_path = None if adapter_name is None else root / adapter_name
    completions = generate_samples_vllm(
        llm, tokenizer, PROMPTS, 2, 0.0, 1.0, MAX_NEW_TOKENS, STOPS, prompt_format, lora_path=lora_path
    )
    assert completions == expected
    assert [len(group) for group in completions] == [2] * len(PROMPTS) and all(a == b for a, b in completions)
    assert sum(len(group[0]) for group in completions) > 20  # not all cut to nothing
    if adapter_name is None:  # the stops cut some completions, and only in the new text
        uncut = generate_samples_vllm(llm, tokenizer, PROMPTS, 1, 0.0, 1.0, MAX_NEW_TOKENS, [], prompt_format)
        assert [[cut_at_stop(group[0], STOPS)] * 2 for group in uncut] == completions
        assert sum(group[0] != cut[0] for group, cut in zip(uncut, completions)) >= 1
        if mode == "chat":
            assert all(group[0].startswith("P") for group in completions) and completions[1][0] == "P"
    else:  # the adapter is applied: it changes what the base model answers
        base = generate_samples_vllm(llm, tokenizer, PROMPTS, 1, 0.0, 1.0, MAX_NEW_TOKENS, STOPS, prompt_format)
        assert [group[:1] for group in completions] != base


@pytest.mark.vllm
def test_sampling_is_seeded_per_request_and_cut_at_stops(served):
    _, tokenizer, _, llm = served
    args = (llm, tokenizer, PROMPTS, 5, 1.0, 0.95, MAX_NEW_TOKENS, SAMPLED_STOPS)
    first, again, other = (generate_samples_vllm(*args, seed=seed) for seed in (0, 0, 1))
    assert first == again and first != other
    assert [len(group) for group in first] == [5] * len(PROMPTS) and len({s for g in first for s in g}) > len(PROMPTS)
    # the same seeded draws without stops, cut afterwards, are the completions; and the stops did cut some
    uncut = generate_samples_vllm(llm, tokenizer, PROMPTS, 5, 1.0, 0.95, MAX_NEW_TOKENS, [], seed=0)
    assert [[cut_at_stop(sample, SAMPLED_STOPS) for sample in group] for group in uncut] == first
    assert sum(a != b for group, cut in zip(uncut, first) for a, b in zip(group, cut)) >= 5
    # a prompt's draws are seeded by (seed, its problem index): the last prompt alone gives its samples of the call
    alone = (llm, tokenizer, PROMPTS[3:], 5, 1.0, 0.95, MAX_NEW_TOKENS, SAMPLED_STOPS)
    assert generate_samples_vllm(*alone, seed=0, problem_indices=[3]) == first[3:]
    assert generate_samples_vllm(*alone, seed=0) != first[3:]  # as problem 0 it draws other samples


@pytest.mark.vllm
def test_an_llm_without_lora_refuses_an_adapter(served, tmp_path):
    root, tokenizer, _, _ = served
    from trl_ib.generation.vllm_generation import make_llm

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        llm = make_llm(str(root / "model"), dtype="float32", max_model_len=MAX_LENGTH)
    with pytest.raises(ValueError, match="built without LoRA"):
        generate_samples_vllm(llm, tokenizer, PROMPTS, 1, 0.0, lora_path=root / "lora")


def test_missing_vllm_names_the_install_route(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError, as where it is not installed
    tokenizer = train_tokenizer(tmp_path)
    with pytest.raises(ImportError) as error:
        generate_samples_vllm(str(tmp_path), tokenizer, PROMPTS, 1)
    assert str(error.value) == INSTALL_HINT
    assert 'pip install "ib-ft[vllm]"' in INSTALL_HINT and "docs/INSTALL.md" in INSTALL_HINT


def test_auto_is_vllm_where_installed_in_one_process(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: name == "vllm" or find_spec(name, *a))
    assert [
        resolve_backend(name, processes) for name, processes in [("auto", 1), ("auto", 2), ("hf", 2), ("vllm", 1)]
    ] == ["vllm", "hf", "hf", "vllm"]
    with pytest.raises(ValueError, match=r"backend='vllm' runs in one process, and 2 were launched"):
        resolve_backend("vllm", 2)
    with pytest.raises(ValueError, match=r"backend='tgi': choose one of 'auto', 'hf', 'vllm'"):
        resolve_backend("tgi")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else find_spec(name, *a))
    assert resolve_backend("auto") == "hf"
    with pytest.raises(ImportError) as error:
        resolve_backend("vllm")
    assert str(error.value) == INSTALL_HINT


def test_vllm_dtype_is_the_checkpoints_for_auto(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "float32")
    tiny_llama().to(torch.bfloat16).save_pretrained(tmp_path / "bfloat16")
    assert [vllm_dtype("auto", str(tmp_path / name)) for name in ("float32", "bfloat16")] == ["float32", "bfloat16"]
    assert vllm_dtype(torch.float16, str(tmp_path / "float32")) == "float16"


def test_adapter_ranks_and_unsupported_adapter_types(tmp_path):
    get_peft_model(tiny_llama(), LoraConfig(r=8, target_modules=["q_proj"])).save_pretrained(tmp_path / "lora")
    get_peft_model(
        tiny_llama(), IBLoraConfig(r=4, target_modules=["q_proj"], ib_layers=0.5, ib_dim=8, task_type="CAUSAL_LM")
    ).save_pretrained(tmp_path / "ib")
    get_peft_model(tiny_llama(), IA3Config(target_modules=["q_proj"], feedforward_modules=[])).save_pretrained(
        tmp_path / "ia3"
    )
    assert (lora_rank(tmp_path / "lora"), lora_rank(tmp_path / "ib")) == (8, 4)
    with pytest.raises(ValueError, match=r"holds a IA3 adapter; the vLLM backend serves LoRA and IB-LoRA"):
        lora_rank(tmp_path / "ia3")


def test_decoding_defaults_are_those_generate_applies(tmp_path):
    from transformers import GenerationConfig

    from trl_ib.generation.vllm_generation import _generate_defaults

    GenerationConfig(top_k=7, min_p=0.1, repetition_penalty=1.2, do_sample=True).save_pretrained(tmp_path / "set")
    GenerationConfig(bos_token_id=1).save_pretrained(tmp_path / "unset")
    (tmp_path / "none").mkdir()
    folders = [str(tmp_path / name) for name in ("set", "unset", "none")]
    assert [_generate_defaults(folder, sampling=True) for folder in folders] == [
        {"repetition_penalty": 1.2, "top_k": 7, "min_p": 0.1},
        {"repetition_penalty": 1.0, "top_k": 50, "min_p": 0.0},
        {"repetition_penalty": 1.0, "top_k": 50, "min_p": 0.0},
    ]
    assert _generate_defaults(folders[0], sampling=False) == {"repetition_penalty": 1.2}


def eval_flags(root, output, *extra):
    """`ib-ft eval` on 6 problems of the tiny model, its completions cut by the tiny model's frequent stops."""
    problems = root / "problems.jsonl"
    if not problems.exists():
        rows = [
            {"task_id": f"p/{i}", "prompt": prompt, "test": "def check(c):\n    assert False\n", "entry_point": "f"}
            for i, prompt in enumerate(PROMPTS + ["def f():\n", "def g(x):\n"])
        ]
        problems.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [
        "--model_name_or_path",
        str(root / "model"),
        "--dataset",
        str(problems),
        "--k",
        "1",
        "--timeout",
        "1",
        "--num_workers",
        "1",
        "--max_new_tokens",
        str(MAX_NEW_TOKENS),
        "--batch_size",
        "4",
        "--output_dir",
        str(output),
        "--prompt_mode",
        "completion",
        *extra,
    ]


def eval_rows(output):
    rows = [json.loads(line) for line in (output / "samples.jsonl").read_text().splitlines()]
    return [(row["task_id"], row["sample"], row["completion"]) for row in rows]


@pytest.mark.vllm
def test_ib_ft_eval_backend_vllm_equals_hf_and_resumes(served, tmp_path):
    """`ib-ft eval --backend vllm`: greedy completions equal `--backend hf`'s (an IB-LoRA adapter served as its
    export); sampled, a run torn after its first call resumes to the samples of an uninterrupted one."""
    from trl_ib.cli.eval import main

    root = served[0]
    llm_kwargs = ["--vllm_kwargs", json.dumps({"dtype": "float32", "max_model_len": MAX_LENGTH})]
    greedy = [
        "--num_samples",
        "2",
        "--temperature",
        "0",
        "--adapter_path",
        str(root / "ib"),
        "--stop_sequences",
        *STOPS,
    ]
    main(eval_flags(root, tmp_path / "hf", *greedy, "--backend", "hf"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        main(eval_flags(root, tmp_path / "vllm", *greedy, *llm_kwargs))  # auto: vLLM, installed here
        assert json.loads((tmp_path / "vllm" / "generation.json").read_text())["backend"] == "vllm"
        assert eval_rows(tmp_path / "vllm") == eval_rows(tmp_path / "hf")
        sampled = ["--num_samples", "3", "--temperature", "1.0", "--backend", "vllm", *llm_kwargs]
        main(eval_flags(root, tmp_path / "whole", *sampled))
        whole = eval_rows(tmp_path / "whole")
        torn = tmp_path / "torn"
        torn.mkdir()
        (torn / "generation.json").write_text((tmp_path / "whole" / "generation.json").read_text())
        first_call = [json.dumps(dict(zip(("task_id", "sample", "completion"), row))) for row in whole[:12]]
        (torn / "samples.jsonl").write_text("\n".join(first_call) + '\n{"task_id": "p/4", "sam')
        main(eval_flags(root, torn, *sampled))
    assert eval_rows(torn) == whole and len({row[2] for row in whole}) > 6


def test_backend_vllm_without_vllm_names_the_route(monkeypatch, tmp_path):
    from trl_ib.cli.eval import main

    monkeypatch.setitem(sys.modules, "vllm", None)
    tokenizer = train_tokenizer(tmp_path / "model")
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    with pytest.raises(ImportError) as error:
        main(eval_flags(tmp_path, tmp_path / "out", "--num_samples", "1", "--backend", "vllm"))
    assert str(error.value) == INSTALL_HINT
    with pytest.raises(ValueError, match=r"vllm_kwargs='\[1\]': give a JSON object of vllm.LLM arguments"):
        main(eval_flags(tmp_path, tmp_path / "out", "--num_samples", "1", "--vllm_kwargs", "[1]"))


@pytest.mark.vllm
@pytest.mark.parametrize("adapter_name", [None, "ib"])
def test_an_in_memory_model_samples_alike_on_both_backends(served, adapter_name):
    """`generate_samples_with`: vLLM serves the model as it stands (an IB-LoRA PeftModel merged into a copy): greedy,
    the completions of `generate_samples`; sampled with seed None, draws fixed by the global generator's state."""
    _, tokenizer, peft_models, _ = served
    model = base_model(len(tokenizer)).eval() if adapter_name is None else peft_models[adapter_name]
    greedy = dict(temperature=0.0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS, stop_sequences=STOPS)
    expected = generate_samples_with("hf", model, tokenizer, PROMPTS, 2, **greedy)
    set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
        llm_kwargs = {"max_model_len": MAX_LENGTH}
        assert generate_samples_with("vllm", model, tokenizer, PROMPTS, 2, llm_kwargs=llm_kwargs, **greedy) == expected
        sampled = dict(temperature=1.0, top_p=0.95, max_new_tokens=MAX_NEW_TOKENS, stop_sequences=SAMPLED_STOPS)
        draws = []
        for seed in (0, 0, 1):
            torch.manual_seed(seed)
            draws.append(generate_samples_with("vllm", model, tokenizer, PROMPTS, 3, llm_kwargs=llm_kwargs, **sampled))
    assert draws[0] == draws[1] != draws[2] and len({s for group in draws[0] for s in group}) > len(PROMPTS)
    assert generate_samples_with("hf", model, tokenizer, PROMPTS, 2, **greedy) == expected  # the model is unchanged
    assert torch.set_num_threads is set_num_threads and torch.get_num_threads() == num_threads  # as before vLLM


@pytest.mark.vllm
def test_pass_at_k_m_callback_samples_alike_on_both_backends(served, tmp_path, monkeypatch):
    """`PassAtKMCallback` on a LoRA model being trained: greedy, vLLM's completions and Pass@k^(m) are hf's."""
    import datasets
    from transformers import Trainer, TrainingArguments

    from trl_ib.trainer import callbacks

    _, tokenizer, _, _ = served
    lora = adapter(
        base_model(len(tokenizer)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        tmp_path / "lora",
        seed=3,
    ).train()
    ids = [tokenizer("def add(a, b):\n    return a + b\n")["input_ids"][:8]] * 4
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no")
    train = datasets.Dataset.from_dict({"input_ids": ids, "labels": ids})
    trainer = Trainer(model=lora, args=args, train_dataset=train, processing_class=tokenizer)
    test = "def check(c):\n    assert True\n"
    problems = [{"prompt": prompt, "test": test, "entry_point": "f"} for prompt in PROMPTS]
    sampled, sample = [], callbacks.generate_samples_with
    monkeypatch.setattr(
        callbacks, "generate_samples_with", lambda *a, **k: sampled.append(sample(*a, **k)) or sampled[-1]
    )
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    metrics = [
        callbacks.PassAtKMCallback(
            trainer,
            problems,
            k=[1],
            num_samples=2,
            temperature=0.0,
            max_new_tokens=MAX_NEW_TOKENS,
            stop_sequences=STOPS,
            prompt_mode="completion",
            backend=backend,
            timeout=2.0,
            vllm_kwargs={"max_model_len": MAX_LENGTH},
        ).evaluate()
        for backend in ("hf", "vllm")
    ]
    assert sampled[0] == sampled[1] and sum(len(group[0]) for group in sampled[0]) > 20
    assert metrics[0] == metrics[1] and set(metrics[0]) == {"eval_pass@1^(1)"}
    assert lora.training  # the model being trained is left as it was


@pytest.mark.vllm
def test_ib_ft_eval_command_with_vllm_exits_cleanly(served, tmp_path):
    """The `ib-ft eval` command in a process of its own: vLLM's engine shuts down without an error."""
    root = served[0]
    flags = eval_flags(
        root,
        tmp_path / "cli",
        "--num_samples",
        "2",
        "--backend",
        "vllm",
        "--vllm_kwargs",
        json.dumps({"dtype": "float32", "max_model_len": MAX_LENGTH}),
    )
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "trl_ib.cli", "eval", *flags], capture_output=True, text=True, env=env, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Error" not in run.stderr.replace("ERROR", ""), run.stderr[-3000:]
    assert len(eval_rows(tmp_path / "cli")) == 12
