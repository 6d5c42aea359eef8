import datasets
import pytest
from transformers import Trainer, TrainingArguments

from tiny_models import CHAT_TEMPLATE, tiny_llama, train_tokenizer
from trl_ib.trainer.callbacks import PassAtKMCallback

# The tiny model's heads (width 8) are narrower than vLLM's CPU attention serves: these tests sample with hf
# (tests/test_vllm_generation.py samples the callback on both backends).
# Completions are cut at the first newline and land in the comment the prompt ends with: the first
# problem passes whatever the model writes, the second fails whatever it writes.
PROBLEMS = [
    {"prompt": "def f():\n    return 1\n#", "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"},
    {"prompt": "def g():\n    return 1\n#", "test": "def check(c):\n    assert c() == 2\n", "entry_point": "g"},
]


def make_trainer(tmp_path) -> Trainer:
    tokenizer = train_tokenizer(tmp_path / "tokenizer")
    input_ids = [tokenizer("def add(a, b):\n    return a + b\n")["input_ids"][:8]] * 8
    train = datasets.Dataset.from_dict({"input_ids": input_ids, "labels": input_ids})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
    )
    return Trainer(
        model=tiny_llama(vocab_size=len(tokenizer)), args=args, train_dataset=train, processing_class=tokenizer
    )


def test_logs_pass_at_k_m_every_n_steps(tmp_path):
    trainer = make_trainer(tmp_path)
    callback = PassAtKMCallback(
        trainer,
        PROBLEMS,
        k=[1, 2],
        m=[1, "k"],
        num_samples=2,
        every_n_steps=1,
        max_new_tokens=6,
        stop_sequences=["\n", "\r"],
        timeout=2.0,
        backend="hf",
    )
    trainer.add_callback(callback)
    assert trainer.processing_class.padding_side == "right"
    trainer.train()
    assert trainer.processing_class.padding_side == "right"  # generation's left padding is not left behind
    logged = [entry for entry in trainer.state.log_history if "eval_pass@1^(1)" in entry]
    assert [entry["step"] for entry in logged] == [1, 2]
    for entry in logged:
        assert {key: entry[key] for key in entry if key.startswith("eval_pass@")} == {
            "eval_pass@1^(1)": 0.5,
            "eval_pass@2^(1)": 0.5,
            "eval_pass@2^(2)": 0.5,
        }


def test_chat_mode_answers_without_code_fail_and_training_goes_on(tmp_path):
    trainer = make_trainer(tmp_path)
    trainer.processing_class.chat_template = CHAT_TEMPLATE
    # stop at once: every answer is empty, so every sample is "failed: no code in the answer"
    callback = PassAtKMCallback(
        trainer,
        PROBLEMS,
        k=[1],
        num_samples=1,
        every_n_steps=2,
        prompt_mode="chat",
        max_new_tokens=2,
        stop_sequences=[chr(c) for c in range(32, 127)] + ["\n"],
        timeout=2.0,
        backend="hf",
    )
    assert callback.prompt_format.mode == "chat"
    trainer.add_callback(callback)
    trainer.train()
    assert [entry["eval_pass@1^(1)"] for entry in trainer.state.log_history if "eval_pass@1^(1)" in entry] == [0.0]


def test_invalid_arguments(tmp_path):
    trainer = make_trainer(tmp_path)
    with pytest.raises(ValueError, match="prompt_mode='chat' needs a tokenizer with a chat template"):
        PassAtKMCallback(trainer, PROBLEMS, prompt_mode="chat")
    with pytest.raises(ValueError, match=r"num_samples=1 is smaller than max\(k\)=5; need n >= k"):
        PassAtKMCallback(trainer, PROBLEMS, k=[5])
    with pytest.raises(ValueError, match="every_n_steps=0 is invalid; give a step interval >= 1"):
        PassAtKMCallback(trainer, PROBLEMS, every_n_steps=0)
    with pytest.raises(ValueError, match=r"backend='tgi': choose one of 'auto', 'hf', 'vllm'"):
        PassAtKMCallback(trainer, PROBLEMS, backend="tgi")
