"""One process of an Optuna search stored in SQLite, for test_hyperparameter_search's kill-and-resume test.

    python search_worker.py <tokenizer_dir> <output_dir> <storage_url> [<hang_at_trial>]

Runs IBSFTTrainer.hyperparameter_search(n_trials=3) on the tiny model and prints `trainings: <n>`, the trials this
process trained. With <hang_at_trial>, the trial this process starts
as that number (from 0) writes <output_dir>/hanging and sleeps until the process is killed.
"""

import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, TrainerCallback

from test_ib_sft_trainer import BASE_ARGS, code_dataset, ib_config
from tiny_models import tiny_llama
from trl_ib import IBSFTConfig, IBSFTTrainer

SPACE = {"ib_alpha": {"low": 0.01, "high": 1.0, "log": True}, "ib_dim": {"choices": [4, 8]}}


class CountTrainings(TrainerCallback):
    def __init__(self, output_dir: Path, hang_at: int | None):
        self.output_dir, self.hang_at, self.trainings = output_dir, hang_at, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainings += 1
        if self.trainings - 1 == self.hang_at:  # trials 0, 1, ... in the order this process starts them
            (self.output_dir / "hanging").touch()
            time.sleep(600)


def main(tokenizer_dir: str, output_dir: str, storage: str, hang_at: str | None = None) -> None:
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    args = IBSFTConfig(**{**BASE_ARGS, "output_dir": output_dir})
    trainer = IBSFTTrainer(
        tiny_llama(),
        args=args,
        train_dataset=code_dataset(8),
        eval_dataset=code_dataset(4),
        processing_class=tokenizer,
        peft_config=ib_config(),
    )
    counter = CountTrainings(Path(output_dir), None if hang_at is None else int(hang_at))
    trainer.add_callback(counter)
    trainer.hyperparameter_search(hp_space=SPACE, n_trials=3, storage=storage, heartbeat_interval=1)
    print(f"trainings: {counter.trainings}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
