"""`ib-ft lm-eval`: lm-evaluation-harness's own command line, with IB-LoRA adapters loadable.

lm-eval's `hf` model loads `peft=<adapter>` with `PeftModel.from_pretrained`, and stock PEFT cannot read an adapter
whose config says peft_type IBLORA (it raises `KeyError: 'IBLORA'`). This route imports `peft_ib`, which registers
the type with PEFT, then runs lm-eval's CLI entry (`lm_eval.__main__.cli_evaluate`, what its `lm-eval` console
script calls) on the arguments exactly as given, so every lm-eval flag, subcommand and output is lm-eval's own:

    ib-ft lm-eval --model hf --model_args pretrained=HuggingFaceTB/SmolLM2-135M-Instruct,peft=user/my-ib-lora \\
        --tasks hellaswag --batch_size 8

The other route needs no ib-ft at evaluation time: `ib-ft export` writes the adapter as plain LoRA (peft_type
LORA, same logits), which `lm_eval --model hf --model_args ...,peft=<export>` and `--model vllm` load as they are.
"""

import sys

INSTALL = 'pip install "ib-ft[lm-eval]"'


def main(argv: list[str]) -> None:
    """Run lm-eval's CLI on `argv` (the arguments after `ib-ft lm-eval`) with IB-LoRA registered with PEFT."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ModuleNotFoundError as error:
        raise SystemExit(
            f"ib-ft lm-eval needs lm-evaluation-harness, and importing it failed (no module {error.name!r}). "
            f"Install it with: {INSTALL}"
        ) from error
    import peft_ib  # noqa: F401  registers the IBLORA adapter type with PEFT

    # cli_evaluate parses sys.argv (and inserts the legacy "run" subcommand into it): give it ours, then restore it
    saved, sys.argv = sys.argv, ["lm-eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
