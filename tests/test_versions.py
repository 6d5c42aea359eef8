"""ib-ft's own code calls no deprecated API of the releases it is installed with (the newest in CI, the lower bounds
in .ci/run's second environment): a deprecation warning whose first caller outside transformers, torch and the
standard library is in peft_ib, trl_ib or hub_cards fails these tests. Warnings that other libraries cause (PEFT, TRL
calling deprecated transformers API) are theirs, and are not counted."""

import json
import sys
import warnings
from contextlib import contextmanager

import pytest
from datasets import Dataset

from peft_ib import IBLoraConfig
from tiny_models import tiny_gpt2, tiny_llama, train_tokenizer
from trl_ib import IBSFTConfig, IBSFTTrainer
from trl_ib.cli.eval import main as ib_ft_eval
from trl_ib.generation.hf_generation import generate_samples
from trl_ib.trainer.callbacks import PassAtKMCallback

OURS = ("/peft_ib/", "/trl_ib/", "/hub_cards/")
# frames between a deprecated call and its warning: the library that warns, and the machinery that calls it
PASSED_THROUGH = ("/transformers/", "/torch/", "/functools.py", "/contextlib.py", "/warnings.py")


@contextmanager
def our_deprecations(ours: tuple[str, ...] = OURS):
    """Yields the list of deprecation warnings (FutureWarning, DeprecationWarning) our code triggers in the block:
    `file:line message`, where the first frame before the warning outside `PASSED_THROUGH` is in a file whose path
    contains one of `ours`."""
    found, warn = [], warnings.warn

    def recording(message, category=None, stacklevel=1, *args, **kwargs):
        category = category or (type(message) if isinstance(message, Warning) else UserWarning)
        if issubclass(category, (FutureWarning, DeprecationWarning)):
            frame = sys._getframe(1)
            while frame is not None and any(part in frame.f_code.co_filename for part in PASSED_THROUGH):
                frame = frame.f_back
            if frame is not None and any(part in frame.f_code.co_filename for part in ours):
                found.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {message}")
        return warn(message, category, stacklevel + 1, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(warnings, "warn", recording)
        yield found


def test_the_recorder_catches_a_deprecated_call_of_ours(monkeypatch):
    """The recorder itself, with this file counted as ours: a deprecation transformers warns of about a call from
    here is counted, one about a call from another library is not."""
    import transformers.utils.deprecation as deprecation

    @deprecation.deprecate_kwarg("old", "99.0.0", new_name="new")
    def api(new=None):
        return new

    library = type(sys)("library")
    exec(
        compile("def call(api):\n    return api(old=1)\n", "/site-packages/library/call.py", "exec"), library.__dict__
    )
    with our_deprecations(ours=(__file__,)) as found, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert api(old=1) == 1 and library.call(api) == 1
    assert len(found) == 1 and __file__ in found[0] and "old" in found[0]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_sampling_calls_nothing_deprecated(tmp_path, arch):
    """generate_samples with a prompt cache shared by the samples (sampled) and without (greedy)."""
    tokenizer = train_tokenizer(tmp_path)
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch](vocab_size=len(tokenizer)).eval()
    prompts = ["def add(a, b):\n", "def mul(a, b):\n    return"]
    with our_deprecations() as found:
        for temperature, num_samples in ((0.8, 3), (0.0, 2)):
            completions = generate_samples(
                model, tokenizer, prompts, num_samples, temperature, max_new_tokens=6, seed=0
            )
            assert [len(group) for group in completions] == [num_samples] * 2
    assert found == []


def test_training_with_checkpointing_and_the_callback_call_nothing_deprecated(tmp_path):
    """IBSFTTrainer with TRL's defaults (activation checkpointing on), with the Pass@k^(m) callback on hf."""
    tokenizer = train_tokenizer(tmp_path / "tokenizer")
    data = Dataset.from_dict(
        {
            "prompt": [f"Write f{i}\n" for i in range(4)],
            "completion": [f"def f{i}(a):\n    return a\n" for i in range(4)],
        }
    )
    args = IBSFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_steps=2,
        per_device_train_batch_size=2,
        save_strategy="no",
        disable_tqdm=True,
    )
    config = IBLoraConfig(r=4, lora_alpha=8, target_modules="all-linear", ib_layers=1, ib_dim=8)
    problems = [
        {"prompt": "def f():\n    return 1\n#", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    ]
    with our_deprecations() as found:
        trainer = IBSFTTrainer(
            tiny_llama(vocab_size=len(tokenizer)),
            args=args,
            train_dataset=data,
            processing_class=tokenizer,
            peft_config=config,
        )
        trainer.add_callback(PassAtKMCallback(trainer, problems, every_n_steps=2, max_new_tokens=4, backend="hf"))
        trainer.train()
    assert [log["eval_pass@1^(1)"] for log in trainer.state.log_history if "eval_pass@1^(1)" in log] == [1.0]
    assert found == []


def test_ib_ft_eval_calls_nothing_deprecated(tmp_path):
    tokenizer = train_tokenizer(tmp_path / "model")
    tiny_llama(vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    problems = tmp_path / "problems.jsonl"
    problems.write_text(
        json.dumps({"task_id": "t/0", "prompt": "def f():\n", "test": "def check(c):\n    pass\n", "entry_point": "f"})
        + "\n"
    )
    with our_deprecations() as found:
        ib_ft_eval(
            [
                "--model_name_or_path",
                str(tmp_path / "model"),
                "--dataset",
                str(problems),
                "--num_samples",
                "2",
                "--k",
                "1",
                "--max_new_tokens",
                "4",
                "--backend",
                "hf",
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
    assert found == []
