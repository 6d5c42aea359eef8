"""peft_ib.hub, the one module that wraps code peft_ib does not own: when it is installed, whom it changes, and the
PEFT / transformers code it relies on (if an upgrade moves any of it, these tests say where)."""

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from peft import PeftModel
from transformers.utils import PushToHubMixin

ROOT = Path(__file__).resolve().parents[1]

# In a fresh interpreter: PEFT's card methods before and after `import peft_ib`, and after an IB-LoRA adapter is
# built; the README of a plain LoRA adapter saved before and after the hook is installed.
SCRIPT = """
import json, sys
from peft import LoraConfig, PeftModel, get_peft_model
from tiny_models import tiny_llama

methods = lambda: [PeftModel.create_or_update_model_card, PeftModel._upload_modified_files]
original = methods()
import peft_ib
after_import = methods() == original
get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(sys.argv[1] + "/before")
get_peft_model(tiny_llama(), peft_ib.IBLoraConfig(r=2, target_modules=["q_proj"], ib_layers=1, ib_dim=4))
after_ib = methods()
get_peft_model(tiny_llama(), LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(sys.argv[1] + "/after")
print(json.dumps({"after_import": after_import, "wrapped": [a is not b for a, b in zip(after_ib, original)],
                  "matplotlib": "matplotlib" in sys.modules}))
"""


def test_installed_by_the_first_ib_lora_adapter_and_plain_lora_keeps_peft_card(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["after_import"] is True  # `import peft_ib` changes nothing in PEFT
    assert out["wrapped"] == [True, True]
    assert out["matplotlib"] is False  # building an adapter draws nothing
    assert (tmp_path / "after" / "README.md").read_text() == (tmp_path / "before" / "README.md").read_text()


def test_peft_save_pretrained_writes_the_card_through_create_or_update_model_card():
    peft_card = inspect.unwrap(PeftModel.create_or_update_model_card)  # PEFT's own, whether or not it is wrapped
    assert peft_card.__module__ == "peft.peft_model"
    assert list(inspect.signature(peft_card).parameters) == ["self", "output_dir"]
    assert "self.create_or_update_model_card(save_directory)" in inspect.getsource(PeftModel.save_pretrained)


def test_push_to_hub_overwrites_the_readme_then_calls_upload_modified_files():
    # PeftModel inherits push_to_hub from transformers; the card on the Hub replaces the saved README before the
    # upload step, which is why the hook must sit in `_upload_modified_files(working_dir, repo_id, ...)`.
    assert "push_to_hub" not in PeftModel.__dict__ and PeftModel.push_to_hub is PushToHubMixin.push_to_hub
    source = inspect.getsource(PushToHubMixin.push_to_hub)
    steps = [
        r"self\.save_pretrained\(tmp_dir",
        r'model_card\.save\(os\.path\.join\(tmp_dir, "README\.md"\)\)',
        r"return self\._upload_modified_files\(\s*tmp_dir,\s*repo_id,",
    ]
    positions = [re.search(step, source) for step in steps]
    assert all(positions), [step for step, found in zip(steps, positions) if not found]
    assert [p.start() for p in positions] == sorted(p.start() for p in positions)
    assert list(inspect.signature(PushToHubMixin._upload_modified_files).parameters)[:3] == [
        "self",
        "working_dir",
        "repo_id",
    ]
