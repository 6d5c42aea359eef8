"""Training cost of IB-FT: plain LoRA vs IB-LoRA vs the official code's approach, per optimizer step.

    python benchmarks/bench_train.py            # full run: every config below
    python benchmarks/bench_train.py --quick    # two small configs, printed only
    python benchmarks/bench_train.py --only smollm2-135m-512 smollm2-135m-2048   # the real model's weights
    python benchmarks/bench_train.py --only smollm2-135m-512 --variants abAB     # float32 vs bf16 autocast
    python benchmarks/bench_train.py --only smollm2-135m-512 --variants abwW     # whole-model fine-tuning, both dtypes
    python benchmarks/bench_train.py --only smollm2-135m-512 --variants aADbBE --threads 2 --profile   # frozen base in bf16

Variants, each in its own subprocess (so that its peak memory is its own), on the same batches in the same order:
  a  plain LoRA, TRL's SFTTrainer                    (LoraConfig r=32 on every linear layer of the blocks)
  b  IB-FT, IBSFTTrainer                              (IBLoraConfig: the same LoRA + one IB encoder, D = ib_dim)
  c  the peer baseline: a re-implementation of the official code's approach (docs/METHOD.md, "How this
     implementation differs from the official code"), `PeerIBModel` below: all hidden states requested, full-vocab IB
     and task logits over the whole sequence, every row padded to the max length, KL averaged over every position.
  A, B  a and b under bf16 autocast (`bf16=True`: float32 master weights and optimizer, matmuls in bf16, the IB
     terms in float32), through the trainer's `accelerator.autocast()` as its training loop applies it.
  D, E  A and B with the frozen base weights stored in bf16 (`from_pretrained(dtype=torch.bfloat16)`, as one loads a
     base on a GPU); the LoRA and IB weights stay float32 (PEFT's `autocast_adapter_dtype`), so the trained weights and
     the optimizer are float32 as in A and B, and autocast has no frozen weight left to cast.
  w, W  whole-model fine-tuning (SFTTrainer, no adapter: every weight trained, as the demo makes its two bases), in float32
     and under bf16 autocast: whether the dtype rule pays when the weights are trained too.
Models are Llama-style, built from a LlamaConfig (random weights, nothing downloaded), fp32; the smollm2-135m configs
load SmolLM2-135M-Instruct's real weights (the built-in base, `trl_ib.builtin.resolve_model`) instead. Rows are
prompt/completion pairs of mixed lengths; a and b are collated by TRL's collator (dynamic padding, loss on the
completion only).
Every variant runs the same step: forward + backward (a, b: `trainer.training_step`; c: `PeerIBModel.training_step`),
`clip_grad_norm_(1.0)`, the optimizer TRL's Trainer builds (AdamW, fused), `zero_grad`. Activation checkpointing is on
in all three (TRL's default). The three processes live at once but step in turn (a b c, c b a, ...), so a drift in the
load of a shared machine hits them alike; the time ratio is the median over timed steps of b's (c's) time over a's on
the same batch, in wall time and in the process's CPU time (with one thread, time spent descheduled by a busy
machine does not count there). One intra-op thread per process by default (see --threads). `--profile` runs each
variant through one more step, after the timed ones, under `torch.profiler` and prints its top operators by self CPU
time, and the inclusive share of TRL's fused LM head (`ChunkedLogProbFunction`, forward and backward). Peak memory:
max RSS (CPU, `resource.getrusage`) or `torch.cuda.max_memory_allocated` (GPU).

The floor f = FLOPs(b) / FLOPs(a) counts what actually runs (see `step_flops`): IB-FT must at least pay for the
encoder heads on every KL position, and for up(z), one more lm_head projection and its cross-entropy at every
supervised position. Targets: (b/a - 1) <= 1.25 (f - 1) + 0.02 for time; b/a <= 1.05 for peak memory at seq 2048.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from results_file import record, results_path, run_key

RESULTS = results_path(__file__)
LORA_R = 32
IB_DEPTH = 0.625  # the paper's block 20 of 32
BF16_BASE = {"D": "A", "E": "B"}  # variant -> the variant it repeats with the frozen base stored in bf16


@dataclass(frozen=True)
class BenchConfig:
    """One model shape and one max length; `rows` per step, `warmup` untimed then `steps` timed steps."""

    name: str
    hidden: int
    layers: int
    intermediate: int
    heads: int
    vocab: int
    seq: int
    rows: int
    ib_dim: int = 256
    warmup: int = 1
    steps: int = 2
    kv_heads: int | None = None  # grouped-query attention: fewer K/V heads than `heads` (None: as many)
    weights: str | None = None  # a model name or path to load instead of random weights; its shape must match

    @property
    def batch(self) -> int:
        return self.rows


# Small-model proportions (a 100M-class Llama), the paper's D = 256.
SMALL = dict(hidden=512, layers=8, intermediate=1376, heads=8, ib_dim=256)
# The scaling table's model: narrow, so that 2 CPU cores get through vocab 128k x seq 2048 in minutes; D = H / 2.
SCALE = dict(hidden=64, layers=4, intermediate=172, heads=1, ib_dim=32)
# Shaped like a 7B Llama (H 4096, 32 blocks, I 11008, V 32000, D 256) in the share of lm_head and of the IB branch
# in a step's FLOPs: many narrow blocks, a small vocab, D = H / 16; its floor f is printed next to the real 7B's.
SEVEN_B_SHAPED = dict(hidden=256, layers=16, intermediate=688, heads=4, vocab=1000, ib_dim=16)
SEVEN_B = dict(hidden=4096, layers=32, intermediate=11008, heads=32, vocab=32000, ib_dim=256)
# The built-in base with its real weights: 30 blocks, GQA (9 query, 3 K/V heads), tied embeddings; the paper's D.
SMOLLM2 = dict(
    hidden=576,
    layers=30,
    intermediate=1536,
    heads=9,
    kv_heads=3,
    vocab=49152,
    ib_dim=256,
    weights="smollm2-135m-instruct",
)
ROWS = {512: 2, 1024: 1, 2048: 1}  # rows per step: what 2 shared CPU cores get through, not a GPU batch

FULL_CONFIGS = [
    BenchConfig("small-32k-512", **SMALL, vocab=32000, seq=512, rows=2, steps=3),
    BenchConfig("7b-shaped-512", **SEVEN_B_SHAPED, seq=512, rows=2, steps=3),
    *(
        BenchConfig(f"scale-{v // 1000}k-{s}", **SCALE, vocab=v, seq=s, rows=ROWS[s], steps=3 if v < 100000 else 2)
        for v in (32000, 128256)
        for s in (512, 1024, 2048)
    ),
    BenchConfig("smollm2-135m-512", **SMOLLM2, seq=512, rows=ROWS[512], steps=3),
    BenchConfig("smollm2-135m-2048", **SMOLLM2, seq=2048, rows=ROWS[2048], steps=2),
]
QUICK_CONFIGS = [
    BenchConfig("scale-32k-1024", **SCALE, vocab=32000, seq=1024, rows=1),
    BenchConfig("scale-128k-1024", **SCALE, vocab=128256, seq=1024, rows=1),
]


# ---- data ---------------------------------------------------------------------------------------------------------


def make_rows(config: BenchConfig, num_rows: int, seed: int = 0) -> list[dict]:
    """
    Prompt/completion rows: lengths spread over [seq/4, seq], prompts over 10-50% of them, by low-discrepancy
    sequences (golden and plastic ratios), so that every config sees the same relative lengths in the same order;
    token ids uniform over the vocab.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    rows = []
    for k in range(1, num_rows + 1):
        length = int(config.seq / 4 + (k * 0.6180339887 % 1) * config.seq * 3 / 4)
        prompt = max(1, int(length * (0.1 + 0.4 * (k * 0.7548776662 % 1))))
        ids = torch.randint(2, config.vocab, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * (length - prompt)})
    return rows


