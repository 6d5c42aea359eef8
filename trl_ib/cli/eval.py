"""`ib-ft eval`: sample n completions per problem, run them in the sandbox, report Pass@k^(m).

    ib-ft eval --model_name_or_path smollm2-135m-instruct --dataset HumanEval.jsonl.gz --num_samples 10 --k 1 10
    ib-ft eval --model_name_or_path Qwen/Qwen2.5-Coder-0.5B --adapter_path out/ib-lora \\
        --dataset HumanEval.jsonl.gz --prompt_mode completion --k 1 5 10 --m 1 k --output_dir eval_results
    ib-ft eval --model_name_or_path M --dataset VerilogEval/dataset_spec-to-rtl --language verilog
    ib-ft eval --config eval.yaml --temperature 0.2        # YAML config, command line overrides

Prompt modes (completion, chat, auto) are described in `trl_ib.generation.prompting`. Problem sets: a HumanEval-style
.json/.jsonl(.gz) file or `datasets` dataset (columns renamed with --prompt_column etc.), or a VerilogEval
directory (`trl_ib.code_eval.problem_sets`). Writes to `output_dir`: samples.jsonl (one row per sample with its
answer, program and verdict), results.json (the table, per-problem pass counts and the arguments) and
pass_at_k_m.png (Pass@k^(m) against m for each k). The pieces it runs (`generate_samples`, `build_programs`,
`score`) are the library's, which `PassAtKMCallback` and the demo use too.
"""

import fcntl
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import AutoTokenizer, set_seed
from trl import TrlParser

from hub_cards.plots import plot_against_m
from trl_ib.builtin import resolve_model
from trl_ib.code_eval import LANGUAGES, pass_at_k_m_table, resolve_m, score
from trl_ib.code_eval.problem_sets import is_verilog_eval_dir, load_problems
from trl_ib.files import write_atomically
from trl_ib.generation.hf_generation import sample_batches
from trl_ib.generation.prompting import (
    PROMPT_MODES,
    PromptFormat,
    build_programs,
    check_prompt_mode,
    resolve_prompt_mode,
)
from trl_ib.generation.sampling import TEMPERATURE, TOP_P
from trl_ib.generation.vllm_generation import BACKENDS, resolve_backend
from trl_ib.models import load_model
from trl_ib.precision import DTYPE_CHOICES, resolve_dtype


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
        metadata={
            "help": "Chat mode: text that starts the answer, before the code block it opens; default per language."
        },
    )
    num_samples: int = field(default=10, metadata={"help": "n, samples drawn per problem; needs n >= max(k)."})
    k: list[int] = field(default_factory=lambda: [1, 5, 10], metadata={"help": "The k values of Pass@k^(m)."})
    m: list[str] = field(
        default_factory=lambda: ["1", "k"], metadata={"help": "The m values of Pass@k^(m); 'k' means m = k."}
    )
    temperature: float = field(default=TEMPERATURE, metadata={"help": "Sampling temperature; 0 decodes greedily."})
    top_p: float = field(default=TOP_P, metadata={"help": "Nucleus sampling probability mass."})
    max_new_tokens: int = field(default=512, metadata={"help": "Longest completion, in tokens."})
    stop_sequences: list[str] | None = field(
        default=None,
        metadata={"help": "Completions end before the first of these; default: per language and prompt mode."},
    )
    batch_size: int = field(
        default=16,
        metadata={
            "help": "hf: sequences generated per forward pass; vllm: problems per vLLM call (each call's "
            "samples are appended to samples.jsonl)."
        },
    )
    backend: str = field(
        default="auto",
        metadata={
            "help": "What generates the samples: hf (transformers' generate, data parallel under accelerate "
            'launch), vllm (one process; pip install "ib-ft[vllm]", docs/VLLM.md) or auto: vllm where it is '
            "installed and one process runs, else hf.",
            "choices": list(BACKENDS),
        },
    )
    merge_adapter: bool = field(
        default=True,
        metadata={
            "help": "hf backend: merge --adapter_path into the weights before sampling (the same model up to "
            "rounding, as fast as the base); False samples through PEFT's unmerged adapter layers."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "Dtype of the weights while sampling (vllm: unless --vllm_kwargs names one). auto: the "
            "checkpoint's own dtype; rule: bfloat16 where the device computes it natively (a CUDA GPU with "
            "bf16, a CPU with AVX-512 BF16 or AMX), else float32; or float32, bfloat16, float16.",
            "choices": list(DTYPE_CHOICES),
        },
    )
    vllm_kwargs: str = field(
        default="{}",
        metadata={
            "help": "With --backend vllm: a JSON object of vllm.LLM arguments, e.g. "
            '\'{"tensor_parallel_size": 2, "dtype": "bfloat16"}\'.'
        },
    )
    timeout: float = field(default=3.0, metadata={"help": "Wall-clock seconds each sample may run."})
    num_workers: int | None = field(default=None, metadata={"help": "Samples run in parallel; default: CPUs."})
    output_dir: str = field(
        default="eval_results",
        metadata={"help": "Where the results are written; a rerun with the same arguments resumes there."},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start afresh instead of resuming the samples already in output_dir."}
    )
    seed: int = field(default=0, metadata={"help": "Random seed for sampling."})

    def __post_init__(self):
        resolve_backend(self.backend)
        try:
            llm_kwargs = json.loads(self.vllm_kwargs) if isinstance(self.vllm_kwargs, str) else self.vllm_kwargs
        except json.JSONDecodeError as error:
            raise ValueError(f"vllm_kwargs={self.vllm_kwargs!r} is not JSON ({error})") from None
        if not isinstance(llm_kwargs, dict):
            raise ValueError(f"vllm_kwargs={self.vllm_kwargs!r}: give a JSON object of vllm.LLM arguments")
        self.vllm_kwargs = json.dumps(llm_kwargs, sort_keys=True)
        if self.num_samples < max(self.k):
            raise ValueError(f"num_samples={self.num_samples} is smaller than max(k)={max(self.k)}; need n >= k")
        for m in self.m:
            resolve_m(m, max(self.k))
        check_prompt_mode(self.prompt_mode)
        resolve_dtype(self.dtype)


