"""Sandboxed execution of model-generated programs: one backend per language (`languages.py`) and a parallel runner.

    from trl_ib.code_eval.execution import Sample, run_samples
    results = run_samples([Sample(program, test, entry_point)], language="python", timeout=3.0)
    results[0].passed, results[0].result   # True, "passed"

Each sample runs in its own sandboxed process (see `sandbox.py`), so the worker pool is a pool of
threads that only wait on children: a sample that crashes, hangs or kills its process yields a verdict
and never takes a worker or another sample's result down with it.
"""

import numbers
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm.auto import tqdm

from .languages import LANGUAGES, Backend, Language, check_language
from .sandbox import ExecutionResult, Limits, SandboxError, bwrap_available

__all__ = [
    "LANGUAGES",
    "Backend",
    "ExecutionResult",
    "Language",
    "Limits",
    "Sample",
    "SandboxError",
    "bwrap_available",
    "default_num_workers",
    "run_samples",
]

MAX_TIMEOUT_S = 1e6  # seconds per sample (11.6 days); beyond, deadlines overflow the platform's time_t


@dataclass(frozen=True)
class Sample:
    """One candidate program and the tests it must pass.

    Python: `program` is HumanEval's prompt + completion, `test` the test source, `entry_point` the
    function handed to `check` (None: `test` is plain top-level asserts). Verilog: `program` is the
    design, `test` the testbench plus reference module, `entry_point` the testbench's top module.
    """

    program: str
    test: str
    entry_point: str | None = None

    def __post_init__(self):
        for name in ("program", "test"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"Sample.{name}={getattr(self, name)!r} is invalid; give the source as a str")
        if self.entry_point is not None and not (
            isinstance(self.entry_point, str) and self.entry_point.isidentifier()
        ):
            raise ValueError(f"Sample.entry_point={self.entry_point!r} is invalid; give an identifier (a str) or None")
        for name in ("program", "test", "entry_point"):  # plain str (a subclass would not marshal)
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str.__str__(getattr(self, name)))


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0))


def _physical_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def default_num_workers(limits: Limits = Limits()) -> int:
    """`run_samples`'s default: `min(usable CPUs, max(1, RAM // limits.max_memory_bytes))`.

    With the default limits (8.06 GiB per sandbox): 15 workers on 16 cores / 128 GiB, 3 on 8 cores / 32 GiB.
    """
    return min(_usable_cpus(), max(1, _physical_bytes() // limits.max_memory_bytes))


def run_samples(
    samples: Sequence[Sample],
    language: str = "python",
    timeout: float = 3.0,
    num_workers: int | None = None,
    limits: Limits = Limits(),
    progress: bool = True,
) -> list[ExecutionResult]:
    """Run every sample in its own sandbox, `num_workers` at a time.

    `num_workers=None` picks `default_num_workers(limits)`: one per usable CPU, but no more than the RAM holds
    at `limits.max_memory_bytes` each (at least 1). An explicit `num_workers` (or explicit `limits`) whose
    `num_workers x limits.max_memory_bytes` exceeds the machine's RAM is run but warned about.

    Returns:
        One `ExecutionResult` per sample, in the order of `samples`.

    Raises:
        ValueError, TypeError: a bad argument, before anything runs.
        SandboxError: the sandbox cannot run programs here (e.g. a fresh Python server does not start).
    """
    record = check_language(language)
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout <= MAX_TIMEOUT_S:
        raise ValueError(
            f"timeout={timeout!r} is invalid; give the wall-clock seconds per sample, > 0 and <= {MAX_TIMEOUT_S:g}"
        )
    if num_workers is not None and (
        isinstance(num_workers, bool) or not isinstance(num_workers, numbers.Integral) or num_workers < 1
    ):
        raise ValueError(
            f"num_workers={num_workers!r} is invalid; give a whole number >= 1, or None for one per CPU "
            "up to what the RAM holds at Limits.max_memory_bytes each"
        )
    if not isinstance(limits, Limits):
        raise TypeError(f"limits={limits!r} is invalid; give a trl_ib.code_eval.execution.Limits")
    for index, sample in enumerate(samples):
        if not isinstance(sample, Sample):
            raise TypeError(f"samples[{index}]={sample!r} is invalid; give Sample(program, test, entry_point) objects")
    explicit = num_workers is not None or limits != Limits()
    timeout = float(timeout)  # numpy scalars too
    num_workers = default_num_workers(limits) if num_workers is None else int(num_workers)
    bwrap_available()  # warn (once) before the progress bar starts
    physical_bytes = _physical_bytes()
    # The default fits the RAM unless one sandbox alone does not (then it is 1): only a setting the caller chose warns.
    if explicit and num_workers * limits.max_memory_bytes > physical_bytes:
        warnings.warn(
            f"num_workers={num_workers} sandboxes may hold up to {limits.max_memory_bytes / 2**30:.2f} GiB each "
            f"(Limits.max_memory_bytes), more than this machine's {physical_bytes / 2**30:.2f} GiB of RAM: hostile "
            "samples could make the kernel's OOM killer pick victims. Lower num_workers, Limits.processes or "
            "Limits.memory_bytes.",
            RuntimeWarning,
            stacklevel=2,
        )
    results: list[ExecutionResult | None] = [None] * len(samples)
    with record.backend() as backend, ThreadPoolExecutor(max_workers=num_workers) as pool:
        futures = {
            pool.submit(backend.run_sample, sample.program, sample.test, sample.entry_point, timeout, limits): index
            for index, sample in enumerate(samples)
        }
        try:
            for future in tqdm(
                as_completed(futures), total=len(futures), desc=f"running {language}", disable=not progress
            ):
                results[futures[future]] = future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return results