def pad_to_max_length(rows: list[dict], max_length: int, pad_id: int = 0) -> dict:
    """The official code's batches: every row padded to `max_length`; labels -100 on the prompt and the padding."""
    import torch

    input_ids = torch.full((len(rows), max_length), pad_id)
    attention_mask = torch.zeros(len(rows), max_length, dtype=torch.long)
    labels = torch.full((len(rows), max_length), -100)
    for i, row in enumerate(rows):
        ids, mask = torch.tensor(row["input_ids"]), torch.tensor(row["completion_mask"])
        input_ids[i, : len(ids)] = ids
        attention_mask[i, : len(ids)] = 1
        labels[i, : len(ids)] = ids.masked_fill(mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def batch_counts(batch: dict) -> dict:
    """Shape and token counts of one collated batch, as `step_flops` reads them."""
    labels = batch["labels"]
    rows, seq = labels.shape
    return {
        "rows": rows,
        "seq": seq,
        "real": int(batch["attention_mask"].sum()),  # non-padding tokens (= KL positions of b, ib_kl_mask="attention")
        "supervised": int((labels[:, 1:] != -100).sum()),  # positions whose next-token label is kept
    }


# ---- the FLOP floor -----------------------------------------------------------------------------------------------


def step_flops(config: BenchConfig, counts: dict, variant: str, checkpointing: bool = True) -> dict:
    """
    Matmul FLOPs of one training step, by part, counting what runs (elementwise work is left out):
    - frozen linear (in x out) over T positions: forward 2 T in out, backward dX only (no dW): 2 T in out, and one
      more forward inside the blocks when activations are checkpointed;
    - LoRA (in -> r -> out): forward 2 T r (in + out), backward dX and dW: twice that, plus the recomputation;
    - attention: QK^T and PV, 4 T N H forward (padded batches carry a mask, so no causal skipping), 2x in backward;
    - lm_head (frozen, TRL's chunked log-prob): forward 2 P H V, backward recomputes the logits tile and forms dX:
      4 P H V, over P positions. On devices without Triton (CPUs) TRL's fused head scores every position
      (`add_fused_lm_head`: `compact = _use_triton(...)`), so P = rows x (seq - 1) there; the IB branch scores only
      the supervised positions;
    - IB encoder (b, c): mu and logvar (H -> D each) on every KL position, up (D -> H) at every supervised position
      (b) or every position (c); trainable: 3x forward;
    - whole-model fine-tuning (w): no LoRA; every linear layer and the (tied) lm_head also form dW, one more pass each.
    c's task and IB logits are ordinary full (rows, seq, V) products: forward 2 T H V, backward dX 2 T H V, each.
    """
    import torch

    h, n_layers, inter, vocab, d, r = (
        config.hidden,
        config.layers,
        config.intermediate,
        config.vocab,
        config.ib_dim,
        LORA_R,
    )
    rows, seq = counts["rows"], counts["seq"]
    positions = rows * seq
    kv = h * (config.kv_heads or config.heads) // config.heads  # K/V width (GQA: fewer K/V heads)
    linears = [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h)]  # q k v o gate up down
    block_passes = 3 if checkpointing else 2  # forward (+ recompute) + backward dX
    full = variant == "w"
    frozen = sum(2 * i * o for i, o in linears) * positions * (block_passes + full) * n_layers
    lora = 0 if full else sum(2 * r * (i + o) for i, o in linears) * positions * (block_passes + 1) * n_layers
    attention = 4 * rows * seq * seq * h * (block_passes + 1) * n_layers
    parts = {"blocks": frozen + lora + attention}
    has_triton = torch.cuda.is_available()
    head_positions = counts["supervised"] if has_triton else rows * (seq - 1)
    if variant == "c":
        parts["lm_head"] = 2 * (4 * positions * h * vocab)  # task logits + IB logits, full
        parts["ib_encoder"] = 3 * (2 * positions * h * 2 * d + 2 * positions * d * h)
    else:
        parts["lm_head"] = (8 if full else 6) * head_positions * h * vocab
    if variant == "b":
        kl_positions, supervised = counts["real"], counts["supervised"]
        parts["ib_encoder"] = 3 * (2 * kl_positions * h * 2 * d + 2 * supervised * d * h)
        parts["ib_lm_head"] = 6 * supervised * h * vocab
    parts["total"] = sum(parts.values())
    return parts


