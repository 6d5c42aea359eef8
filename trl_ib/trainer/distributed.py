"""Checks, before the first step, that a multi-process launch trains as one sharded or data-parallel run."""

import os

from accelerate.utils import DistributedType
from transformers import Trainer


def check_distributed_run(trainer: Trainer) -> None:
    """
    Refuse, before the first step, a launch that would not train as one sharded or data-parallel run: several
    processes the Trainer does not join, an FSDP config accelerate does not apply, an FSDP or ZeRO-3 run that would
    save no adapter or an empty one. Called by IBSFTTrainer, and by `ib-ft train` for its plain-LoRA control.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and trainer.args.world_size == 1:
        raise ValueError(
            f"{launched} processes were launched (WORLD_SIZE={launched}), but the Trainer runs each as a run of its own "
            f"(world_size 1, device {trainer.args.device}): each would train on the same batches and write the same "
            "output. On CPU, pass --ddp_backend gloo (accelerate then joins the processes over gloo); on GPUs, launch "
            "with accelerate's GPU configs (examples/accelerate/)."
        )
    distributed_type = trainer.accelerator.distributed_type
    fsdp_asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
    if fsdp_asked and distributed_type != DistributedType.FSDP:
        raise ValueError(
            f"The accelerate config asks for FSDP, but accelerate runs this launch as {distributed_type.value} on "
            f"{trainer.args.device.type} (accelerate applies FSDP on accelerators only): nothing would be sharded "
            "and the processes would not be synchronized. On CPU use examples/accelerate/zero3_cpu.yaml (ZeRO-3) "
            "or --use_cpu true with --ddp_backend gloo (data parallel); FSDP2 on CPU runs under torchrun with "
            "fully_shard, outside the Trainer (tests/sharded_worker.py)."
        )
    fsdp = getattr(trainer.accelerator.state, "fsdp_plugin", None)  # set only under FSDP
    if fsdp is not None and "FULL_STATE_DICT" not in str(fsdp.state_dict_type):
        raise ValueError(
            f"FSDP with fsdp_state_dict_type {fsdp.state_dict_type}: Trainer.save_model writes no adapter at the end "
            "of training (only sharded checkpoints). Set fsdp_state_dict_type: FULL_STATE_DICT in the accelerate "
            "YAML (examples/accelerate/fsdp.yaml)."
        )
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        zero = plugin.deepspeed_config.get("zero_optimization", {})
        if not zero.get("stage3_gather_16bit_weights_on_model_save", False):
            raise ValueError(
                "DeepSpeed ZeRO-3 with stage3_gather_16bit_weights_on_model_save=false: the Trainer would save an "
                "empty adapter (the weights stay partitioned in a DeepSpeed checkpoint). Set "
                '"stage3_gather_16bit_weights_on_model_save": true in the DeepSpeed JSON, or '
                "zero3_save_16bit_model: true in the accelerate YAML (examples/accelerate/zero3.yaml)."
            )
