"""`ib-ft memorization`: Min-K% Prob scores of a dataset under a base model (and base + adapter), the
representation gap between its most and least memorized examples, and the paper's drop-the-most-memorized ablation.

    ib-ft memorization --model_name_or_path base/ --dataset d_code.jsonl --adapter_path ft/ \\
        --reference_dataset fresh.jsonl --drop-top-memorized 0.1 --output_dir memorization/

Datasets with the paper's `Instruction` / `Response` columns become prompt = Instruction + "\\n", completion =
Response, as `ib-ft train` maps them.
"""

import json
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from datasets import Dataset, load_dataset
from trl import TrlParser

from peft_ib import IBLoraConfig
from trl_ib.memorization import (
    drop_top_memorized,
    plot_distributions,
    representation_gap,
    score_min_k,
    summarize,
)
from trl_ib.models import load_model
from trl_ib.trainer.data import to_prompt_completion

from .arguments import parse_ib_layers

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def load_examples(path: str, split: str = "train") -> tuple[Dataset, Dataset]:
    """
    (rows as stored, prompt / completion rows) of a local .json/.jsonl/.csv/.parquet file or anything
    `datasets.load_dataset` takes; the paper's Instruction / Response columns are mapped as `ib-ft train` maps them.
    """
    builder = FILE_BUILDERS.get(Path(path).suffix)
    rows = load_dataset(builder, data_files=path, split=split) if builder else load_dataset(path, split=split)
    return rows, rows if {"prompt", "completion"} <= set(rows.column_names) else to_prompt_completion(rows)


@dataclass
class MemorizationArguments:
    model_name_or_path: str = field(
        metadata={"help": "Base causal LM: a local folder, a Hub id or the built-in name smollm2-135m-instruct."}
    )
    dataset: str = field(
        metadata={
            "help": "D_code: a .json/.jsonl/.csv/.parquet file or a dataset name, with prompt/completion or "
            "Instruction/Response columns."
        }
    )
    output_dir: str = field(
        default="memorization", metadata={"help": "Folder for scores, summary, plot and kept set."}
    )
    adapter_path: str | None = field(
        default=None,
        metadata={"help": "A (IB-)LoRA adapter: the dataset is then scored under the base model AND base + adapter."},
    )
    reference_dataset: str | None = field(
        default=None, metadata={"help": "A weakly memorized reference set, scored under the base model."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of both datasets."})
    k: float = field(default=0.2, metadata={"help": "Fraction of least likely response tokens averaged, in (0, 1]."})
    batch_size: int = field(default=8, metadata={"help": "Examples per forward pass."})
    drop_top_memorized: float = field(
        default=0.0,
        metadata={
            "help": "Fraction in [0, 1): write the dataset without this fraction of lowest base-model scores "
            "(the paper's ablation) to <output_dir>/kept.jsonl. 0 writes nothing.",
        },
    )
    gap_fraction: float = field(
        default=0.1,
        metadata={"help": "Representation gap groups: this fraction most vs least memorized, by base-model scores."},
    )
    ib_layers: str = field(
        default=str(IBLoraConfig.ib_layers),
        metadata={
            "help": "Block read for the representation gap, as IBLoraConfig.ib_layers: '0.625' relative depth "
            "or '19' a 0-based index."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "torch dtype of the model: float32, bfloat16, float16."})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "torch device."})


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((MemorizationArguments,)).parse_args_and_config(argv)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # unmerged: the base rows run the same model with `disable_adapter()`
    model, tokenizer = load_model(args.model_name_or_path, args.adapter_path, getattr(torch, args.dtype), merge=False)
    model = model.to(args.device)
    models = {"base": model.disable_adapter, "adapter": nullcontext} if args.adapter_path else {"base": nullcontext}
    rows, dataset = load_examples(args.dataset, args.dataset_split)
    layer = parse_ib_layers(args.ib_layers, field_name="ib_layers", single=True)

    scores, gaps = {}, {}
    for name, context in models.items():
        with context():
            scores[name] = score_min_k(model, tokenizer, dataset, args.k, args.batch_size)
            gaps[name] = representation_gap(
                model, tokenizer, dataset, scores["base"], args.gap_fraction, layer, args.batch_size
            )
    distributions = {f"dataset under {name}": values for name, values in scores.items()}
    if args.reference_dataset:
        _, reference = load_examples(args.reference_dataset, args.dataset_split)
        with models["base"]():
            distributions["reference under base"] = score_min_k(model, tokenizer, reference, args.k, args.batch_size)

    with open(output_dir / "scores.jsonl", "w") as f:
        for i in range(len(dataset)):
            f.write(json.dumps({"index": i} | {f"min_k_{name}": values[i] for name, values in scores.items()}) + "\n")
    summary = {
        "arguments": asdict(args),
        "distributions": {label: summarize(values) for label, values in distributions.items()},
        "representation_gap": gaps,
    }
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot_distributions(distributions, output_dir / "min_k.png", args.k)
    if args.drop_top_memorized:
        rows.select(drop_top_memorized(scores["base"], args.drop_top_memorized)).to_json(output_dir / "kept.jsonl")
    print(json.dumps(summary["distributions"] | {"representation_gap": gaps}, indent=2))
    kept = ", kept.jsonl" if args.drop_top_memorized else ""
    print(f"wrote {output_dir}/: scores.jsonl, summary.json, min_k.png{kept}")
