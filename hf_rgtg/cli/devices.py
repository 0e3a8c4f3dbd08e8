"""`--device` and `--dtype`: their "auto" values, and the flag named in every refusal."""

from __future__ import annotations

import torch

#: The `--dtype` choices, by name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """The device `--device name` means: "auto" is the first of CUDA, MPS and the CPU that torch finds.

    Raises:
        `ValueError`: naming `--device`, for a name torch does not know or a device this machine lacks.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"argument --device: {name!r} is not a device: give auto, cpu, cuda, cuda:N or mps"
        ) from None
    available = {
        "cpu": True,
        "cuda": torch.cuda.is_available(),
        "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
    }
    if not available.get(device.type, True):
        raise ValueError(f"argument --device: torch finds no {device.type} device here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(
            f"argument --device: there is no {name} (torch finds {torch.cuda.device_count()} CUDA devices)"
        )
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype `--dtype name` means on `device`: "auto" is float32 on the CPU (where half precision is slow),
    bfloat16 where the accelerator supports it, float16 otherwise."""
    if name != "auto":
        return DTYPES[name]
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


__all__ = ["DTYPES", "resolve_device", "resolve_dtype"]