def plot_pass_at_k_m(
    num_samples: Sequence[int] | int, num_correct: Sequence[int], k: Sequence[int], path: str
) -> None:
    """Save a PNG of Pass@k^(m) against m = 1..k, one line per k."""
    curves = {
        f"k = {k_}": list(
            enumerate(pass_at_k_m_table(num_samples, num_correct, k=[k_], m=range(1, k_ + 1)).values(), 1)
        )
        for k_ in k
    }
    plot_against_m(curves, path, "Pass@k^(m) against m")


# The EvalArguments that decide the samples: a rerun resumes an output_dir only if these, and the prompts, match.
GENERATION_FIELDS = (
    "model_name_or_path",
    "adapter_path",
    "dataset",
    "dataset_split",
    "prompt_column",
    "num_problems",
    "language",
    "prompt_mode",
    "instruction_prefix",
    "response_prefix",
    "num_samples",
    "temperature",
    "top_p",
    "max_new_tokens",
    "stop_sequences",
    "batch_size",
    "seed",
    "backend",
    "vllm_kwargs",
    "dtype",
    "merge_adapter",
)


def read_done_samples(output_dir: str, generation: dict, task_ids: list) -> dict[tuple[int, int], str]:
    """{(problem, sample): completion} already in output_dir/samples.jsonl from a run with the same `generation`
    arguments; {} for a new output_dir. Raises ValueError naming the arguments that differ."""
    samples_path, generation_path = (os.path.join(output_dir, name) for name in ("samples.jsonl", "generation.json"))
    if not os.path.exists(generation_path):
        return {}
    with open(generation_path) as file:
        recorded = json.load(file)
    changed = sorted(name for name in {**recorded, **generation} if recorded.get(name) != generation.get(name))
    if changed:
        differences = "; ".join(
            f"{name}: {recorded.get(name)!r} there, {generation.get(name)!r} now" for name in changed
        )
        raise ValueError(
            f"output_dir {output_dir!r} holds samples generated with other arguments ({differences}). Resume with "
            "the same arguments, pass another --output_dir, or --overwrite_output_dir to start afresh"
        )
    index_of, done = {task_id: index for index, task_id in enumerate(task_ids)}, {}
    if os.path.exists(samples_path):
        with open(samples_path) as file:
            for line in file:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the last line of a run killed while writing it
                done[index_of[row["task_id"]], row["sample"]] = row["completion"]
    return done


