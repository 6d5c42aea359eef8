"""`ib-ft` command line: one subcommand per module, each exposing `main(argv)`.

Runs as the console script `ib-ft` and as `python -m trl_ib.cli`, so the same entry works under
`accelerate launch -m trl_ib.cli train --config run.yaml`.

A user error (a bad flag value, a missing file, model or adapter: ValueError or OSError) prints one line, as
argparse does, and exits 2; `--debug`, anywhere on the command line, shows the traceback instead.
"""

import importlib
import sys

# subcommand -> (module with `main(argv)`, one-line help)
SUBCOMMANDS = {
    "train": ("trl_ib.cli.train", "fine-tune with IB-LoRA (IBSFTTrainer); YAML config + overrides"),
    "tune": ("trl_ib.cli.tune", "search IB-FT's settings on validation data (Optuna, or Ray Tune)"),
    "eval": ("trl_ib.cli.eval", "generate samples and score Pass@k^(m) in the sandbox"),
    "memorization": ("trl_ib.cli.memorization", "Min-K% Prob memorization scores of a dataset"),
    "export": ("trl_ib.cli.export", "write an IB-LoRA adapter as a plain LoRA adapter for serving"),
    "lm-eval": ("trl_ib.cli.lm_eval", "lm-evaluation-harness's CLI, with IB-LoRA adapters loadable (peft=...)"),
    "demo": ("trl_ib.cli.demo", "LoRA FT vs IB-FT on SmolLM2-135M-Instruct, end to end on CPU"),
}


def _usage() -> str:
    lines = ["usage: ib-ft <command> [options]", "", "commands:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return
    command, rest = argv[0], [arg for arg in argv[1:] if arg != "--debug"]
    if command not in SUBCOMMANDS:
        sys.exit(f"ib-ft: unknown command {command!r}; choose one of {', '.join(SUBCOMMANDS)}\n\n{_usage()}")
    try:
        importlib.import_module(SUBCOMMANDS[command][0]).main(rest)
    except (ValueError, OSError) as error:
        if "--debug" in argv:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"ib-ft {command}: error: {message} (--debug shows the traceback)", file=sys.stderr)
        sys.exit(2)