# ---- the peer baseline (c) ----------------------------------------------------------------------------------------


def build_peer_model(config: BenchConfig):
    """The official code's approach, re-implemented: an nn.Module around the LoRA model (see module docstring)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class PeerIBModel(nn.Module):
        """LoRA model + a variational adapter on hidden_states[layer], both CEs from full-vocab logits."""

        def __init__(self, lm, layer: int, ib_dim: int, alpha: float = 0.2, beta: float = 0.01):
            super().__init__()
            self.lm, self.layer, self.alpha, self.beta = lm, layer, alpha, beta
            hidden = lm.config.hidden_size
            self.mu, self.logvar, self.up = (
                nn.Linear(hidden, ib_dim),
                nn.Linear(hidden, ib_dim),
                nn.Linear(ib_dim, hidden),
            )

        @staticmethod
        def shifted_ce(logits, labels, attention_mask):
            # (B, N, V) -> shifted copy -> rows with a kept label -> mean CE over them
            shifted = logits[:, :-1, :].contiguous().reshape(-1, logits.size(-1))
            keep = ((labels[:, 1:] != -100) & attention_mask[:, 1:].bool()).reshape(-1).nonzero(as_tuple=True)[0]
            return F.cross_entropy(shifted[keep], labels[:, 1:].reshape(-1)[keep])

        def forward(self, input_ids, attention_mask, labels):
            out = self.lm(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, return_dict=True
            )
            h = out.hidden_states[self.layer]  # (B, N, H), padding included
            mu, logvar = self.mu(h), self.logvar(h).clamp(-4.0, 4.0)
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()  # every position, padding included
            logits_ib = self.lm.get_output_embeddings()(self.up(z))  # (B, N, V)
            ce_ib = self.shifted_ce(logits_ib, labels, attention_mask)
            ce = self.shifted_ce(out.logits, labels, attention_mask)  # (B, N, V) task logits
            return ce + self.alpha * (kl + self.beta * ce_ib)

        def training_step(self, batch) -> torch.Tensor:
            self.train()
            loss = self(**batch)
            loss.backward()
            return loss.detach()

    from peft import LoraConfig, get_peft_model

    lm = get_peft_model(build_llama(config), lora_config(LoraConfig))
    return PeerIBModel(lm, layer=int(IB_DEPTH * config.layers + 0.5), ib_dim=config.ib_dim)


# ---- one variant, in its own process ------------------------------------------------------------------------------


def build_llama(config: BenchConfig, dtype=None):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    dtype = dtype or torch.float32
    if config.weights:
        from trl_ib.builtin import resolve_model

        model = AutoModelForCausalLM.from_pretrained(resolve_model(config.weights), dtype=dtype)
        c = model.config
        shape = (
            c.hidden_size,
            c.num_hidden_layers,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size,
        )
        expected = (config.hidden, config.layers, config.intermediate, config.heads, config.kv_heads, config.vocab)
        if shape != expected:  # step_flops counts from the config's fields
            raise ValueError(f"{config.name}: {config.weights} has shape {shape}, the config says {expected}")
        return model
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=config.vocab,
            hidden_size=config.hidden,
            intermediate_size=config.intermediate,
            num_hidden_layers=config.layers,
            num_attention_heads=config.heads,
            num_key_value_heads=config.kv_heads or config.heads,
            max_position_embeddings=config.seq,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
            tie_word_embeddings=False,
        )
    ).to(dtype)


def lora_config(cls, **kwargs):
    """The paper's LoRA (docs/METHOD.md, "The settings the paper reports") on every linear layer of the blocks."""
    return cls(
        r=LORA_R, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM", **kwargs
    )


