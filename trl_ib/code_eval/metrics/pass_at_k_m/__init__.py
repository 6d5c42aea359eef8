"""The Pass@k^(m) `evaluate` metric module; load it with `evaluate.load(trl_ib.code_eval.metrics.PASS_AT_K_M)`."""
