"""hub_cards: card metadata and body, plots, the trainer card, and the card hook that an IB-LoRA adapter installs."""

import pytest
from huggingface_hub import ModelCard, ModelCardData
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import Trainer, TrainingArguments

import peft_ib
from hub_cards import adapter_card, export_card, plot_training_curves, trainer_card, write_adapter_card
from peft_ib.hub import install_card_hook
from tiny_models import tiny_llama

BASE = "user/tiny-base"
TAGS = ["ib-lora", "information-bottleneck", "peft", "trl", "sft"]
LOG_HISTORY = [
    {"loss": 3.0, "ce": 2.5, "ib_kl": 1.25, "ib_ce": 3.5, "ib_alpha": 0.2, "step": 5},
    {"eval_loss": 2.75, "step": 5},
    {"loss": 2.0, "ce": 1.5, "ib_kl": 0.75, "ib_ce": 2.875, "ib_alpha": 0.2, "step": 10},
    {"train_runtime": 1.0, "train_loss": 2.5, "step": 10},
]
PASS_AT_K_M = {"pass@10^(10)": 0.3, "pass@1^(1)": 0.52, "pass@10^(1)": 0.8, "pass@10^(5)": 0.6}


@pytest.fixture
def config():
    return peft_ib.IBLoraConfig(r=8, target_modules=["v_proj", "q_proj"], ib_dim=16, base_model_name_or_path=BASE)


def test_adapter_card_metadata(config):
    card = adapter_card(
        config,
        repo_id="user/ib",
        pass_at_k_m=PASS_AT_K_M,
        eval_dataset="openai/openai_humaneval",
        datasets=["user/code"],
        license="mit",
        tags=["extra", "peft"],
    )
    metadata = ModelCard(str(card)).data.to_dict()  # what a reader of the saved README gets
    [result] = metadata.pop("model-index")[0]["results"]  # one task and dataset: one result with 4 metrics
    assert metadata == {
        "base_model": BASE,
        "datasets": ["user/code"],
        "library_name": "peft",
        "license": "mit",
        "pipeline_tag": "text-generation",
        "tags": [*TAGS, "extra", f"base_model:adapter:{BASE}"],
    }
    assert result["task"] == {"type": "text-generation"}
    assert result["dataset"] == {"type": "openai/openai_humaneval", "name": "openai/openai_humaneval"}
    assert result["metrics"] == [
        {"type": "pass@1^(1)", "value": 0.52, "name": "Pass@1^(1)"},
        {"type": "pass@10^(1)", "value": 0.8, "name": "Pass@10^(1)"},
        {"type": "pass@10^(5)", "value": 0.6, "name": "Pass@10^(5)"},
        {"type": "pass@10^(10)", "value": 0.3, "name": "Pass@10^(10)"},
    ]


def test_adapter_card_body(config):
    text = adapter_card(
        config,
        repo_id="user/ib",
        log_history=LOG_HISTORY,
        pass_at_k_m=PASS_AT_K_M,
        eval_dataset="openai/openai_humaneval",
    ).text
    assert "import peft_ib" in text and 'AutoPeftModelForCausalLM.from_pretrained("user/ib")' in text
    assert 'export_lora("user/ib", "lora-export")' in text
    for row in [
        "| `ib_layers` | `0.625` |",
        "| `ib_dim` | `16` |",
        "| `ib_alpha` | `0.2` |",
        "| `ib_beta` | `0.01` |",
        "| `ib_logvar_min` | `-4.0` |",
        "| `ib_logvar_max` | `4.0` |",
        "| `ib_kl_mask` | `attention` |",
        "| `ib_final_norm` | `False` |",
        "| `r` | `8` |",
        "| `target_modules` | `q_proj, v_proj` |",
    ]:
        assert row in text
    for row in [
        "| `loss` | 2 | 10 |",
        "| `ce` | 1.5 | 10 |",
        "| `ib_kl` | 0.75 | 10 |",
        "| `ib_ce` | 2.875 | 10 |",
        "| `ib_alpha` | 0.2 | 10 |",
    ]:
        assert row in text
    assert "| 1 | 1 | 0.5200 |\n| 10 | 1 | 0.8000 |\n| 10 | 5 | 0.6000 |\n| 10 | 10 | 0.3000 |" in text
    assert "journal={arXiv preprint arXiv:2510.16022}" in text
    assert "![" not in text  # plots are only embedded when write_adapter_card drew them


def test_adapter_card_says_how_to_evaluate_elsewhere(config):
    """The lm-eval routes, with this adapter's base and repo filled in: `ib-ft lm-eval` on the folder, stock lm-eval
    on the export, and the error the folder gives stock lm-eval."""
    text = adapter_card(config, repo_id="user/ib").text
    section = text[text.index("## How to evaluate this adapter elsewhere") : text.index("## Information-bottleneck")]
    assert "`KeyError: 'IBLORA'`" in section
    assert 'pip install "ib-ft[lm-eval]"' in section
    assert f"ib-ft lm-eval --model hf --model_args pretrained={BASE},peft=user/ib --tasks <tasks>" in section
    assert f"lm_eval --model hf --model_args pretrained={BASE},peft=lora-export --tasks <tasks>" in section


