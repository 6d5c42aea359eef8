"""IB-FT over plain LoRA under one sharding engine, on CPU, 2 processes over gloo: step time and peak
memory per process, per engine (DeepSpeed ZeRO-3, threshold 0; FSDP2, fully_shard per decoder block then the root).

    python benchmarks/bench_sharded.py                  # both engines, config 7b-shaped-256
    python benchmarks/bench_sharded.py --engines fsdp2

Variants, as in bench_train.py: a plain LoRA, b IB-LoRA (the same LoRA, one IB encoder), on the same batches; the
model is bench_train's 7b-shaped Llama (random weights, fp32) at seq 256. Each (engine, variant) runs in its own 2
processes under torchrun, a plain loop: forward, backward, AdamW step (no Trainer, no activation checkpointing). Step
time: the slower rank's wall time per step (barrier before and after), median over the timed steps; b/a is the ratio
of the medians (the two runs are sequential, not interleaved as in bench_train.py, so a drift in load hits them
unequally). Peak memory: max RSS per process, the larger rank's. The floor f = FLOPs(b) / FLOPs(a) is
bench_train.step_flops without checkpointing, and the target is bench_train's rule: (b/a - 1) <= 1.25 (f - 1) + 0.02.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import (  # noqa: E402
    IB_DEPTH,
    SEVEN_B_SHAPED,
    BenchConfig,
    batch_counts,
    build_llama,
    lora_config,
    make_rows,
    pad_to_max_length,
    peak_memory_bytes,
    step_flops,
)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_sharded.json"
CONFIG = BenchConfig("7b-shaped-256", **SEVEN_B_SHAPED, seq=256, rows=2, warmup=1, steps=4)
WORLD = 2
ZERO3 = {
    "train_micro_batch_size_per_gpu": CONFIG.rows,
    "gradient_accumulation_steps": 1,
    "zero_allow_untested_optimizer": True,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
}


def batches(config: BenchConfig, rank: int) -> list[dict]:
    """This rank's batch at each step: rows rank*rows.. of the step's global batch, padded to their longest."""
    rows = make_rows(config, (config.warmup + config.steps) * WORLD * config.rows)
    per_step = WORLD * config.rows
    out = []
    for step in range(config.warmup + config.steps):
        mine = rows[step * per_step + rank * config.rows : step * per_step + (rank + 1) * config.rows]
        out.append(pad_to_max_length(mine, max(len(r["input_ids"]) for r in mine)))
    return out


def worker(engine: str, variant: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model

    import peft_ib
    from peft_ib.model import find_decoder_blocks

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    peft_config = (
        lora_config(LoraConfig)
        if variant == "a"
        else lora_config(peft_ib.IBLoraConfig, ib_layers=IB_DEPTH, ib_dim=CONFIG.ib_dim)
    )
    model = get_peft_model(build_llama(CONFIG), peft_config)
    model.train()
    if engine == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        for block in find_decoder_blocks(model.get_base_model())[1]:
            fully_shard(block)
        fully_shard(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        forward = model
    else:
        import deepspeed

        trainable = [p for p in model.parameters() if p.requires_grad]
        forward, _, _, _ = deepspeed.initialize(
            model=model, optimizer=torch.optim.AdamW(trainable, lr=1e-4), config=ZERO3
        )
    times, counts = [], []
    for step, batch in enumerate(batches(CONFIG, rank)):
        dist.barrier()
        start = time.perf_counter()
        loss = forward(**batch).loss  # IB-LoRA (variant b): the adapter has added the IB penalty to it
        if engine == "fsdp2":
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            forward.backward(loss)
            forward.step()
        dist.barrier()
        if step >= CONFIG.warmup:
            times.append(time.perf_counter() - start)
            counts.append(batch_counts(batch))
    reports = [None] * WORLD
    dist.all_gather_object(reports, {"times": times, "counts": counts, "peak": peak_memory_bytes(torch.device("cpu"))})
    if rank == 0:
        Path(out).write_text(json.dumps(reports))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(engine: str, variant: str, directory: Path) -> list[dict]:
    out = directory / f"{engine}-{variant}.json"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(WORLD),
        "--master_port",
        str(free_port()),
        __file__,
        "--worker",
        engine,
        variant,
        str(out),
    ]
    env = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    subprocess.run(command, check=True, env={**os.environ, **env}, capture_output=True)
    return json.loads(out.read_text())


def summarize(engine: str, runs: dict[str, list[dict]]) -> dict:
    step_time = {
        v: statistics.median(max(r["times"][i] for r in ranks) for i in range(CONFIG.steps))
        for v, ranks in runs.items()
    }
    peak = {v: max(r["peak"] for r in ranks) for v, ranks in runs.items()}
    flops = {
        v: sum(step_flops(CONFIG, c, v, checkpointing=False)["total"] for r in ranks for c in r["counts"])
        for v, ranks in runs.items()
    }
    floor = flops["b"] / flops["a"]
    ratio = step_time["b"] / step_time["a"]
    target = 1 + 1.25 * (floor - 1) + 0.02
    return dict(
        engine=engine,
        config=CONFIG.name,
        a_step_s=step_time["a"],
        b_step_s=step_time["b"],
        time_ratio=ratio,
        floor_f=floor,
        time_target=target,
        time_ok=ratio <= target,
        a_peak_mb=peak["a"] / 2**20,
        b_peak_mb=peak["b"] / 2**20,
        mem_ratio=peak["b"] / peak["a"],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["zero3", "fsdp2"], choices=["zero3", "fsdp2"])
    parser.add_argument("--worker", nargs=3, metavar=("ENGINE", "VARIANT", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    import tempfile

    results = []
    with tempfile.TemporaryDirectory() as directory:
        for engine in args.engines:
            results.append(summarize(engine, {v: run(engine, v, Path(directory)) for v in "ab"}))
    print(
        f"config {CONFIG.name} (H {CONFIG.hidden}, {CONFIG.layers} blocks, V {CONFIG.vocab}, D {CONFIG.ib_dim}, "
        f"seq <= {CONFIG.seq}, {CONFIG.rows} rows per process), {WORLD} processes, gloo, CPU"
    )
    print(
        "| engine | a s/step | b s/step | **b/a time** | floor f | target | | a peak MB/proc | b peak MB/proc | "
        "**b/a peak mem** |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {r['a_step_s']:.3f} | {r['b_step_s']:.3f} | **{r['time_ratio']:.3f}** | "
            f"{r['floor_f']:.3f} | {r['time_target']:.3f} | {'ok' if r['time_ok'] else 'MISS'} | {r['a_peak_mb']:.0f} | "
            f"{r['b_peak_mb']:.0f} | **{r['mem_ratio']:.3f}** |"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