def tokenizer():
    """A two-token tokenizer: TRL needs a processing class for its pad id; the rows are already token ids."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<eos>"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def enable_checkpointing(model) -> None:
    """What `Trainer.train` does with TRL's default `gradient_checkpointing=True` (non-reentrant)."""
    model.enable_input_require_grads()
    model.activation_checkpointing_enable()


def build_trainer(config: BenchConfig, variant: str, rows: list[dict], output_dir: str):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    import peft_ib  # noqa: F401  (registers the IB-LoRA type)
    from trl_ib.trainer.ib_sft_config import IBSFTConfig
    from trl_ib.trainer.ib_sft_trainer import IBSFTTrainer

    base_dtype = torch.bfloat16 if variant in BF16_BASE else torch.float32
    variant = BF16_BASE.get(variant, variant)
    bf16 = variant.isupper()
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=config.batch,
        max_length=config.seq,
        learning_rate=1e-4,
        bf16=bf16,
        use_cpu=bf16 and not torch.cuda.is_available(),
        report_to="none",
        logging_strategy="no",
        save_strategy="no",
        seed=0,
        gradient_checkpointing=True,
        completion_only_loss=True,
        dataloader_num_workers=0,
    )
    dataset = Dataset.from_list(rows)
    if variant.lower() in "aw":
        peft_config = lora_config(LoraConfig) if variant.lower() == "a" else None  # w: every weight trained
        trainer = SFTTrainer(
            build_llama(config, base_dtype),
            args=SFTConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer(),
            peft_config=peft_config,
        )
    else:
        peft_config = lora_config(peft_ib.IBLoraConfig, ib_layers=IB_DEPTH, ib_dim=config.ib_dim)
        trainer = IBSFTTrainer(
            build_llama(config, base_dtype),
            args=IBSFTConfig(**common),
            train_dataset=dataset,
            processing_class=tokenizer(),
            peft_config=peft_config,
        )
    enable_checkpointing(trainer.model)
    return trainer


def peak_memory_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def profile_summary(profiler, step_s: float, top: int = 8) -> dict:
    """The profiled step's top operators by self CPU time (seconds, share) and the fused LM head's inclusive share."""
    events = profiler.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    head = sum(e.cpu_time_total for e in events if e.key.startswith("ChunkedLogProbFunction")) / 1e6
    ranked = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {
        "step_s": step_s,
        "self_cpu_s": total / 1e6,
        "fused_lm_head_s": head,
        "top_ops": [(e.key, e.self_cpu_time_total / 1e6, e.self_cpu_time_total / total) for e in ranked],
    }


