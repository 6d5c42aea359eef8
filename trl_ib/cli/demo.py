"""`ib-ft demo`: LoRA FT vs IB-FT from a clean and from a contaminated base of SmolLM2-135M-Instruct, on CPU
(trl_ib/demo/run.py says what it runs and writes)."""

from trl import TrlParser

from trl_ib.demo.run import DemoArguments, run_demo


def main(argv: list[str] | None = None) -> None:
    (args,) = TrlParser((DemoArguments,)).parse_args_and_config(argv)
    run_demo(args)