def test_adapter_card_without_training_or_eval(config):
    card = adapter_card(config, tags="one")  # a single tag may come as a string, as TRL passes tags
    assert card.data.tags == [*TAGS, "one", f"base_model:adapter:{BASE}"]
    assert "## Training summary" not in card.text and "## Pass@k^(m)" not in card.text
    assert 'from_pretrained("path/to/this/adapter")' in card.text
    assert card.data.model_name == "tiny-base-ib-lora" and card.data.eval_results is None


def test_local_base_model_stays_out_of_metadata(config, tmp_path):
    card = adapter_card(config, base_model=str(tmp_path))
    assert card.data.base_model is None and card.data.tags == TAGS
    assert f"`{tmp_path}`" in card.text


@pytest.mark.parametrize(
    "results, eval_dataset, message",
    [
        ({"pass@5": 0.5}, "d", r"pass_at_k_m key 'pass@5': expected 'pass@<k>\^\(<m>\)'"),
        ({"pass@5^(6)": 0.5}, "d", r"pass_at_k_m key 'pass@5\^\(6\)'.*1 <= m <= k"),
        ({"pass@5^(5)": 0.5}, None, "eval_dataset=None"),
    ],
)
def test_adapter_card_errors_name_the_value(config, results, eval_dataset, message):
    with pytest.raises(ValueError, match=message):
        adapter_card(config, pass_at_k_m=results, eval_dataset=eval_dataset)


def test_write_adapter_card_embeds_the_plots_it_draws(config, tmp_path):
    write_adapter_card(tmp_path, config, log_history=LOG_HISTORY, pass_at_k_m=PASS_AT_K_M, eval_dataset="d")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "pass_at_k_m.png", "training_curves.png"]
    assert (tmp_path / "training_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "README.md").read_text()
    assert "![Training curves](training_curves.png)" in text
    assert "![Pass@k^(m) against m](pass_at_k_m.png)" in text


def test_write_adapter_card_skips_plots_without_data(config, tmp_path):
    # one m per k: nothing to draw against m; no training metric in the logs: no curves
    write_adapter_card(
        tmp_path,
        config,
        log_history=[{"eval_loss": 1.0, "step": 1}],
        pass_at_k_m={"pass@1^(1)": 0.5, "pass@5^(5)": 0.25},
        eval_dataset="d",
    )
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]
    assert plot_training_curves([{"eval_loss": 1.0, "step": 1}], tmp_path / "curves.png") is False


def test_export_card(config, tmp_path):
    card = export_card(config, ib_adapter="user/ib", repo_id="user/ib-lora", license="mit")
    assert card.data.to_dict() == {
        "base_model": BASE,
        "library_name": "peft",
        "license": "mit",
        "pipeline_tag": "text-generation",
        "tags": ["lora", "information-bottleneck", "peft", "trl", "sft", f"base_model:adapter:{BASE}"],
    }
    assert "[user/ib](https://huggingface.co/user/ib)" in card.text
    assert 'AutoPeftModelForCausalLM.from_pretrained("user/ib-lora")' in card.text
    assert "import peft_ib" not in card.text
    local = export_card(config, ib_adapter=str(tmp_path)).text
    assert f"from the IB-LoRA adapter `{tmp_path}`." in local and "huggingface.co/" + str(tmp_path) not in local


@pytest.fixture
def ib_model(config):
    base = tiny_llama(vocab_size=64)
    base.name_or_path = BASE  # as if loaded from the Hub: get_peft_model copies it into base_model_name_or_path
    return get_peft_model(base, config)


def test_save_pretrained_writes_the_ib_card_keeping_data_facts(ib_model, tmp_path):
    foreign = ModelCard.from_template(
        ModelCardData(library_name="transformers", datasets=["user/code"], license="mit", tags=["mine", "trl"]),
        template_str="---\n{{ card_data }}\n---\n\nA trainer's card.\n",
    )
    foreign.save(tmp_path / "README.md")
    ib_model.save_pretrained(tmp_path, save_embedding_layers=False)  # no Hub look-up of the base config
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "peft" and card.data.datasets == ["user/code"] and card.data.license == "mit"
    assert card.data.tags == [*TAGS, "mine", f"base_model:adapter:{BASE}"]
    assert "A trainer's card." not in card.text and "| `ib_dim` | `16` |" in card.text


def test_save_pretrained_of_plain_lora_keeps_the_peft_card(tmp_path):
    get_peft_model(tiny_llama(vocab_size=64), LoraConfig(r=4, target_modules=["q_proj"])).save_pretrained(tmp_path)
    card = ModelCard.load(tmp_path / "README.md")
    assert "ib-lora" not in card.data.tags and "- PEFT " in card.text


def test_the_card_hook_is_installed_once(ib_model):
    hook = PeftModel.create_or_update_model_card  # installed when `ib_model` was built (tests/test_hub.py: when)
    assert hook._ib_card_hook
    install_card_hook()
    assert PeftModel.create_or_update_model_card is hook


def test_trainer_card(ib_model, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = Trainer(model=ib_model, args=args)
    trainer.state.log_history = LOG_HISTORY
    card = trainer_card(trainer, model_name="my-adapter", license="mit")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "training_curves.png"]
    assert ModelCard.load(tmp_path / "README.md").data.to_dict() == card.data.to_dict()
    assert card.data.license == "mit"
    assert 'from_pretrained("my-adapter")' in card.text and "| `ce` | 1.5 | 10 |" in card.text