def run_worker(config: BenchConfig, variant: str, commands, replies, threads: int, profile: bool = False) -> dict:
    """
    Build one variant, then run one step per "step" read from `commands`, replying with its time, so that the driver
    interleaves the variants step by step; "finish" ends it. Returns step times, memory and per-batch counts (and,
    with `profile`, `profile_summary` of one more step after the timed ones, not timed with them).
    """
    import torch
    from torch.profiler import ProfilerActivity
    from transformers import Trainer

    if threads > 0:
        torch.set_num_threads(threads)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    num_steps = config.warmup + config.steps + profile  # the profiled step comes after the timed ones
    rows = make_rows(config, num_steps * config.batch)
    with tempfile.TemporaryDirectory() as output_dir:
        if variant == "c":
            from trl import SFTConfig

            model = build_peer_model(config).to(device)
            enable_checkpointing(model.lm)
            batches = [
                pad_to_max_length(rows[i * config.batch : (i + 1) * config.batch], config.seq)
                for i in range(num_steps)
            ]
            batches = [{k: v.to(device) for k, v in b.items()} for b in batches]
            # The optimizer TRL's Trainer builds for a and b (same class, same kwargs)
            optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(
                SFTConfig(output_dir, learning_rate=1e-4, bf16=False)
            )
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = optimizer_cls(params, **optimizer_kwargs)

            def forward_backward(batch):
                return model.training_step(batch)
        else:
            trainer = build_trainer(config, variant, rows, output_dir)
            model = trainer.model
            dataset = trainer.train_dataset  # prepared by TRL: labels -100 on the prompt
            collate = trainer.data_collator  # TRL's: dynamic padding to the longest row of the batch
            batches = [
                collate([dataset[j] for j in range(i * config.batch, (i + 1) * config.batch)])
                for i in range(num_steps)
            ]
            trainer.create_optimizer()
            optimizer = trainer.optimizer
            params = [p for p in model.parameters() if p.requires_grad]

            def forward_backward(batch):
                num_items = trainer._get_num_items_in_batch([batch], device)
                with trainer.accelerator.autocast():  # what the training loop's prepared model runs under
                    return trainer.training_step(model, batch, num_items)

        counts = [batch_counts(b) for b in batches]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        memory_before = current_rss_bytes() if device.type == "cpu" else torch.cuda.memory_allocated(device)
        times, cpu_times, profiled = [], [], None
        replies.write("ready\n")
        replies.flush()
        for index, batch in enumerate(batches):
            if commands.readline().strip() != "step":
                raise RuntimeError("expected 'step'")
            last = profile and index == len(batches) - 1
            profiler = torch.profiler.profile(activities=[ProfilerActivity.CPU]) if last else nullcontext()
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            with profiler:
                forward_backward(batch)
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                sync()
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            if last:
                profiled = profile_summary(profiler, seconds)
            else:
                times.append(seconds)
                cpu_times.append(cpu_seconds)
            replies.write(f"{seconds}\n")
            replies.flush()
        commands.readline()  # "finish"
    return {
        "variant": variant,
        "step_times_s": times[config.warmup :],
        "step_cpu_times_s": cpu_times[config.warmup :],
        "warmup_times_s": times[: config.warmup],
        "peak_memory_bytes": peak_memory_bytes(device),
        "memory_before_steps_bytes": memory_before,
        "trainable_params": sum(p.numel() for p in params),
        "counts": counts[config.warmup : config.warmup + config.steps],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "profile": profiled,
    }


# ---- driver -------------------------------------------------------------------------------------------------------


class Worker:
    """One variant in its own process, driven step by step over a pair of pipes."""

    def __init__(self, config: BenchConfig, variant: str, directory: str, threads: int, profile: bool):
        self.variant, self.out = variant, Path(directory) / f"{variant}.json"
        self.log = open(Path(directory) / f"{variant}.log", "w+")
        cmd_read, cmd_write = os.pipe()
        reply_read, reply_write = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--config",
                json.dumps(asdict(config)),
                "--out",
                str(self.out),
                "--fds",
                f"{cmd_read},{reply_write}",
                "--threads",
                str(threads),
            ]
            + (["--profile"] if profile else []),
            pass_fds=(cmd_read, reply_write),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        os.close(cmd_read)
        os.close(reply_write)
        self.commands, self.replies = os.fdopen(cmd_write, "w"), os.fdopen(reply_read)

    def ask(self, command: str) -> str:
        self.commands.write(command + "\n")
        self.commands.flush()
        return self.receive()

    def receive(self) -> str:
        reply = self.replies.readline()
        if not reply:
            self.proc.wait()
            self.log.seek(0)
            raise RuntimeError(f"variant {self.variant} failed:\n{self.log.read()[-4000:]}")
        return reply.strip()

    def finish(self) -> dict:
        self.commands.write("finish\n")
        self.commands.close()
        if self.proc.wait() != 0:
            self.log.seek(0)
            raise RuntimeError(f"variant {self.variant} failed:\n{self.log.read()[-4000:]}")
        return json.loads(self.out.read_text())


