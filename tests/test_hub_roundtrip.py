"""Push and load IB-LoRA adapters through a Hub served over HTTP by tests/hub_server.py.

The first IB-LoRA adapter installs the card hook (peft_ib/hub.py). The huggingface_hub client is not patched: the
pushing and loading code runs in fresh Python processes whose environment points HF_ENDPOINT at the local server
(huggingface_hub reads it at import time), with a temporary HF_HOME cache, a fake token and HF_HUB_DISABLE_XET=1 so
uploads take the LFS path that the server implements.
"""

import pytest

TAGS = ["ib-lora", "information-bottleneck", "peft", "trl", "sft", "my-tag", "base_model:adapter:user/tiny-base"]

PREAMBLE = """
import json, sys
import torch
from transformers import AutoModelForCausalLM

IDS = torch.arange(2, 14).unsqueeze(0)

def logits(model):
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits.tolist()

def base():
    return AutoModelForCausalLM.from_pretrained("user/tiny-base")
"""

# Push the base model, an IB-LoRA adapter twice (branch "v1" on the first commit), its plain-LoRA export, and the
# adapter again with `Trainer.push_to_hub` through the `create_model_card` override that IBSFTTrainer needs.
PUSH = """
import peft_ib
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from peft import AutoPeftModelForCausalLM, PeftModel, get_peft_model, get_peft_model_state_dict
from tiny_models import tiny_llama
from transformers import Trainer, TrainingArguments
from hub_cards import trainer_card

class CardTrainer(Trainer):
    def create_model_card(self, model_name=None, dataset_name=None, tags=None, **kwargs):
        trainer_card(self, model_name=model_name, datasets=dataset_name, tags=tags)

tiny_llama(vocab_size=64).push_to_hub("user/tiny-base")
config = peft_ib.IBLoraConfig(r=4, target_modules=["q_proj", "v_proj"], ib_layers=2, ib_dim=8, init_lora_weights=False)
model = get_peft_model(base(), config)
out = {"v1": logits(model)}
first = model.push_to_hub("user/ib", tags=["my-tag"]).oid
HfApi().create_branch("user/ib", branch="v1", revision=first)
with torch.no_grad():
    for name, param in model.named_parameters():
        if "lora_B" in name or "lora_ib_encoders" in name:
            param.add_(0.5)
out["v2"] = logits(model)
model.push_to_hub("user/ib")

def same_state(loaded):
    pushed, got = get_peft_model_state_dict(model), get_peft_model_state_dict(loaded)
    return sorted(pushed) == sorted(got) and all(torch.equal(pushed[k], got[k]) for k in pushed)

latest = AutoPeftModelForCausalLM.from_pretrained("user/ib")
out["latest"], out["latest_same_state"] = logits(latest), same_state(latest)
out["by_sha"] = logits(PeftModel.from_pretrained(base(), "user/ib", revision=first))
out["by_branch"] = logits(PeftModel.from_pretrained(base(), "user/ib", revision="v1"))
card = ModelCard.load("user/ib")
out["card"], out["card_text"] = card.data.to_dict(), card.text
out["first_card_tags"] = ModelCard.load(hf_hub_download("user/ib", "README.md", revision=first)).data.tags
out["adapter_config"] = json.load(open(hf_hub_download("user/ib", "adapter_config.json")))
peft_ib.export_lora("user/ib", sys.argv[1], push_to_hub="user/ib-lora")

args = TrainingArguments(sys.argv[2], push_to_hub=True, hub_model_id="user/ib-trained", report_to=[], use_cpu=True)
trainer = CardTrainer(model=model, args=args)
trainer.state.log_history = [{"loss": 2.0, "ce": 1.5, "ib_kl": 0.75, "ib_ce": 2.875, "ib_alpha": 0.2, "step": 10}]
trainer.push_to_hub(dataset_name="user/code")
trained = ModelCard.load("user/ib-trained")
out["trained_card"], out["trained_card_text"] = trained.data.to_dict(), trained.text
out["trained_files"] = sorted(f.rfilename for f in HfApi().model_info("user/ib-trained").siblings)
print(json.dumps(out))
"""

# Load the plain-LoRA export with stock PEFT only.
LOAD_EXPORT = """
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM

model = AutoPeftModelForCausalLM.from_pretrained("user/ib-lora")
print(json.dumps({
    "logits": logits(model),
    "peft_type": model.peft_config["default"].peft_type,
    "card_tags": ModelCard.load("user/ib-lora").data.tags,
    "peft_ib_imported": "peft_ib" in sys.modules,
}))
"""


@pytest.fixture(scope="module")
def pushed(run_client, tmp_path_factory):
    return run_client(PREAMBLE + PUSH, str(tmp_path_factory.mktemp("export")), str(tmp_path_factory.mktemp("trainer")))


def test_logits_survive_the_round_trip(pushed):
    assert pushed["v1"] != pushed["v2"]
    assert pushed["latest"] == pushed["v2"]
    assert pushed["latest_same_state"]  # LoRA and IB encoder weights, bit for bit


def test_first_revision_loads_by_commit_sha_and_by_branch(pushed):
    assert pushed["by_sha"] == pushed["v1"]
    assert pushed["by_branch"] == pushed["v1"]


def test_pushed_readme_is_the_ib_lora_card(pushed):
    card = pushed["card"]
    assert card["library_name"] == "peft"
    assert card["base_model"] == "user/tiny-base"
    assert card["pipeline_tag"] == "text-generation"
    assert card["tags"] == TAGS  # "my-tag" from the first push is kept by the second
    assert pushed["first_card_tags"] == TAGS
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/ib")' in pushed["card_text"]
    assert "import peft_ib" in pushed["card_text"]
    assert "| `ib_dim` | `8` |" in pushed["card_text"]


def test_adapter_config_has_the_ib_fields(pushed):
    config = pushed["adapter_config"]
    assert config["peft_type"] == "IBLORA"
    assert config["base_model_name_or_path"] == "user/tiny-base"
    assert (config["ib_layers"], config["ib_dim"], config["ib_alpha"], config["ib_beta"]) == (2, 8, 0.2, 0.01)
    assert (config["ib_logvar_min"], config["ib_logvar_max"]) == (-4.0, 4.0)
    assert (config["ib_kl_mask"], config["ib_final_norm"]) == ("attention", False)


def test_uploads_took_the_lfs_path_not_xet(hub, pushed):
    assert any(request.startswith("PUT /lfs/") for request in hub.requests)
    assert [request for request in hub.requests if "xet" in request.lower()] == []


def test_plain_lora_export_loads_with_stock_peft(run_client, pushed):
    loaded = run_client(PREAMBLE + LOAD_EXPORT)
    assert loaded["peft_ib_imported"] is False
    assert loaded["peft_type"] == "LORA"
    assert loaded["logits"] == pushed["v2"]
    assert loaded["card_tags"] == ["lora", *TAGS[1:5], "base_model:adapter:user/tiny-base"]


def test_trainer_push_to_hub_uploads_the_trainer_card(pushed):
    card = pushed["trained_card"]
    assert (card["library_name"], card["base_model"], card["datasets"]) == ("peft", "user/tiny-base", "user/code")
    assert card["tags"] == [*TAGS[:5], "base_model:adapter:user/tiny-base"]
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/ib-trained")' in pushed["trained_card_text"]
    assert "| `ib_kl` | 0.75 | 10 |" in pushed["trained_card_text"]
    assert "![Training curves](training_curves.png)" in pushed["trained_card_text"]
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors", "training_curves.png"} <= set(
        pushed["trained_files"]
    )
