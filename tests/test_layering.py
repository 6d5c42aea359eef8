"""The packages depend one way (peft_ib on peft/transformers/torch only, hub_cards below both, the evaluator alone),
and importing them has no process-wide side effect that shows in sys.modules (pyplot).

Each import runs in a fresh interpreter, so what it loads is not hidden by what other tests imported already.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOAD_METRIC = "import evaluate; from trl_ib.code_eval.metrics import PASS_AT_K_M; evaluate.load(PASS_AT_K_M)"


def loaded_by(statement: str) -> set[str]:
    """Every module in sys.modules, and its top-level package, after running `statement` in a fresh interpreter."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    modules = json.loads(result.stdout.splitlines()[-1])
    return set(modules) | {name.split(".")[0] for name in modules}


@pytest.mark.parametrize("statement, absent", [
    ("import peft_ib", {"trl", "trl_ib", "hub_cards", "matplotlib"}),
    ("import hub_cards", {"trl_ib", "trl", "peft_ib", "torch"}),
    ("import trl_ib.code_eval", {"torch", "transformers", "trl", "peft_ib", "hub_cards", "trl_ib.evaluation"}),
    # `import evaluate` loads torch itself (its evaluator imports transformers.pipelines); the metric adds none of ours.
    (LOAD_METRIC, {"trl", "peft_ib", "hub_cards", "trl_ib.evaluation", "trl_ib.ib_sft_trainer"}),
    # Plots are drawn with matplotlib's object API: no pyplot, no process-wide backend switch.
    ("import hub_cards, trl_ib.memorization, trl_ib.evaluation", {"matplotlib.pyplot"}),
])
def test_imports_point_one_way(statement, absent):
    loaded = loaded_by(statement)
    assert not absent & loaded, sorted(absent & loaded)