def sample_lines(rows: list[tuple[int, int, str]], task_ids: list) -> str:
    """samples.jsonl lines (before scoring) of (problem, sample, completion) rows."""
    return "".join(json.dumps({"task_id": task_ids[i], "sample": s, "completion": c}) + "\n" for i, s, c in rows)


def append_samples(path: str, rows: list[tuple[int, int, str]], task_ids: list) -> None:
    """Append one batch's (problem, sample, completion) rows to samples.jsonl, under a lock (data parallel ranks
    write to the same file), flushed before returning."""
    text = sample_lines(rows, task_ids)
    with open(path, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.write(text)
        file.flush()


def process_state() -> PartialState:
    """accelerate's view of the processes, joined over gloo on a machine without an accelerator (accelerate would
    otherwise leave each CPU process alone, and each would evaluate everything). Raises RuntimeError where the
    launcher started several processes that did not join."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    on_cpu = launched > 1 and not (torch.cuda.is_available() or torch.xpu.is_available())
    state = PartialState(cpu=on_cpu)
    if state.num_processes != launched:
        raise RuntimeError(
            f"the launcher started {launched} processes (WORLD_SIZE) but accelerate joined {state.num_processes}: each "
            "would evaluate every problem. Launch with `accelerate launch --num_processes N -m trl_ib.cli eval ...` "
            "(on CPU add --multi_gpu, which only spawns the processes) or torchrun"
        )
    return state


def main(argv: list[str]) -> None:
    (args,) = TrlParser(EvalArguments).parse_args_and_config(argv)
    if is_verilog_eval_dir(args.dataset) and args.language != "verilog":
        raise ValueError(
            f"dataset {args.dataset!r} is a VerilogEval directory, and --language is {args.language!r}: its problems "
            "would all fail to run. Pass --language verilog"
        )
    state = process_state()
    backend = resolve_backend(args.backend, state.num_processes)
    set_seed(args.seed)
    columns = {"prompt": args.prompt_column, "test": args.test_column, "entry_point": args.entry_point_column}
    problems = load_problems(args.dataset, args.dataset_split, args.num_problems, columns)
    prompts, entry_points = (
        [problem["prompt"] for problem in problems],
        [problem["entry_point"] for problem in problems],
    )
    task_ids = [problem["task_id"] for problem in problems]
    generation = {name: getattr(args, name) for name in GENERATION_FIELDS}
    dtype = resolve_dtype(args.dtype, device=state.device)  # "rule" resolves per machine
    llm_kwargs = json.loads(args.vllm_kwargs)
    if backend == "vllm":
        from trl_ib.generation.vllm_generation import vllm_dtype

        model_path = resolve_model(args.model_name_or_path)
        llm_kwargs = {"dtype": vllm_dtype(dtype, model_path), **llm_kwargs}
    # what decides the samples, resolved: the backend "auto" picked, the dtype each backend samples in
    generation.update(backend=backend, dtype=str(llm_kwargs["dtype"] if backend == "vllm" else dtype))
    generation["prompts_sha256"] = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
    samples_path = os.path.join(args.output_dir, "samples.jsonl")
    done = {} if args.overwrite_output_dir else read_done_samples(args.output_dir, generation, task_ids)
    state.wait_for_everyone()  # every rank has read the old rows before the main process rewrites them
    if state.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        write_atomically(os.path.join(args.output_dir, "generation.json"), json.dumps(generation, indent=2))
        # without a torn last line, so that new rows start on a line of their own
        write_atomically(samples_path, sample_lines([(i, s, c) for (i, s), c in sorted(done.items())], task_ids))
    state.wait_for_everyone()

    if backend == "vllm":
        from trl_ib.generation.vllm_generation import lora_rank, make_llm, vllm_sample_batches

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        rank = None if args.adapter_path is None else lora_rank(args.adapter_path)
        llm = make_llm(model_path, max_lora_rank=rank, seed=args.seed, **llm_kwargs)
    else:
        model, tokenizer = load_model(args.model_name_or_path, args.adapter_path, dtype, args.merge_adapter)
        model.to(state.device)
    prompt_mode = resolve_prompt_mode(args.prompt_mode, tokenizer, args.model_name_or_path)
    prompt_format = PromptFormat(prompt_mode, args.language, args.instruction_prefix, args.response_prefix)
    stop_sequences = prompt_format.stop_sequences if args.stop_sequences is None else args.stop_sequences
    state.print(
        f"prompt mode: {prompt_mode}; {len(problems)} problems x {args.num_samples} samples"
        + (f"; {len(done)} samples already in {samples_path}" if done else "")
        + (f"; {state.num_processes} processes" if state.num_processes > 1 else "")
    )
    new_rows = []
    sampling = (
        prompts,
        args.num_samples,
        args.temperature,
        args.top_p,
        args.max_new_tokens,
        stop_sequences,
        args.batch_size,
        prompt_format,
    )
    if backend == "vllm":
        batches = vllm_sample_batches(llm, tokenizer, *sampling, args.adapter_path, args.seed, done, progress=True)
    else:
        batches = sample_batches(
            model,
            tokenizer,
            *sampling,
            progress=state.is_main_process,
            seed=args.seed,
            done=done,
            rank=state.process_index,
            world_size=state.num_processes,
        )
    for rows in batches:
        append_samples(samples_path, rows, task_ids)
        new_rows += rows
    if state.num_processes > 1:
        new_rows = gather_object(new_rows)
        # The last collective: the main process scores alone, and a gloo group left to the interpreter's exit has
        # aborted a finished rank ("terminate called without an active exception"). Only the group accelerate made
        # for several processes: a single process's group, if any, is someone else's (vLLM's engine makes one).
        state.destroy_process_group()
    if not state.is_main_process:
        return
    done.update(((index, sample), completion) for index, sample, completion in new_rows)
    completions = [[done[index, sample] for sample in range(args.num_samples)] for index in range(len(problems))]
    programs = build_programs(prompts, completions, prompt_format, entry_points)
    tests = [problem["test"] for problem in problems]
    scores = score(programs, tests, entry_points, args.k, args.m, args.language, args.timeout, args.num_workers)

    lines = []
    for task_id, answers, group, results in zip(task_ids, completions, programs, scores.results):
        for index, (completion, program, result) in enumerate(zip(answers, group, results)):
            row = {"task_id": task_id, "sample": index, "completion": completion, "program": program}
            lines.append(json.dumps({**row, "passed": result.passed, "result": result.result}) + "\n")
    write_atomically(samples_path, "".join(lines))
    summary = {"pass_at_k_m": scores.table, "num_samples": scores.num_samples, "num_correct": scores.num_correct}
    resolved = {"prompt_mode": prompt_mode, "stop_sequences": stop_sequences, "backend": backend}
    results = {**summary, "task_ids": task_ids, "args": {**asdict(args), **resolved}}
    write_atomically(os.path.join(args.output_dir, "results.json"), json.dumps(results, indent=2))
    plot_pass_at_k_m(scores.num_samples, scores.num_correct, args.k, os.path.join(args.output_dir, "pass_at_k_m.png"))
    width = max(map(len, scores.table))
    print("\n".join(f"{name:<{width}}  {value:.4f}" for name, value in scores.table.items()))
