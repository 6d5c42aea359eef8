"""`ib-ft eval`: sample n completions per problem, run them in the sandbox, report Pass@k^(m).

    ib-ft eval --model_name_or_path Qwen/Qwen2.5-Coder-0.5B --adapter_path out/ib-lora \\
        --dataset HumanEval.jsonl.gz --num_samples 10 --k 1 5 10 --m 1 k --output_dir eval_results
    ib-ft eval --config eval.yaml --temperature 0.2        # YAML config, command line overrides

Writes to `output_dir`: samples.jsonl (one row per sample with its verdict), results.json (the table,
per-problem pass counts and the arguments) and pass_at_k_m.png (Pass@k^(m) against m for each k).
The pieces (`generate_samples`, `score`, `plot_pass_at_k_m`) are reused by `PassAtKMCallback`.
"""

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import datasets
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase, set_seed
from trl import TrlParser

from hub_cards.plots import plot_against_m

from .builtin import resolve_model
from .code_eval import BACKENDS, pass_at_k_m_table, resolve_m, score


# language -> default stop sequences; generation stops at (and drops) the first one
STOP_SEQUENCES = {
    "python": ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"],
    "verilog": ["endmodule"],
}
# language -> text that closes a program after its completion was cut at a stop sequence
PROGRAM_END = {"python": "", "verilog": "endmodule\n"}


@dataclass
class EvalArguments:
    model_name_or_path: str = field(metadata={"help": "Base model: a Hub id or a local directory."})
    dataset: str = field(
        metadata={
            "help": "Problems with columns prompt, test, entry_point: a .json/.jsonl(.gz) file (HumanEval's "
            "HumanEval.jsonl.gz works as is) or a dataset name or directory for `datasets.load_dataset`."
        }
    )
    adapter_path: str | None = field(default=None, metadata={"help": "PEFT adapter to load on the base model."})
    dataset_split: str = field(default="test", metadata={"help": "Split, for datasets loaded by name."})
    num_problems: int | None = field(default=None, metadata={"help": "Evaluate only the first N problems."})
    language: str = field(default="python", metadata={"help": "Execution backend.", "choices": sorted(BACKENDS)})
    num_samples: int = field(default=10, metadata={"help": "n, samples drawn per problem; needs n >= max(k)."})
    k: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "The k values of Pass@k^(m)."})
    m: list[str] = field(
        default_factory=lambda: ["1", "k"], metadata={"help": "The m values of Pass@k^(m); 'k' means m = k."}
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling probability mass."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest completion, in tokens."})
    stop_sequences: list[str] | None = field(
        default=None, metadata={"help": "Completions end before the first of these; default: per language."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences generated per forward pass."})
    timeout: float = field(default=3.0, metadata={"help": "Wall-clock seconds each sample may run."})
    num_workers: int | None = field(default=None, metadata={"help": "Samples run in parallel; default: CPUs."})
    output_dir: str = field(default="eval_results", metadata={"help": "Where the results are written."})
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})

    def __post_init__(self):
        if self.num_samples < max(self.k):
            raise ValueError(f"num_samples={self.num_samples} is smaller than max(k)={max(self.k)}; need n >= k")
        for m in self.m:
            resolve_m(m, max(self.k))
        if self.stop_sequences is None:
            self.stop_sequences = STOP_SEQUENCES[self.language]


def truncate(completion: str, stop_sequences: Sequence[str]) -> str:
    """`completion` up to (not including) the earliest stop sequence."""
    cuts = [index for index in (completion.find(stop) for stop in stop_sequences) if index != -1]
    return completion[: min(cuts)] if cuts else completion


def generate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float = 0.8,
    top_p: float = 0.95,
    max_new_tokens: int = 512,
    stop_sequences: Sequence[str] = (),
    batch_size: int = 16,
) -> list[list[str]]:
    """Sample `num_samples` completions per prompt, cut at the first stop sequence.

    Returns:
        completions[problem][sample], shape (len(prompts), num_samples).
    """
    requests = [prompt for prompt in prompts for _ in range(num_samples)]
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    tokenizer.padding_side = "left"  # new tokens must follow every prompt directly
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    completions = []
    try:
        for start in range(0, len(requests), batch_size):
            inputs = tokenizer(requests[start : start + batch_size], return_tensors="pt", padding=True).to(model.device)
            output = model.generate(
                **inputs,
                **sampling,
                max_new_tokens=max_new_tokens,
                pad_token_id=pad_token_id,
                stop_strings=list(stop_sequences) or None,
                tokenizer=tokenizer,
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]  # (batch, <= max_new_tokens)
            for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True):
                completions.append(truncate(text, stop_sequences))
    finally:
        model.train(was_training)
    return [completions[i : i + num_samples] for i in range(0, len(completions), num_samples)]


