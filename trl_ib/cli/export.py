"""`ib-ft export`: an IB-LoRA adapter as a plain LoRA adapter (peft_type LORA) for serving with vLLM, TGI or PEFT.

ib-ft export --adapter out/ib-lora --output out/lora [--push-to-hub user/name-lora]
"""

import argparse

from peft_ib import export_lora


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ib-ft export", description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="local path or Hub id of the IB-LoRA adapter")
    parser.add_argument("--output", required=True, help="directory to write the plain LoRA adapter to")
    parser.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also push it to this Hub repo")
    args = parser.parse_args(argv)
    out = export_lora(args.adapter, args.output, push_to_hub=args.push_to_hub)
    print(f"wrote plain LoRA adapter to {out}")