def run_config(config: BenchConfig, variants: str, started: float, threads: int, profile: bool) -> dict[str, dict]:
    """All variants of one config, alive at once but stepping one at a time: a b c, then c b a, and so on."""
    with tempfile.TemporaryDirectory() as directory:
        workers = {v: Worker(config, v, directory, threads, profile) for v in variants}
        for worker in workers.values():
            worker.receive()  # "ready"
        for step in range(config.warmup + config.steps + profile):
            order = variants if step % 2 == 0 else variants[::-1]
            times = {v: float(workers[v].ask("step")) for v in order}
            print(
                f"{config.name:<16} step {step}: "
                + "  ".join(f"{v} {times[v]:6.2f} s" for v in variants)
                + f"  [{time.time() - started:4.0f} s]",
                flush=True,
            )
        return {v: w.finish() for v, w in workers.items()}


def paired_ratio(variants: dict, x: str, y: str, times: str = "step_times_s") -> float:
    """Median over timed steps of x's time over y's on the same batch."""
    return statistics.median(tx / ty for tx, ty in zip(variants[x][times], variants[y][times]))


def summarize(config: BenchConfig, runs: dict[str, dict]) -> dict:
    """Median step time, peak memory and FLOPs per variant; ratios to a; the floor f and the targets."""
    result = {"config": asdict(config), "batch": config.batch, "variants": {}}
    for variant, run in runs.items():
        flops = [step_flops(config, c, BF16_BASE.get(variant, variant).lower()) for c in run["counts"]]
        result["variants"][variant] = {
            **{
                k: run[k]
                for k in (
                    "step_times_s",
                    "step_cpu_times_s",
                    "warmup_times_s",
                    "peak_memory_bytes",
                    "memory_before_steps_bytes",
                    "trainable_params",
                    "device",
                    "threads",
                    "profile",
                )
            },
            "median_step_s": statistics.median(run["step_times_s"]),
            "mean_flops": {k: statistics.mean(f[k] for f in flops) for k in flops[0]},
            "mean_counts": {k: statistics.mean(c[k] for c in run["counts"]) for k in run["counts"][0]},
        }
    v = result["variants"]
    # Each timed step of b (and c) ran on the same batch as a's, right before or after it: the median of these paired
    # ratios cancels most of the drift of a shared machine. The ratio of median step times is kept alongside.
    time_ratio = {k: paired_ratio(v, k, "a") for k in v}
    # The same over the process's CPU time: with one thread per variant, time spent descheduled on a busy machine
    # (the wall-time ratios' main noise) does not count.
    result["cpu_time_ratio"] = {k: paired_ratio(v, k, "a", "step_cpu_times_s") for k in v}
    result["time_ratio_of_medians"] = {k: v[k]["median_step_s"] / v["a"]["median_step_s"] for k in v}
    memory_ratio = {k: v[k]["peak_memory_bytes"] / v["a"]["peak_memory_bytes"] for k in v}
    # What training adds to the process (CPU: peak RSS minus the RSS once model, data and optimizer are built)
    added = {k: v[k]["peak_memory_bytes"] - v[k]["memory_before_steps_bytes"] for k in v}
    result["memory_ratio_added_by_training"] = {k: added[k] / added["a"] for k in v}
    floor = v["b"]["mean_flops"]["total"] / v["a"]["mean_flops"]["total"]
    result.update(
        time_ratio=time_ratio,
        memory_ratio=memory_ratio,
        floor_f=floor,
        flops_ratio_c=v["c"]["mean_flops"]["total"] / v["a"]["mean_flops"]["total"] if "c" in v else None,
        time_target=1 + 1.25 * (floor - 1) + 0.02,
        time_ok=time_ratio["b"] <= 1 + 1.25 * (floor - 1) + 0.02,
        memory_ok=memory_ratio["b"] <= 1.05 if config.seq >= 2048 else None,
    )
    if {"A", "B"} <= set(v):  # bf16 autocast: its speedup over float32, and IB-FT's cost over LoRA within bf16
        result["bf16"] = {
            "speedup_a": paired_ratio(v, "a", "A"),
            "speedup_b": paired_ratio(v, "b", "B"),
            "time_ratio_B_over_A": paired_ratio(v, "B", "A"),
            "step_s_A": v["A"]["median_step_s"],
            "memory_ratio_A_over_a": v["A"]["peak_memory_bytes"] / v["a"]["peak_memory_bytes"],
        }
        result["bf16"]["time_ok"] = result["bf16"]["time_ratio_B_over_A"] <= result["time_target"]
    for stored, autocast in BF16_BASE.items():  # the frozen base stored in bf16: its speedup over autocast alone
        if {stored, autocast, autocast.lower()} <= set(v):
            result.setdefault("bf16_base", {})[stored] = {
                "over": autocast,
                "speedup_over_float32": paired_ratio(v, autocast.lower(), stored),
                "speedup_over_autocast": paired_ratio(v, autocast, stored),
                "step_s": v[stored]["median_step_s"],
                "memory_ratio_over_autocast": v[stored]["peak_memory_bytes"] / v[autocast]["peak_memory_bytes"],
            }
    if {"w", "W"} <= set(v):  # whole-model fine-tuning: what bf16 autocast does when every weight is trained
        result["bf16_whole"] = {
            "speedup_w": paired_ratio(v, "w", "W"),
            "step_s_w": v["w"]["median_step_s"],
            "step_s_W": v["W"]["median_step_s"],
            "time_ratio_w_over_a": time_ratio["w"],
            "memory_ratio_W_over_w": v["W"]["peak_memory_bytes"] / v["w"]["peak_memory_bytes"],
        }
    return result


