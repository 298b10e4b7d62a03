"""Where and in what precision to run: device and dtype names from the command line."""

from __future__ import annotations

import contextlib

import torch

from transformer_setup.cli import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an unavailable choice is a UserError."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda, cuda:N or mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} requested but CUDA is not available here")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise UserError(f"device {name!r} requested but only {torch.cuda.device_count()} GPUs")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' requested but MPS is not available here")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that support it, else fp16 on CUDA, else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r} (use auto, bf16, fp16 or fp32)")
    return DTYPES[name]


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision: weights stay fp32, matmuls run in dtype. fp32 needs no context."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


# Dense bf16/fp16 tensor-core peaks (FLOP/s), from the vendors' data sheets, for MFU.
PEAK_FLOPS = {
    "H200": 989e12, "H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
    "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10G": 70e12, "A10": 125e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12,
}


def peak_flops(device: torch.device) -> float | None:
    """The GPU's dense bf16 peak, or None where unknown (CPUs, unlisted GPUs): no MFU then."""
    if device.type != "cuda":
        return None
    return peak_flops_of(torch.cuda.get_device_name(device))


def peak_flops_of(name: str) -> float | None:
    """The dense bf16 peak of the GPU a name describes (a device name such as "NVIDIA H100 80GB
    HBM3", or a key of PEAK_FLOPS such as "h100"), or None if the table has none."""
    for key, flops in PEAK_FLOPS.items():  # most specific names first
        if key.lower() in name.lower():
            return flops
    return None
