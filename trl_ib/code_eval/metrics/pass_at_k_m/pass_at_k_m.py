"""Pass@k^(m): the share of problems where at least m of k sampled programs pass all tests.

An `evaluate` metric module: `evaluate.load("<path to this folder>")`. The execution happens in
ib-ft's sandbox (`trl_ib.code_eval.execution`) and the numbers come from `trl_ib.code_eval.estimator`.
"""

import os

import datasets
import evaluate

from trl_ib.code_eval.scoring import score

_CITATION = """\
@misc{chen2021evaluating,
  title={Evaluating Large Language Models Trained on Code},
  author={Mark Chen and others},
  year={2021},
  eprint={2107.03374},
  archivePrefix={arXiv},
}
"""

_LICENSE = "MIT"  # ib-ft's (pyproject.toml), which this module runs on

_DESCRIPTION = """\
Pass@k^(m) generalizes pass@k: a problem counts as solved at (k, m) when at least m of k samples pass its
tests. m = 1 is the usual pass@k, m = k asks for all k samples to pass. It is estimated without bias from
n >= k samples per problem, c of them passing, as the hypergeometric tail
sum_{j=m}^{min(c,k)} C(c, j) C(n-c, k-j) / C(n, k), computed exactly, and averaged over problems.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per problem, a list of n candidate programs (complete sources: prompt + completion).
    references: per problem, its tests. Python: test code run after the candidate; with `entry_points`
        it must define `check(candidate)` (HumanEval layout), without, its top-level asserts are the tests.
        Verilog: a VerilogEval testbench plus reference module printing "Mismatches: N in M samples".
    k: list of k values (default [1, 10]); every problem needs n >= max(k) candidates (checked before any
        program runs).
    m: list of m values (default [1, "k"]); "k" means m = k. Pairs with m > k are left out; at least one
        pair must remain.
    entry_points: per problem, the function passed to `check` (Python) or the testbench's top module
        (Verilog), or None.
    language: "python" (default) or "verilog".
    timeout: wall-clock seconds each program may run (default 3.0).
    num_workers: programs run in parallel (default: one per CPU, as many as the RAM holds at
        Limits.max_memory_bytes each).
Returns:
    "pass@{k}^({m})": Pass@k^(m) for each pair, e.g. "pass@1^(1)", "pass@10^(10)";
    "num_correct": per problem, how many candidates passed;
    "results": per problem and candidate, {"passed": bool, "result": "passed" | "timed out" | "failed: <reason>"}.
Examples:
    >>> import os; os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    >>> pass_at_k_m = evaluate.load("trl_ib/code_eval/metrics/pass_at_k_m")
    >>> scores = pass_at_k_m.compute(
    ...     predictions=[["def add(a, b):\\n    return a + b", "def add(a, b):\\n    return a * b"]],
    ...     references=["assert add(2, 3) == 5"],
    ...     k=[1, 2], m=[1, "k"],
    ... )
    >>> {key: scores[key] for key in ("pass@1^(1)", "pass@2^(1)", "pass@2^(2)")}
    {'pass@1^(1)': 0.5, 'pass@2^(1)': 1.0, 'pass@2^(2)': 0.0}
    >>> scores["results"][0][1]
    {'passed': False, 'result': 'failed: '}
"""

_WARNING = """
This metric executes untrusted model-generated code. ib-ft runs every program in a sandbox (bubblewrap
namespaces without network, as an unprivileged user when the host is root, seeing only /usr and the Python
interpreter, a capped private tmpfs, rlimits, a timeout; trl_ib/code_eval/execution/sandbox.py lists what is and
is not isolated), but no sandbox is perfect, and without bubblewrap only rlimits apply. Once you have read this and
taken the precautions you need (a container or VM is best), allow execution with:

    export HF_ALLOW_CODE_EVAL=1        # or, in Python: os.environ["HF_ALLOW_CODE_EVAL"] = "1"

(the same opt-in as evaluate's code_eval metric).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class PassAtKM(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("string")), "references": datasets.Value("string")}
            ),
            homepage="https://github.com/openai/human-eval",
            codebase_urls=["https://pypi.org/project/ib-ft/"],
            reference_urls=["https://arxiv.org/abs/2107.03374"],
            license=_LICENSE,
        )

    def _compute(
        self,
        predictions,
        references,
        k=(1, 10),
        m=(1, "k"),
        entry_points=None,
        language="python",
        timeout=3.0,
        num_workers=None,
    ):
        if os.getenv("HF_ALLOW_CODE_EVAL", "0") != "1":
            raise ValueError(_WARNING)
        scores = score(predictions, references, entry_points, k, m, language, timeout, num_workers, progress=False)
        results = [[{"passed": r.passed, "result": r.result} for r in group] for group in scores.results]
        return {**scores.table, "num_correct": scores.num_correct, "results": results}
