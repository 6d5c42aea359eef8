"""`ib-ft train` with an observer, for tests/test_sharded_cpu.py and test_sharded_gpu.py: `accelerate launch ...
tests/sharded_probe.py train ...` runs exactly `python -m trl_ib.cli train ...` and writes, to the directory
$PROBE_OUT:

- `rank<r>.json`: each parameter's local and whole shape after step 1 (a ZeRO-3 partition, an FSDP2 DTensor shard:
  so a test sees that it was sharded) and the log history;
- `trained.safetensors` (rank 0): the adapter state at the end of training, gathered from the ZeRO-3 partitions
  with PEFT's own key names, to compare with what the Trainer saved.
"""

import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from peft import get_peft_model_state_dict
from safetensors.torch import save_file
from torch.distributed.tensor import DTensor
from transformers import Trainer, TrainerCallback

from peft_ib.model import full_shape
from trl_ib import cli


class Probe(TrainerCallback):
    def __init__(self, trainer: Trainer):
        self.trainer, self.shapes = trainer, None
        self.out = Path(os.environ["PROBE_OUT"])

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            self.shapes = {
                name: [list(p.to_local().shape if isinstance(p, DTensor) else p.shape), list(full_shape(p))]
                for name, p in self.trainer.model.named_parameters()
            }

    def on_train_end(self, args, state, control, **kwargs):
        model = self.trainer.model
        rank = self.trainer.args.process_index
        gather = nullcontext()  # FSDP: the GPU test compares the saved adapter with the reloaded one only
        if self.trainer.is_deepspeed_enabled:
            import deepspeed

            gather = deepspeed.zero.GatheredParameters(list(model.parameters()))
        with gather:  # a collective: every rank enters it
            trained = {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(model).items()}
        if rank == 0:
            save_file(trained, self.out / "trained.safetensors")
        (self.out / f"rank{rank}.json").write_text(json.dumps({"shapes": self.shapes, "logs": state.log_history}))


def observe(init):
    def wrapped(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(Probe(self))

    return wrapped


if __name__ == "__main__":
    Trainer.__init__ = observe(Trainer.__init__)
    cli.main(sys.argv[1:])
