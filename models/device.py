"""Where and in what precision to run: device and dtype names from the command line."""

from __future__ import annotations

import contextlib
import os

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


def bf16_native(device: torch.device) -> bool:
    """bf16 in hardware: CUDA compute capability 8.0 (Ampere) and later. Older GPUs (V100, T4)
    only emulate it, which torch.cuda.is_bf16_supported() counts as support."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that have it natively, else fp16 (with a gradient scaler) on CUDA,
    else fp32. bf16 asked for on a GPU that would emulate it is a UserError."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if bf16_native(device) else torch.float16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r} (use auto, bf16, fp16 or fp32)")
    if name == "bf16" and device.type == "cuda" and not bf16_native(device):
        major, minor = torch.cuda.get_device_capability(device)
        raise UserError(f"this GPU (compute capability {major}.{minor}) only emulates bf16, "
                        "many times slower; use --dtype fp16 (or auto)")
    return DTYPES[name]


def enable_tf32(device: torch.device) -> bool:
    """fp32 matmuls on the tensor cores in TF32 (fp32 range, 10-bit mantissa) where the GPU
    has them (compute capability 8.0+): several times the fp32 rate. True if on."""
    if not bf16_native(device):  # the same generation brought TF32
        return False
    torch.set_float32_matmul_precision("high")
    return True


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision: weights stay fp32, matmuls run in dtype. fp32 needs no context."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return next(name for name, value in DTYPES.items() if value == dtype)


# Dense (not sparse) tensor-core peaks in FLOP/s from NVIDIA's data sheets, for MFU, keyed on
# the exact name torch.cuda.get_device_name returns and on the precision of the matmuls: "tf32"
# scores fp32 runs (TF32 on: enable_tf32). A name not listed has no peak: MFU is "unknown"
# rather than another card's figure. An H200 NVL that reports itself as plain "NVIDIA H200"
# would be scored against the SXM part's peak.
_HOPPER_SXM = {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12}
_HOPPER_PCIE = {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12}
_HOPPER_NVL = {"bf16": 835e12, "fp16": 835e12, "tf32": 417e12}
_A100 = {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12}
_V100_SXM = {"fp16": 125e12}  # no bf16 or TF32 in hardware
PEAK_FLOPS: dict[str, dict[str, float]] = {
    "NVIDIA H100 80GB HBM3": _HOPPER_SXM,  # H100 SXM5
    "NVIDIA H100 PCIe": _HOPPER_PCIE,
    "NVIDIA H100 NVL": _HOPPER_NVL,
    "NVIDIA H200": _HOPPER_SXM,
    "NVIDIA H200 NVL": _HOPPER_NVL,
    "NVIDIA H800": _HOPPER_SXM,
    "NVIDIA GH200 480GB": _HOPPER_SXM,
    "NVIDIA A100-SXM4-80GB": _A100,
    "NVIDIA A100-SXM4-40GB": _A100,
    "NVIDIA A100 80GB PCIe": _A100,
    "NVIDIA A100-PCIE-40GB": _A100,
    "NVIDIA B200": {"bf16": 2250e12, "fp16": 2250e12, "tf32": 1100e12},
    "NVIDIA L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12},
    "NVIDIA L40": {"bf16": 181e12, "fp16": 181e12, "tf32": 90.5e12},
    "NVIDIA L4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12},
    "NVIDIA A10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12},
    "NVIDIA A10G": {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12},  # AWS's, lower clocks
    "NVIDIA RTX A6000": {"bf16": 154.8e12, "fp16": 154.8e12, "tf32": 77.4e12},
    "NVIDIA GeForce RTX 4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12},
    "NVIDIA GeForce RTX 3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12},
    "Tesla V100-SXM2-16GB": _V100_SXM,
    "Tesla V100-SXM2-32GB": _V100_SXM,
    "Tesla V100-PCIE-16GB": {"fp16": 112e12},
    "Tesla V100-PCIE-32GB": {"fp16": 112e12},
    "Tesla T4": {"fp16": 65e12},
}


def peak_flops_of(name: str, dtype: torch.dtype) -> float | None:
    """The dense peak of the GPU called `name` for matmuls in `dtype` (fp32: its TF32 rate),
    or None where unknown."""
    key = "tf32" if dtype == torch.float32 else dtype_name(dtype)
    return PEAK_FLOPS.get(name, {}).get(key)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """This device's peak for dtype, or None (CPUs, unlisted GPUs, fp32 without TF32): no MFU
    then."""
    if device.type != "cuda":
        return None
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return None  # plain fp32 runs on the CUDA cores; their peak is not in the table
    return peak_flops_of(torch.cuda.get_device_name(device), dtype)


# --gpu_type of the dry run's planner: short names for the table's devices.
GPU_TYPES = {"H100": "NVIDIA H100 80GB HBM3", "H100-PCIe": "NVIDIA H100 PCIe",
             "H100-NVL": "NVIDIA H100 NVL", "H200": "NVIDIA H200", "H200-NVL": "NVIDIA H200 NVL",
             "H800": "NVIDIA H800", "GH200": "NVIDIA GH200 480GB",
             "A100": "NVIDIA A100-SXM4-80GB", "A100-40GB": "NVIDIA A100-SXM4-40GB",
             "A100-PCIe": "NVIDIA A100 80GB PCIe", "B200": "NVIDIA B200", "L40S": "NVIDIA L40S",
             "L40": "NVIDIA L40", "L4": "NVIDIA L4", "A10": "NVIDIA A10",
             "RTX4090": "NVIDIA GeForce RTX 4090", "RTX3090": "NVIDIA GeForce RTX 3090"}


def planned_peak_flops(gpu_type: str) -> float | None:
    """The bf16 peak of a GPU named for planning (a GPU_TYPES short name, any case, or a
    device name as torch reports it), or None if unknown."""
    names = {key.lower(): name for key, name in GPU_TYPES.items()}
    return peak_flops_of(names.get(gpu_type.lower(), gpu_type), torch.bfloat16)


def use_expandable_segments() -> None:
    """Let PyTorch's CUDA allocator grow segments in place instead of caching fixed blocks:
    little fragmentation, which the micro-batch sizing counts on. It must be set before CUDA
    starts (the allocator reads it once), so gpt.py sets it first thing; a setting of the
    user's own is kept."""
    if not any(name in os.environ for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")):
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
