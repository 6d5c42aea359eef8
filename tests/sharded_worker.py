"""IB-LoRA and plain LoRA in a plain training loop under FSDP2 (`fully_shard` per decoder block, then the root) and
DeepSpeed ZeRO-3 (`deepspeed.initialize`, threshold 0), 2 processes over gloo, beside one unsharded process on the
same global batch, weights and noise. Run by tests/test_sharded_cpu.py:

    torchrun --nproc_per_node 2 tests/sharded_worker.py OUT_DIR

At step 1 rank 1's rows have no supervised token (kl mask "response": no encoder row either). Rank 0 writes, per
engine and adapter, OUT_DIR/<engine>-<peft_type>.json (global per-token terms per step, sharded and single; what
shows the sharding; rank 1's step-1 contribution), the adapter saved from the sharded model (<...>/adapter), and the
trained and single-process adapter states (<...>-trained / -single.safetensors).
"""

import copy
import json
import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from peft import get_peft_model, get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import peft_ib.model
from peft_ib import IBLoraConfig, find_ib_model, ib_terms
from peft_ib.export import to_lora_config
from peft_ib.model import find_decoder_blocks, full_shape

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import batch, tiny_llama  # noqa: E402

WORLD, ROWS, STEPS, LR = 2, 2, 3, 1e-2  # processes, rows per process, optimizer steps, AdamW lr
CONFIG = IBLoraConfig(
    r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    target_modules="all-linear",
    ib_layers=[1, 2],
    ib_dim=8,
    ib_kl_mask="response",
    ib_alpha=0.5,
    ib_beta=0.5,
)
ZERO3 = {
    "train_micro_batch_size_per_gpu": ROWS,
    "gradient_accumulation_steps": 1,
    "zero_allow_untested_optimizer": True,
    "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
}


class Noise:
    """The eps one process draws for the global batch's encoder rows; a rank takes the slice of its own rows."""

    eps, offset = None, 0

    @classmethod
    def sample_z(cls, mu, logvar):
        return mu + torch.exp(0.5 * logvar) * cls.eps[cls.offset : cls.offset + len(mu)].to(mu.dtype)


def global_batch(step: int) -> dict[str, torch.Tensor]:
    rows = batch(batch_size=WORLD * ROWS, seq=12, seed=step)
    if step == 0:
        # Rank 1: nothing to supervise, at the first step: later ZeRO-3 has traced the module order and keeps
        # lm_head whole between its uses, so skipping its gather would no longer show.
        rows["labels"][ROWS:] = -100
    return rows


def supervised(rows) -> torch.Tensor:
    """(B, N) positions whose next-token label is kept: the encoder rows under ib_kl_mask="response"."""
    return torch.cat([rows["labels"][:, 1:], torch.full_like(rows["labels"][:, :1], -100)], dim=1) != -100


def run_step(forward, model, rows, offset: int, counts) -> tuple[torch.Tensor, list[float]]:
    """This process's share of the global loss (normalized by the global counts) and of ce, ib_kl, ib_ce; `forward`
    is the PeftModel `model` or the engine that wraps it."""
    Noise.offset = offset
    ce = forward(**rows, num_items_in_batch=counts[0]).loss
    if not isinstance(model.peft_config["default"], IBLoraConfig):
        return ce, [ce.item(), 0.0, 0.0]
    terms = ib_terms(model)
    kl, ce_ib = terms.kl(counts[1]).mean(), terms.ce_ib(counts[0]).mean()
    loss = ce + CONFIG.ib_alpha * (kl + CONFIG.ib_beta * ce_ib)
    return loss, [ce.item(), kl.item(), ce_ib.item()]


def new_model(peft_config):
    model = get_peft_model(tiny_llama(vocab_size=300), copy.deepcopy(peft_config))
    if isinstance(peft_config, IBLoraConfig):
        find_ib_model(model).ib_penalty_in_loss = False  # run_step weights the IB terms by the global counts
    return model


