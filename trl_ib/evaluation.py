"""`ib-ft eval`: sample n completions per problem, run them in the sandbox, report Pass@k^(m).

    ib-ft eval --model_name_or_path smollm2-135m-instruct --dataset HumanEval.jsonl.gz --num_samples 10 --k 1 10
    ib-ft eval --model_name_or_path Qwen/Qwen2.5-Coder-0.5B --adapter_path out/ib-lora \\
        --dataset HumanEval.jsonl.gz --prompt_mode completion --k 1 5 10 --m 1 k --output_dir eval_results
    ib-ft eval --model_name_or_path M --dataset VerilogEval/dataset_spec-to-rtl --language verilog
    ib-ft eval --config eval.yaml --temperature 0.2        # YAML config, command line overrides

Prompt modes (completion, chat, auto) are described in `trl_ib.prompting`. Problem sets: a HumanEval-style
.json/.jsonl(.gz) file or `datasets` dataset (columns renamed with --prompt_column etc.), or a VerilogEval
directory (`trl_ib.code_eval.problem_sets`). Writes to `output_dir`: samples.jsonl (one row per sample with its
answer, program and verdict), results.json (the table, per-problem pass counts and the arguments) and
pass_at_k_m.png (Pass@k^(m) against m for each k). The pieces (`generate_samples`, `build_programs`, `score`)
are reused by `PassAtKMCallback` and the demo.
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
from .code_eval import LANGUAGES, pass_at_k_m_table, resolve_m, score
from .code_eval.problem_sets import is_verilog_eval_dir, load_verilog_eval
from .generation import generate_samples
from .prompting import PROMPT_MODES, PromptFormat, check_prompt_mode, resolve_prompt_mode

__all__ = ["EvalArguments", "build_programs", "load_model", "load_problems", "main"]


@dataclass
class EvalArguments:
    model_name_or_path: str = field(
        metadata={"help": "Base model: a Hub id, a local directory or a built-in name (smollm2-135m-instruct)."}
    )
    dataset: str = field(
        metadata={
            "help": "Problems: a .json/.jsonl(.gz) file with columns prompt, test, entry_point (HumanEval's "
            "HumanEval.jsonl.gz works as is), a dataset name or directory for `datasets.load_dataset`, or a "
            "VerilogEval directory of ProbNNN_<name>_prompt.txt / _test.sv / _ref.sv files."
        }
    )
    adapter_path: str | None = field(default=None, metadata={"help": "PEFT adapter to load on the base model."})
    dataset_split: str = field(default="test", metadata={"help": "Split, for datasets loaded by name."})
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt."})
    test_column: str = field(default="test", metadata={"help": "Column holding the test source."})
    entry_point_column: str = field(
        default="entry_point", metadata={"help": "Column holding the entry point (the function `check` gets)."}
    )
    num_problems: int | None = field(default=None, metadata={"help": "Evaluate only the first N problems."})
    language: str = field(default="python", metadata={"help": "Execution backend.", "choices": sorted(LANGUAGES)})
    prompt_mode: str = field(
        default="auto",
        metadata={
            "help": "completion: the model continues the prompt; chat: the prompt goes through the tokenizer's chat "
            "template and the code is extracted from the answer; auto: chat when the tokenizer has a chat template "
            "and the model name contains instruct, chat or -it, else completion.",
            "choices": list(PROMPT_MODES),
        },
    )
    instruction_prefix: str | None = field(
        default=None, metadata={"help": "Chat mode: text before the problem in the user turn; default per language."}
    )
    response_prefix: str | None = field(
        default=None,
        metadata={"help": "Chat mode: text that starts the answer, before the code block it opens; default per language."},
    )
    num_samples: int = field(default=10, metadata={"help": "n, samples drawn per problem; needs n >= max(k)."})
    k: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "The k values of Pass@k^(m)."})
    m: list[str] = field(
        default_factory=lambda: ["1", "k"], metadata={"help": "The m values of Pass@k^(m); 'k' means m = k."}
    )
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling probability mass."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest completion, in tokens."})
    stop_sequences: list[str] | None = field(
        default=None,
        metadata={"help": "Completions end before the first of these; default: per language and prompt mode."},
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
        check_prompt_mode(self.prompt_mode)


def build_programs(
    prompts: Sequence[str],
    completions: Sequence[Sequence[str]],
    prompt_format: PromptFormat | str = "python",
    entry_points: Sequence[str | None] | None = None,
) -> list[list[str | None]]:
    """programs[problem][sample]: what `prompt_format` builds from each prompt and completion (a language name
    means completion mode in that language); None for a completion with no code."""
    prompt_format = PromptFormat(language=prompt_format) if isinstance(prompt_format, str) else prompt_format
    entry_points = [None] * len(prompts) if entry_points is None else entry_points
    return [
        [prompt_format.program(prompt, completion, entry_point) for completion in group]
        for prompt, group, entry_point in zip(prompts, completions, entry_points)
    ]


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


def load_problems(
    dataset: str,
    split: str = "test",
    num_problems: int | None = None,
    columns: dict[str, str] | None = None,
) -> list[dict]:
    """The first `num_problems` problems of `dataset` as dicts with keys task_id, prompt, test, entry_point.

    Args:
        dataset: a .json/.jsonl(.gz) file, a VerilogEval directory, or a name or directory for `datasets.load_dataset`.
        columns: {"prompt": column, "test": column, "entry_point": column} where the dataset names them otherwise.
    """
    if is_verilog_eval_dir(dataset):
        problems = load_verilog_eval(dataset)
    else:
        if dataset.endswith((".json", ".jsonl", ".json.gz", ".jsonl.gz")):
            rows = datasets.load_dataset("json", data_files=dataset, split="train")
        else:
            rows = datasets.load_dataset(dataset, split=split)
        columns = {"prompt": "prompt", "test": "test", "entry_point": "entry_point", **(columns or {})}
        missing = sorted(column for column in columns.values() if column not in rows.column_names)
        if missing:
            raise ValueError(
                f"dataset {dataset!r} lacks columns {missing}; it has {rows.column_names}. Name the prompt, test and "
                "entry point columns with --prompt_column, --test_column and --entry_point_column"
            )
        problems = [
            {"task_id": row.get("task_id", index), **{key: row[column] for key, column in columns.items()}}
            for index, row in enumerate(rows)
        ]
    return problems[:num_problems] if num_problems else problems


def main(argv: list[str]) -> None:
    (args,) = TrlParser(EvalArguments).parse_args_and_config(argv)
    if is_verilog_eval_dir(args.dataset) and args.language != "verilog":
        raise ValueError(
            f"dataset {args.dataset!r} is a VerilogEval directory, and --language is {args.language!r}: its problems "
            "would all fail to run. Pass --language verilog"
        )
    set_seed(args.seed)
    columns = {"prompt": args.prompt_column, "test": args.test_column, "entry_point": args.entry_point_column}
    problems = load_problems(args.dataset, args.dataset_split, args.num_problems, columns)
    prompts, entry_points = [problem["prompt"] for problem in problems], [problem["entry_point"] for problem in problems]
    model, tokenizer = load_model(args.model_name_or_path, args.adapter_path)
    prompt_mode = resolve_prompt_mode(args.prompt_mode, tokenizer, args.model_name_or_path)
    prompt_format = PromptFormat(prompt_mode, args.language, args.instruction_prefix, args.response_prefix)
    stop_sequences = prompt_format.stop_sequences if args.stop_sequences is None else args.stop_sequences
    print(f"prompt mode: {prompt_mode}; {len(problems)} problems x {args.num_samples} samples")
    completions = generate_samples(
        model, tokenizer, prompts, args.num_samples, args.temperature, args.top_p, args.max_new_tokens,
        stop_sequences, args.batch_size, prompt_format, progress=True,
    )  # fmt: skip
    programs = build_programs(prompts, completions, prompt_format, entry_points)
    tests = [problem["test"] for problem in problems]
    scores = score(programs, tests, entry_points, args.k, args.m, args.language, args.timeout, args.num_workers)

    os.makedirs(args.output_dir, exist_ok=True)
    task_ids = [problem["task_id"] for problem in problems]
    with open(os.path.join(args.output_dir, "samples.jsonl"), "w") as file:
        for task_id, answers, group, results in zip(task_ids, completions, programs, scores.results):
            for index, (completion, program, result) in enumerate(zip(answers, group, results)):
                row = {"task_id": task_id, "sample": index, "completion": completion, "program": program}
                file.write(json.dumps({**row, "passed": result.passed, "result": result.result}) + "\n")
    with open(os.path.join(args.output_dir, "results.json"), "w") as file:
        summary = {"pass_at_k_m": scores.table, "num_samples": scores.num_samples, "num_correct": scores.num_correct}
        resolved = {"prompt_mode": prompt_mode, "stop_sequences": stop_sequences}
        json.dump({**summary, "task_ids": task_ids, "args": {**asdict(args), **resolved}}, file, indent=2)
    plot_pass_at_k_m(scores.num_samples, scores.num_correct, args.k, os.path.join(args.output_dir, "pass_at_k_m.png"))
    width = max(map(len, scores.table))
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in scores.table.items()))
