"""Score programs: run every sample in the sandbox, count passes per problem, compute Pass@k^(m)."""

from collections.abc import Sequence
from dataclasses import dataclass

from .estimator import pass_at_k_m_table
from .execution import ExecutionResult, Sample, run_samples

NO_CODE = ExecutionResult(passed=False, result="failed: no code in the answer")


@dataclass
class Scores:
    """Pass@k^(m) of a set of problems with their per-problem counts and per-sample verdicts."""

    table: dict[str, float]  # {"pass@{k}^({m})": value}
    num_samples: list[int]  # n per problem
    num_correct: list[int]  # c per problem
    results: list[list[ExecutionResult]]  # [problem][sample]


def score(
    programs: Sequence[Sequence[str | None]],
    tests: Sequence[str],
    entry_points: Sequence[str | None] | None = None,
    k: Sequence[int] = (1,),
    m: Sequence[int | str] = (1,),
    language: str = "python",
    timeout: float = 3.0,
    num_workers: int | None = None,
    progress: bool = True,
) -> Scores:
    """Run every program against its problem's tests in the sandbox and compute Pass@k^(m).

    Args:
        programs: programs[problem][sample], complete sources (prompt + completion), or None for an answer
            with no code: verdict "failed: no code in the answer", nothing runs.
        tests: one test source per problem (see `trl_ib.code_eval.execution.Sample`).
        entry_points: one per problem, or None for tests without a `check(entry_point)` call.
    """
    for name, value in (("programs", programs), ("tests", tests), ("entry_points", entry_points)):
        if isinstance(value, (str, bytes)) or not (
            value is None and name == "entry_points" or isinstance(value, Sequence)
        ):
            raise TypeError(f"{name}={value!r:.80} is invalid; give a list with one item per problem")
    for index, group in enumerate(programs):
        if isinstance(group, (str, bytes)) or not isinstance(group, Sequence):
            raise TypeError(f"programs[{index}]={group!r:.80} is invalid; give a list of programs per problem")
    entry_points = [None] * len(tests) if entry_points is None else entry_points
    if not len(programs) == len(tests) == len(entry_points):
        raise ValueError(
            f"got {len(programs)} program lists, {len(tests)} tests and {len(entry_points)} entry_points; "
            "give one of each per problem"
        )
    # Check k and m against every problem's n (k <= n, 1 <= m <= k) before any program runs.
    pass_at_k_m_table([len(group) for group in programs], [0] * len(programs), k, m)
    samples = [
        Sample(program, test, entry)
        for group, test, entry in zip(programs, tests, entry_points)
        for program in group
        if program is not None
    ]
    flat = iter(run_samples(samples, language=language, timeout=timeout, num_workers=num_workers, progress=progress))
    results = [[NO_CODE if program is None else next(flat) for program in group] for group in programs]
    num_samples = [len(group) for group in results]
    num_correct = [sum(result.passed for result in group) for group in results]
    return Scores(pass_at_k_m_table(num_samples, num_correct, k, m), num_samples, num_correct, results)
