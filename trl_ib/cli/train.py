"""`ib-ft train`: IB-FT of a causal LM with IBSFTTrainer, configured by a YAML file and/or command-line flags.

    ib-ft train                                      # built-in default: tiny model, shipped code dataset, CPU
    ib-ft train --config examples/configs/origen_deepseek_7b.yaml --learning_rate 5e-5
    accelerate launch --config_file examples/accelerate/ddp.yaml -m trl_ib.cli train --config run.yaml

Flags are those of trl's ScriptArguments (dataset), ModelConfig (model and LoRA: --lora_r, --lora_alpha,
--lora_dropout, --lora_target_modules, ...), IBSFTConfig (training, --ib_alpha, --ib_beta, --ib_warmup_steps,
--ib_target_kl) and IBArguments below (the IB encoders).
"""

from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Literal, get_origin

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from trl import ModelConfig, ScriptArguments, SFTTrainer, TrlParser

from peft_ib import IBLoraConfig
from peft_ib.config import IB_FIELDS
from peft_ib.export import to_lora_config
from trl_ib import builtin
from trl_ib.trainer.data import PAPER_COLUMNS, to_prompt_completion
from trl_ib.trainer.distributed import check_distributed_run
from trl_ib.trainer.ib_sft_config import IBSFTConfig
from trl_ib.trainer.ib_sft_trainer import IBSFTTrainer

from .arguments import parse_ib_layers

PEFT_TYPES = ("iblora", "lora")
# IBSFTConfig has its own ib_alpha / ib_beta flags (None: the adapter's values); the other IB fields are flags here.
ENCODER_FIELDS = tuple(f for f in IB_FIELDS if f.name not in ("ib_alpha", "ib_beta"))


def _as_flag(config_field):
    """(name, type, field) of an IBLoraConfig field as a command-line flag: its default and help, as a str where the
    config takes several types (ib_layers) or a fixed set of values, which IBLoraConfig itself then validates."""
    name, default, help_ = config_field.name, config_field.default, config_field.metadata["help"]
    if name == "ib_layers":
        default, help_ = str(default), help_ + " As a flag: '0.625', '19' or a list '10,19'."
    flag_type = str if name == "ib_layers" or get_origin(config_field.type) is Literal else config_field.type
    return name, flag_type, field(default=default, metadata={"help": help_})


IBEncoderArguments = make_dataclass("IBEncoderArguments", [_as_flag(f) for f in ENCODER_FIELDS])


@dataclass
class IBArguments(IBEncoderArguments):
    """The IB encoder fields of IBLoraConfig as flags (names, defaults and help from the config), the adapter type
    and the column mapping of the data."""

    peft_type: str = field(
        default="iblora",
        metadata={
            "help": "'iblora': IB-FT (IBSFTTrainer); 'lora': the plain-LoRA control, trl's SFTTrainer with the "
            "same LoRA settings and no IB encoders (the ib_* flags are then unused)."
        },
    )
    prompt_column: str | None = field(
        default=None,
        metadata={
            "help": "With completion_column: map rows to prompt = row[prompt_column] + '\\n' (paper's format). "
            "Default: the Instruction/Response columns where a dataset has them."
        },
    )
    completion_column: str | None = field(default=None, metadata={"help": "Column holding the response."})

    def __post_init__(self):
        # Validate now, while parsing, so a typo fails in seconds rather than after the data and model have loaded.
        if self.peft_type not in PEFT_TYPES:
            raise ValueError(f"peft_type={self.peft_type!r}: must be one of {', '.join(map(repr, PEFT_TYPES))}.")
        IBLoraConfig(**self.encoder_settings())

    def encoder_settings(self) -> dict:
        """The IBLoraConfig keyword arguments these flags give (ib_layers parsed)."""
        return {f.name: getattr(self, f.name) for f in ENCODER_FIELDS} | {"ib_layers": parse_ib_layers(self.ib_layers)}


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, IBSFTConfig, ModelConfig, IBArguments), prog="ib-ft train")


def build_peft_config(model_args: ModelConfig, ib_args: IBArguments, training_args: IBSFTConfig) -> IBLoraConfig:
    """IBLoraConfig from the LoRA flags of ModelConfig and the IB flags; ib_alpha/beta recorded as trained."""
    defaults = IBLoraConfig.__dataclass_fields__
    return IBLoraConfig(
        task_type=model_args.lora_task_type,
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or "all-linear",
        modules_to_save=model_args.lora_modules_to_save,
        use_rslora=model_args.use_rslora,
        use_dora=model_args.use_dora,
        ib_alpha=defaults["ib_alpha"].default if training_args.ib_alpha is None else training_args.ib_alpha,
        ib_beta=defaults["ib_beta"].default if training_args.ib_beta is None else training_args.ib_beta,
        **ib_args.encoder_settings(),
    )


