"""The public API: what users import (the README and docs/ name each of these), so that a move inside the package
cannot break it unnoticed."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PUBLIC = {
    "peft_ib": [
        "IBLoraConfig",
        "IBLoraModel",
        "IBEncoder",
        "IBTerms",
        "ib_loss",
        "ib_terms",
        "find_ib_model",
        "export_lora",
    ],
    "trl_ib": ["IBSFTConfig", "IBSFTTrainer", "PassAtKMCallback", "to_prompt_completion"],
    "trl_ib.trainer": ["IBSFTConfig", "IBSFTTrainer", "PassAtKMCallback", "to_prompt_completion"],
    "trl_ib.code_eval": [
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
    ],
    "hub_cards": ["adapter_card", "export_card", "plot_training_curves", "trainer_card", "write_adapter_card"],
}
DOCUMENTED = {
    "trl_ib.trainer.ib_sft_trainer": ["chunked_target_log_probs"],
    "trl_ib.generation.hf_generation": ["generate_samples"],
    "trl_ib.generation.vllm_generation": ["generate_samples_vllm", "generate_samples_with", "lora_rank", "make_llm"],
    "trl_ib.generation.prompting": ["PromptFormat", "build_programs"],
    "trl_ib.models": ["load_model", "merge_adapter"],
    "trl_ib.code_eval.problem_sets": ["load_problems"],
    "trl_ib.memorization": ["score_min_k", "representation_gap"],
    "trl_ib.builtin": ["resolve_model"],
    "trl_ib.cli": ["main"],
}


@pytest.mark.parametrize("module", list(PUBLIC))
def test_all_lists_the_public_names(module):
    assert sorted(importlib.import_module(module).__all__) == sorted(PUBLIC[module])


@pytest.mark.parametrize("module", list(DOCUMENTED))
def test_documented_names_import(module):
    loaded = importlib.import_module(module)
    assert [name for name in DOCUMENTED[module] if not hasattr(loaded, name)] == []


def test_python_dash_m_runs_the_command_line():
    result = subprocess.run([sys.executable, "-m", "trl_ib.cli", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("usage: ib-ft <command>"), result.stderr[-2000:]
