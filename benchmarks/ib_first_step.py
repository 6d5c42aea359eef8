"""The IB terms at the first optimizer step on a real pretrained model, per `IBLoraConfig.ib_input_norm` and IB block.

    python benchmarks/ib_first_step.py          # SmolLM2-135M-Instruct (the built-in base)

Pretrained LLMs carry massive activations: at a few positions (the attention sink, position 0) the residual stream's
norm is ~100x the median. With ib_input_norm="none" (the paper's code) mu = W_mu h is huge there and the KL, a mean
over positions, is dominated by them. Table 1: hidden-state norms per block on the first batch. Table 2: the KL
(nats per position and latent dim) of a freshly initialized encoder over that batch's real tokens, and with position
0 left out of the mean (the alternative treatment: the sink left out of the IB terms). Table 3: what IBSFTTrainer
logs at step 1 (one optimizer step, same batch and seed for every row): ce, ib_kl, ib_ce, ib_penalty =
alpha * (ib_kl + beta * ib_ce), the gradient norm before clipping, and penalty / ce.
Writes the three tables into benchmarks/results/ib_first_step.json (`results_file`).
"""

import argparse
import tempfile

import datasets
import torch
import transformers
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback

from peft_ib import IBEncoder, IBLoraConfig
from peft_ib.config import INPUT_NORMS
from peft_ib.layer import kl_to_standard_normal
from results_file import record, results_path, run_key
from trl_ib import IBSFTConfig, IBSFTTrainer
from trl_ib.builtin import code_dataset, resolve_model

ROWS = 8  # one optimizer step's batch: the first 8 pairs of the shipped code dataset
IB_DIM, ALPHA, BETA = 64, 0.2, 0.01


def first_batch(tokenizer, data: Dataset) -> dict:
    """input_ids / attention_mask (ROWS, N) of prompt + completion, right-padded, as SFTTrainer tokenizes them."""
    texts = [row["prompt"] + row["completion"] + tokenizer.eos_token for row in data]
    return tokenizer(texts, return_tensors="pt", padding=True)


def norm_table(model, batch, blocks: list[int]) -> tuple[list[dict], tuple[torch.Tensor, ...]]:
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].bool()
    rows = []
    for block in blocks:
        norms = hidden[block + 1].norm(dim=-1)  # (ROWS, N): the output of block `block` (0-based)
        real = norms[mask]
        median = real.median().item()
        rows.append(
            {
                "block": block,
                "hidden_states": block + 1,
                "pos0 norm": norms[:, 0].mean().item(),
                "median": median,
                "max other": norms[:, 1:][mask[:, 1:]].max().item(),
                "positions > 10x median": int((real > 10 * median).sum()),
                "real positions": int(mask.sum()),
            }
        )
    return rows, hidden


def kl_at_init(hidden, mask, input_norm: str, seed: int) -> tuple[float, float]:
    """KL per position and dim of a freshly initialized encoder over real tokens: all of them, and without pos 0."""
    torch.manual_seed(seed)
    encoder = IBEncoder(hidden.shape[-1], IB_DIM, -4.0, 4.0, input_norm)
    with torch.no_grad():
        mu, logvar = encoder.encode(hidden)
        kl = kl_to_standard_normal(mu, logvar).mean(-1)  # (ROWS, N)
    no_sink = mask.clone()
    no_sink[:, 0] = False
    return kl[mask].mean().item(), kl[no_sink].mean().item()


def first_step(path: str, data: Dataset, layers, input_norm: str, seed: int) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    config = IBLoraConfig(
        r=16,
        lora_alpha=32,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
        ib_layers=layers,
        ib_dim=IB_DIM,
        ib_alpha=ALPHA,
        ib_beta=BETA,
        ib_input_norm=input_norm,
    )
    with tempfile.TemporaryDirectory() as out:
        args = IBSFTConfig(
            output_dir=out,
            report_to="none",
            use_cpu=True,
            max_steps=1,
            logging_steps=1,
            seed=seed,
            per_device_train_batch_size=ROWS,
            learning_rate=1e-4,
            save_strategy="no",
            disable_tqdm=True,
        )
        trainer = IBSFTTrainer(model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=config)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    log = trainer.state.log_history[0]
    return {key: log[key] for key in ("ce", "ib_kl", "ib_ce", "ib_penalty", "grad_norm")}


def print_table(rows: list[dict]) -> None:
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--blocks", default="9,18,24", help="0-based IB blocks; 18 is 0.625 depth of 30 blocks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # transformers' warnings; IBSFTTrainer's own still show
    path = resolve_model(args.model)
    blocks = [int(b) for b in args.blocks.split(",")]
    data = code_dataset().select(range(ROWS))

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    batch = first_batch(tokenizer, data)
    norms, hidden = norm_table(model, batch, blocks)
    print(f"## Hidden-state norms, {args.model}, first {ROWS} rows of the shipped code dataset\n")
    print_table(norms)

    mask = batch["attention_mask"].bool()
    print(f"## KL at initialization (nats per position and dim), D = {IB_DIM}, seed {args.seed}\n")
    kl_rows = [
        dict(
            zip(
                ("block", "ib_input_norm", "all real positions", "position 0 left out"),
                (block, norm, *kl_at_init(hidden[block + 1], mask, norm, args.seed)),
            )
        )
        for block in blocks
        for norm in INPUT_NORMS
    ]
    print_table(kl_rows)
    del model, hidden

    print(
        f"## IBSFTTrainer step 1: r 16, all-linear, D = {IB_DIM}, alpha {ALPHA}, beta {BETA}, batch {ROWS}, "
        f"lr 1e-4, seed {args.seed}\n"
    )
    rows = []
    for block in blocks:
        for norm in INPUT_NORMS:
            logged = first_step(path, data, block, norm, args.seed)
            rows.append(
                {"block": block, "ib_input_norm": norm, **logged, "penalty / ce": logged["ib_penalty"] / logged["ce"]}
            )
    print_table(rows)
    tables = {"hidden_state_norms": norms, "kl_at_init": kl_rows, "first_step": rows}
    setup = {"model": args.model, "rows": ROWS, "ib_dim": IB_DIM, "alpha": ALPHA, "beta": BETA}
    record(results_path(__file__), run_key(parser, args), setup | tables)


if __name__ == "__main__":
    main()