def print_table(results: list[dict], seven_b_floor: float) -> None:
    header = (
        f"{'config':<17} {'H':>4} {'L':>3} {'V':>6} {'seq':>5} {'B':>2} | {'a s/step':>8} {'b/a':>5} {'c/a':>5} "
        f"{'cpu b/a':>7} {'c/a':>5} | {'f':>5} {'target':>6} {'time':>4} | {'a GB':>5} {'b/a':>5} {'c/a':>5} "
        f"{'mem':>4} | {'+b/a':>5} {'+c/a':>5} | {'fc':>5}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        c, t, m, added = r["config"], r["time_ratio"], r["memory_ratio"], r["memory_ratio_added_by_training"]
        cpu = r.get("cpu_time_ratio", {})
        mem_ok = "-" if r["memory_ok"] is None else ("ok" if r["memory_ok"] else "MISS")
        print(
            f"{c['name']:<17} {c['hidden']:>4} {c['layers']:>3} {c['vocab']:>6} {c['seq']:>5} {r['batch']:>2} | "
            f"{r['variants']['a']['median_step_s']:>8.2f} {t['b']:>5.3f} {t.get('c', float('nan')):>5.2f} "
            f"{cpu.get('b', float('nan')):>7.3f} {cpu.get('c', float('nan')):>5.2f} | "
            f"{r['floor_f']:>5.3f} {r['time_target']:>6.3f} {'ok' if r['time_ok'] else 'MISS':>4} | "
            f"{r['variants']['a']['peak_memory_bytes'] / 2**30:>5.2f} {m['b']:>5.3f} {m.get('c', float('nan')):>5.2f} "
            f"{mem_ok:>4} | {added['b']:>5.3f} {added.get('c', float('nan')):>5.2f} | "
            f"{r['flops_ratio_c'] or float('nan'):>5.2f}"
        )
    for r in results:
        if "bf16" in r:
            bf16 = r["bf16"]
            print(
                f"{r['config']['name']:<17} bf16 autocast: A {bf16['step_s_A']:.2f} s/step, speedup a/A "
                f"{bf16['speedup_a']:.2f}x, b/B {bf16['speedup_b']:.2f}x; B/A {bf16['time_ratio_B_over_A']:.3f} "
                f"(target {r['time_target']:.3f}: {'ok' if bf16['time_ok'] else 'MISS'}); peak memory A/a "
                f"{bf16['memory_ratio_A_over_a']:.3f}"
            )
        for stored, row in r.get("bf16_base", {}).items():
            print(
                f"{r['config']['name']:<17} frozen base in bf16: {stored} {row['step_s']:.2f} s/step, speedup "
                f"{row['over'].lower()}/{stored} {row['speedup_over_float32']:.2f}x, {row['over']}/{stored} "
                f"{row['speedup_over_autocast']:.2f}x; peak memory {stored}/{row['over']} "
                f"{row['memory_ratio_over_autocast']:.3f}"
            )
        if "bf16_whole" in r:
            whole = r["bf16_whole"]
            print(
                f"{r['config']['name']:<17} whole-model fine-tuning: w {whole['step_s_w']:.2f} s/step, W "
                f"{whole['step_s_W']:.2f} s/step, speedup w/W {whole['speedup_w']:.2f}x; w/a "
                f"{whole['time_ratio_w_over_a']:.2f}; peak memory W/w {whole['memory_ratio_W_over_w']:.3f}"
            )
    for r in results:
        for variant, run in r["variants"].items():
            if run["profile"]:
                prof = run["profile"]
                ops = ", ".join(f"{name} {share:.0%}" for name, _, share in prof["top_ops"])
                print(
                    f"{r['config']['name']:<17} {variant} profiled step {prof['step_s']:.2f} s: fused LM head "
                    f"{prof['fused_lm_head_s'] / prof['self_cpu_s']:.0%} of {prof['self_cpu_s']:.2f} s CPU; {ops}"
                )
    print(
        f"(cpu b/a, c/a: the paired step-time ratios over process CPU time; +b/a, +c/a: peak memory added by "
        f"training steps, over a's; fc = FLOPs(c) / FLOPs(a); f of a real 7B Llama at seq 2048, same accounting: "
        f"{seven_b_floor:.3f})"
    )


def plot(results: list[dict], path: Path) -> None:
    """Step time and peak memory of b and c relative to a, per config of the scaling table, with b's floor f."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = [r for r in results if r["config"]["name"].startswith("scale-")]
    if not scale:
        return
    labels = [f"V {r['config']['vocab'] // 1000}k\nseq {r['config']['seq']}" for r in scale]
    x = range(len(scale))
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    ax_time.plot(x, [r["time_ratio"]["b"] for r in scale], "o-", label="b IB-FT (IBSFTTrainer)")
    ax_time.plot(x, [r["time_ratio"].get("c", float("nan")) for r in scale], "s-", label="c official approach")
    ax_time.plot(x, [r["floor_f"] for r in scale], "k:", label="floor f = FLOPs(b) / FLOPs(a)")
    ax_time.plot(x, [r["flops_ratio_c"] or float("nan") for r in scale], "r:", label="FLOPs(c) / FLOPs(a)")
    ax_time.set_title("step time / plain LoRA (a)")
    ax_mem.plot(x, [r["memory_ratio"]["b"] for r in scale], "o-", label="b")
    ax_mem.plot(x, [r["memory_ratio"].get("c", float("nan")) for r in scale], "s-", label="c")
    ax_mem.axhline(1.05, color="k", linestyle=":", label="target b/a <= 1.05")
    ax_mem.set_title("peak memory / plain LoRA (a)")
    for ax in (ax_time, ax_mem):
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"IB-FT training cost, scaling table (H {scale[0]['config']['hidden']}, "
        f"{scale[0]['config']['layers']} blocks; 2-core CPU, shared)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def seven_b_floor() -> float:
    config = BenchConfig("7b", **SEVEN_B, seq=2048, rows=2)
    rows = make_rows(config, 8 * config.batch)
    batches = [
        pad_to_max_length(rows[i : i + config.batch], max(len(r["input_ids"]) for r in rows[i : i + config.batch]))
        for i in range(0, len(rows), config.batch)
    ]
    counts = [batch_counts(b) for b in batches]
    return statistics.mean(step_flops(config, c, "b")["total"] / step_flops(config, c, "a")["total"] for c in counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two configs, fewer steps; printed, not written")
    parser.add_argument("--only", nargs="*", help="run only the configs with these names")
    parser.add_argument("--variants", default="abc", help="variants to run (default: abc)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads per variant (default 1; 0: torch's default). On a shared machine, OpenMP threads that "
        "wait at barriers for descheduled peers make multi-threaded CPU step times swing up to 10x",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile one more step of each variant, after the timed ones (torch.profiler)",
    )
    parser.add_argument("--out", default=None, help=f"JSON file of every run's results (default: {RESULTS})")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    parser.add_argument("--fds", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        cmd_fd, reply_fd = map(int, args.fds.split(","))
        with os.fdopen(cmd_fd) as commands, os.fdopen(reply_fd, "w") as replies:
            result = run_worker(
                BenchConfig(**json.loads(args.config)), args.worker, commands, replies, args.threads, args.profile
            )
        Path(args.out).write_text(json.dumps(result))
        return

    configs = QUICK_CONFIGS if args.quick else FULL_CONFIGS
    if args.only:
        configs = [c for c in configs if c.name in args.only]
    results, started = [], time.time()
    for config in configs:
        results.append(summarize(config, run_config(config, args.variants, started, args.threads, args.profile)))

    floor_7b = seven_b_floor()
    if not args.quick:
        import torch

        payload = {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpus": os.cpu_count(),
                "torch": torch.__version__,
                "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                "load_average_at_end": os.getloadavg(),
            },
            "settings": {
                "lora_r": LORA_R,
                "ib_depth": IB_DEPTH,
                "dtype": "float32; A, B, W: bf16 autocast; D, E: bf16 autocast, frozen base stored in bf16",
                "activation_checkpointing": True,
                "threads_per_variant": args.threads,
            },
            "seven_b_floor_f": floor_7b,
            "wall_s": time.time() - started,
            "results": results,
        }
        out = Path(args.out or RESULTS)
        record(out, run_key(parser, args, leave_out=("out", "worker", "config", "fds")), payload)
        plot(results, out.with_suffix(".png"))
    print_table(results, floor_7b)


if __name__ == "__main__":
    main()