def train(engine: str, peft_config, out: Path, rank: int) -> dict:
    single, sharded = new_model(peft_config), new_model(peft_config)  # tiny_llama seeds: the same weights
    single_opt = torch.optim.AdamW([p for p in single.parameters() if p.requires_grad], lr=LR)
    if engine == "fsdp2":
        for block in find_decoder_blocks(sharded.get_base_model())[1]:
            fully_shard(block)
        fully_shard(sharded)
        # After fully_shard, which replaces the parameters by DTensor ones.
        optimizer = torch.optim.AdamW([p for p in sharded.parameters() if p.requires_grad], lr=LR)
        wrapped = sharded
    else:
        import deepspeed

        trainable = [p for p in sharded.parameters() if p.requires_grad]
        wrapped, _, _, _ = deepspeed.initialize(
            model=sharded, optimizer=torch.optim.AdamW(trainable, lr=LR), config=ZERO3
        )
    report = {"sharded": [], "single": [], "masked_rank_terms": None}
    for step in range(STEPS):
        rows = global_batch(step)
        mask = supervised(rows)
        counts = (mask.sum(), mask.sum())  # supervised tokens = KL positions (mask "response"), over the global batch
        Noise.eps = torch.randn(int(mask.sum()), CONFIG.ib_dim, generator=torch.Generator().manual_seed(step))
        # One process: the whole batch.
        loss, terms = run_step(single, single, rows, 0, counts)
        loss.backward()
        single_opt.step()
        single_opt.zero_grad()
        report["single"].append([loss.item(), *terms])
        # Sharded: this rank's rows; the engine averages gradients over the ranks, so each share counts WORLD times.
        mine = {k: v[rank * ROWS : (rank + 1) * ROWS] for k, v in rows.items()}
        loss, terms = run_step(wrapped, sharded, mine, int(mask[: rank * ROWS].sum()), counts)
        if step == 0 and rank == 1:
            ib = ib_terms(sharded) if isinstance(peft_config, IBLoraConfig) else None
            report["masked_rank_terms"] = [loss.item()] + (
                [] if ib is None else [*ib.kl_sum.tolist(), *ib.ce_sum.tolist()]
            )
        if engine == "fsdp2":
            (loss * WORLD).backward()
            optimizer.step()
            optimizer.zero_grad()
        else:
            wrapped.backward(loss * WORLD)
            wrapped.step()
        shares = torch.tensor([loss.item(), *terms], dtype=torch.float64)
        dist.all_reduce(shares)
        report["sharded"].append(shares.tolist())
        if step == 0:
            report["local_and_whole_shapes"] = {
                name: [list(local_shape(p)), list(full_shape(p))] for name, p in sharded.named_parameters()
            }

    if engine == "fsdp2":
        whole = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        save(sharded, whole, peft_config, single, out, rank)
    else:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(sharded.parameters())):
            save(
                sharded, {n: p.detach().clone() for n, p in sharded.named_parameters()}, peft_config, single, out, rank
            )
    return report


def local_shape(param) -> torch.Size:
    return param.to_local().shape if isinstance(param, DTensor) else param.shape


def save(sharded, whole, peft_config, single, out: Path, rank: int) -> None:
    if rank:
        return
    sharded.save_pretrained(out / "adapter", state_dict=whole)
    trained = get_peft_model_state_dict(sharded, state_dict=whole)
    save_file({k: v.contiguous() for k, v in trained.items()}, f"{out}-trained.safetensors")
    save_file(
        {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(single).items()}, f"{out}-single.safetensors"
    )


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=timedelta(seconds=120))
    rank = dist.get_rank()
    peft_ib.model.sample_z = Noise.sample_z
    root = Path(out_dir)
    if rank == 0:
        tiny_llama(vocab_size=300).save_pretrained(root / "base")
    for engine in ("fsdp2", "zero3"):
        for peft_type, peft_config in (("iblora", CONFIG), ("lora", to_lora_config(CONFIG))):
            out = root / f"{engine}-{peft_type}"
            report = train(engine, peft_config, out, rank)
            if rank == 1:
                masked = torch.tensor(report["masked_rank_terms"], dtype=torch.float64)
                dist.send(torch.tensor([len(masked)]), 0)
                dist.send(masked, 0)
            else:
                size = torch.zeros(1, dtype=torch.long)
                dist.recv(size, 1)
                masked = torch.zeros(int(size), dtype=torch.float64)
                dist.recv(masked, 1)
                report["masked_rank_terms"] = masked.tolist()
                Path(f"{out}.json").write_text(json.dumps(report))
            dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