def load_data(script_args: ScriptArguments, ib_args: IBArguments):
    """
    (train, eval or None): a Hub dataset, a local .json/.jsonl file, or the built-in code dataset. Rows become
    prompt/completion rows by `to_prompt_completion` with --prompt_column/--completion_column, or with the paper's
    Instruction/Response columns where a dataset has them; other datasets reach IBSFTTrainer as they are.
    """
    name = script_args.dataset_name
    if name is None:
        return builtin.code_dataset(), None
    if name.endswith((".json", ".jsonl")):
        dataset = load_dataset("json", data_files=name)
    else:
        dataset = load_dataset(name, name=script_args.dataset_config)
    if ib_args.prompt_column or ib_args.completion_column:
        if not (ib_args.prompt_column and ib_args.completion_column):
            raise ValueError("prompt_column and completion_column must be given together.")
        dataset = {
            split: to_prompt_completion(ds, ib_args.prompt_column, ib_args.completion_column)
            for split, ds in dataset.items()
        }
    else:
        dataset = {
            split: to_prompt_completion(ds) if set(PAPER_COLUMNS) <= set(ds.column_names) else ds
            for split, ds in dataset.items()
        }
    return dataset[script_args.dataset_train_split], dataset.get(script_args.dataset_test_split)


def load_base(model_args: ModelConfig, training_args: IBSFTConfig, texts: list[str]):
    """(model, tokenizer): `model_name_or_path`'s, or with none the built-in tiny model with a tokenizer trained on
    `texts`, saved under `<output_dir>/base_model` and recorded as the adapter's base (it exists nowhere else)."""
    # The same built-in base and adapter initialization on every process, and in every run with this seed.
    set_seed(training_args.seed)
    if model_args.model_name_or_path is None:
        tokenizer = builtin.train_tokenizer(texts)
        model = builtin.tiny_llama(vocab_size=len(tokenizer))
        base_dir = Path(training_args.output_dir) / "base_model"
        if training_args.process_index == 0:
            model.save_pretrained(base_dir)
            tokenizer.save_pretrained(base_dir)
        model.name_or_path = model.config._name_or_path = str(base_dir)
        return model, tokenizer
    model_args.model_name_or_path = builtin.resolve_model(model_args.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    return load_model(model_args), tokenizer


def load_model(model_args: ModelConfig):
    """The base model of `model_name_or_path` with the model flags (dtype, attention)."""
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype or "auto",
        attn_implementation=model_args.attn_implementation,
    )


def run(script_args: ScriptArguments, training_args: IBSFTConfig, model_args: ModelConfig, ib_args: IBArguments):
    train_dataset, eval_dataset = load_data(script_args, ib_args)
    model, tokenizer = load_base(
        model_args, training_args, [row["prompt"] + row["completion"] for row in train_dataset]
    )
    peft_config = build_peft_config(model_args, ib_args, training_args)
    if ib_args.peft_type == "lora":  # the control: the same LoRA, no IB encoders, TRL's own trainer
        trainer_class, peft_config = SFTTrainer, to_lora_config(peft_config)
    else:
        trainer_class = IBSFTTrainer
    trainer = trainer_class(
        model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    if trainer_class is SFTTrainer:
        check_distributed_run(trainer)  # IBSFTTrainer checks this itself
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.create_model_card(dataset_name=script_args.dataset_name)
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(training_args.output_dir)
    trainer.accelerator.print(
        f"{'LoRA' if ib_args.peft_type == 'lora' else 'IB-LoRA'} adapter saved to {training_args.output_dir}"
    )
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)
    return trainer


# The built-in default trains a randomly initialized tiny model: SFTConfig's defaults (lr 2e-5, made for
# pre-trained LLMs) would leave it untouched. A YAML file or flags still override these.
BUILTIN_DEFAULTS = {"learning_rate": 1e-2, "ib_dim": 16, "lora_r": 16, "lora_alpha": 32}


def parse(argv: list[str] | None, parser_factory=None) -> tuple:
    """The parsed flag dataclasses; with no model, the built-in default's flag defaults (BUILTIN_DEFAULTS)."""
    parser_factory = parser_factory or make_parser
    parsed = parser_factory().parse_args_and_config(args=argv)
    if parsed[2].model_name_or_path is None:
        parser = parser_factory()
        parser.set_defaults(**BUILTIN_DEFAULTS)
        parsed = parser.parse_args_and_config(args=argv)
    return parsed


def main(argv: list[str] | None = None) -> None:
    trainer = run(*parse(argv))
    end_processes(trainer)


def end_processes(trainer) -> None:
    """Leave the process group before the interpreter exits: a gloo group torn down at exit has aborted a finished
    rank ("terminate called without an active exception") while another was still saving."""
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
