"""The evaluator: sandboxed execution, the Pass@k^(m) estimator and the `evaluate` metric.

Torch-free by design (the standard library, numpy and tqdm; `datasets`/`evaluate` for the metric module, and
`datasets` for problem sets that are not VerilogEval folders), and it imports nothing else from `trl_ib`: the trainer
and the tools use it, never the other way.

    from trl_ib.code_eval import Sample, run_samples, score, pass_at_k_m_table
"""

from .estimator import pass_at_k_m, pass_at_k_m_table, resolve_m
from .execution import LANGUAGES, ExecutionResult, Limits, Sample, SandboxError, run_samples
from .scoring import Scores, score

__all__ = [
    "LANGUAGES",
    "ExecutionResult",
    "Limits",
    "Sample",
    "SandboxError",
    "Scores",
    "pass_at_k_m",
    "pass_at_k_m_table",
    "resolve_m",
    "run_samples",
    "score",
]