def build_programs(prompts: Sequence[str], completions: Sequence[Sequence[str]], language: str) -> list[list[str]]:
    """programs[problem][sample] = prompt + completion (+ what closes a cut Verilog module)."""
    return [[prompt + completion + PROGRAM_END[language] for completion in group] for prompt, group in zip(prompts, completions)]


def plot_pass_at_k_m(num_samples: Sequence[int] | int, num_correct: Sequence[int], k: Sequence[int], path: str) -> None:
    """Save a PNG of Pass@k^(m) against m = 1..k, one line per k."""
    curves = {
        f"k = {k_}": list(enumerate(pass_at_k_m_table(num_samples, num_correct, k=[k_], m=range(1, k_ + 1)).values(), 1))
        for k_ in k
    }
    plot_against_m(curves, path, "Pass@k^(m) against m")


def load_model(
    model_name_or_path: str, adapter_path: str | None = None, dtype: str | torch.dtype = "auto"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The base model (with `adapter_path`, LoRA or IB-LoRA, loaded through PEFT) and its tokenizer."""
    model_name_or_path = resolve_model(model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
    if adapter_path is not None:
        import peft_ib  # noqa: F401  registers the IB-LoRA adapter type with PEFT
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
    return model, tokenizer


def load_problems(dataset: str, split: str = "test", num_problems: int | None = None) -> datasets.Dataset:
    if dataset.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
        problems = datasets.load_dataset("json", data_files=dataset, split="train")
    else:
        problems = datasets.load_dataset(dataset, split=split)
    missing = {"prompt", "test", "entry_point"} - set(problems.column_names)
    if missing:
        raise ValueError(f"dataset {dataset!r} lacks columns {sorted(missing)}; it needs prompt, test and entry_point")
    return problems.select(range(min(num_problems, len(problems)))) if num_problems else problems


def main(argv: list[str]) -> None:
    (args,) = TrlParser(EvalArguments).parse_args_and_config(argv)
    set_seed(args.seed)
    problems = load_problems(args.dataset, args.dataset_split, args.num_problems).to_list()
    prompts = [problem["prompt"] for problem in problems]
    model, tokenizer = load_model(args.model_name_or_path, args.adapter_path)
    completions = generate_samples(
        model, tokenizer, prompts, args.num_samples, args.temperature, args.top_p,
        args.max_new_tokens, args.stop_sequences, args.batch_size,
    )  # fmt: skip
    programs = build_programs(prompts, completions, args.language)
    tests, entry_points = [problem["test"] for problem in problems], [problem["entry_point"] for problem in problems]
    scores = score(
        programs, tests, entry_points, args.k, args.m, args.language, args.timeout, args.num_workers
    )

    os.makedirs(args.output_dir, exist_ok=True)
    task_ids = [problem.get("task_id", index) for index, problem in enumerate(problems)]
    with open(os.path.join(args.output_dir, "samples.jsonl"), "w") as file:
        for task_id, group, results in zip(task_ids, completions, scores.results):
            for index, (completion, result) in enumerate(zip(group, results)):
                row = {"task_id": task_id, "sample": index, "completion": completion, "passed": result.passed, "result": result.result}
                file.write(json.dumps(row) + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as file:
        summary = {"pass_at_k_m": scores.table, "num_samples": scores.num_samples, "num_correct": scores.num_correct}
        json.dump({**summary, "task_ids": task_ids, "args": asdict(args)}, file, indent=2)
    plot_pass_at_k_m(scores.num_samples, scores.num_correct, args.k, os.path.join(args.output_dir, "pass_at_k_m.png"))
    width = max(map(len, scores.table))
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in scores.table.items()))
