"""Where a benchmark keeps its current figures: benchmarks/results/<script>.json, one file per script.

A script that measures several comparisons stores each run under a key, the options that select it as one would
type them ("--sampler --num_problems 8 --batch_size 80 --max_new_tokens 64"; "default" for none), so that a rerun of
one comparison replaces its own entry and keeps the others.
"""

import argparse
import datetime
import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_path(script: str) -> Path:
    """benchmarks/results/<script's stem>.json, for `script` = the benchmark's `__file__`."""
    return RESULTS_DIR / f"{Path(script).stem}.json"


def run_key(parser: argparse.ArgumentParser, args: argparse.Namespace, leave_out: tuple[str, ...] = ()) -> str:
    """The options of `args` that differ from `parser`'s defaults, as typed: switches first, then the others, each
    group in the parser's order; "default" when none differ."""
    switches, options = [], []
    for name, value in vars(args).items():
        if name in leave_out or value == parser.get_default(name):
            continue
        if value is True:
            switches.append(f"--{name}")
        elif isinstance(value, (list, tuple)):
            options.append(" ".join([f"--{name}", *map(str, value)]))
        else:
            options.append(f"--{name} {value}")
    return " ".join(switches + options) or "default"


def record(path: Path, key: str, payload: dict) -> None:
    """Store `payload` (with today's UTC date added) under `key` in the JSON object at `path`, keeping other keys."""
    runs = json.loads(path.read_text()) if path.exists() else {}
    runs[key] = {"date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")} | payload
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(runs, indent=1) + "\n")
