"""`evaluate` metric modules shipped with ib-ft; load one by its folder:

import evaluate
from trl_ib.code_eval.metrics import PASS_AT_K_M
pass_at_k_m = evaluate.load(PASS_AT_K_M)
"""

from pathlib import Path

PASS_AT_K_M = str(Path(__file__).parent / "pass_at_k_m")
