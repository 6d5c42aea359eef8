"""The dtype rule: bfloat16 where the device computes it natively, float32 elsewhere.

    from trl_ib.precision import default_dtype, native_bf16
    native_bf16("cpu")        # True on a CPU with AVX-512 BF16 or AMX, e.g. AMD Zen 4+, Intel Sapphire Rapids+
    default_dtype()           # torch.bfloat16 there (and on a CUDA GPU with bf16), else torch.float32

Training follows it through the Trainer's mixed precision (`IBSFTConfig.bf16` defaults to `native_bf16()`): master
weights and optimizer stay in float32 and the forward runs under bf16 autocast. Sampling (`ib-ft eval`, the demo)
loads the weights in `default_dtype()`. `--bf16 False` / `--dtype float32` turn it off. A CPU without native bf16
emulates it in software, slower than float32, hence float32 there.
"""

import torch

DTYPE_CHOICES = ("rule", "auto", "float32", "bfloat16", "float16")


def native_bf16(device: str | torch.device | None = None) -> bool:
    """Whether `device` (default: CUDA if present, else the CPU) computes bfloat16 matrix products in hardware."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def default_dtype(device: str | torch.device | None = None) -> torch.dtype:
    """torch.bfloat16 where `native_bf16(device)`, else torch.float32."""
    return torch.bfloat16 if native_bf16(device) else torch.float32


def resolve_dtype(name: str, field: str = "dtype", device: str | torch.device | None = None) -> torch.dtype | str:
    """
    A `--dtype` value as `from_pretrained(dtype=...)` takes it: "rule" -> `default_dtype(device)`; "auto" -> "auto"
    (the checkpoint's own dtype); "float32" / "bfloat16" / "float16" -> that torch dtype. Anything else: a ValueError
    naming `field` and the allowed values.
    """
    if name not in DTYPE_CHOICES:
        raise ValueError(f"{field}={name!r}: must be one of {', '.join(DTYPE_CHOICES)}.")
    if name == "rule":
        return default_dtype(device)
    return "auto" if name == "auto" else getattr(torch, name)
