"""Sizing a run before it starts: parameters, FLOPs per token and training memory.

The memory figure is an estimate from counting what autograd keeps per token, for our block
under mixed precision; docs/BENCHMARKS.md compares it with measured peaks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from transformer_setup.cli import UserError
from transformer_setup.params import ModelConfig
from transformer_setup.transformer import GPT, LOSS_CHUNK_TOKENS


def meta_model(config: ModelConfig) -> GPT:
    """The model's structure with no storage behind it: free to build at any size."""
    with torch.device("meta"):
        return GPT(config)


def activation_bytes_per_token_per_layer(config: ModelConfig, act_bytes: int) -> int:
    """What one block keeps for backward, per token. The residual stream stays fp32 (4 bytes);
    matmul inputs and outputs are in the autocast dtype (act_bytes)."""
    C, F = config.n_embd, config.ffn_hidden
    kv = config.n_kv_head * config.head_dim
    residual_inputs = 2 * 4 * C  # inputs of the two norms
    # qkv input; the q|k|v output (kept whole by the v view); q and k after RoPE; attention out
    attention = act_bytes * (C + (C + 2 * kv) + (C + kv) + C)
    if config.mlp == "swiglu":
        mlp = act_bytes * (C + 2 * F + F + F)  # up input; gate|up; silu(gate); product
    else:
        mlp = act_bytes * (C + F + F)  # up input; pre-activation; activation
    dropout_masks = (3 * C + F) if config.dropout > 0 else 0  # one byte per element
    return residual_inputs + attention + mlp + dropout_masks


@dataclass
class MemoryEstimate:
    weights_and_optimizer: int  # fp32 weights, gradients and AdamW's two moments
    activations: int
    logits: int

    @property
    def total(self) -> int:
        return self.weights_and_optimizer + self.activations + self.logits


def selective_bytes_per_token_per_layer(config: ModelConfig, act_bytes: int) -> int:
    """What a block under selective checkpointing keeps: its input and its matmul and
    attention outputs (norms, activations and RoPE are recomputed)."""
    C, F = config.n_embd, config.ffn_hidden
    kv = config.n_kv_head * config.head_dim
    up = 2 * F if config.mlp == "swiglu" else F
    return 4 * C + act_bytes * ((C + 2 * kv) + C + C + up + C)  # qkv, attn, out, up, down


def training_memory(config: ModelConfig, n_params: int, micro_batch: int,
                    dtype: torch.dtype) -> MemoryEstimate:
    tokens = micro_batch * config.block_size
    act_bytes = torch.finfo(dtype).bits // 8
    per_layer = activation_bytes_per_token_per_layer(config, act_bytes)
    if config.gradient_checkpointing:  # checkpointed blocks keep less; one is rebuilt at a time
        checkpointed = len(range(0, config.n_layer, config.checkpoint_every))
        kept = selective_bytes_per_token_per_layer(config, act_bytes) \
            if config.checkpoint_selective else 4 * config.n_embd
        activations = tokens * (checkpointed * kept + (config.n_layer - checkpointed) * per_layer
                                + per_layer)
    else:
        activations = tokens * config.n_layer * per_layer
    # Under autocast each matmul's weight is cast once per forward and the copy kept for
    # backward: half the fp32 weights' size again.
    activations += n_params * act_bytes if act_bytes < 4 else 0
    # Logits in the autocast dtype, their fp32 copy, its log-softmax and its gradient: for one
    # chunk of the loss at a time (see chunked_cross_entropy).
    logits_bytes = (act_bytes if act_bytes != 4 else 0) + 4 + 4 + 4
    return MemoryEstimate(weights_and_optimizer=16 * n_params, activations=activations,
                          logits=min(tokens, LOSS_CHUNK_TOKENS) * config.padded_vocab_size *
                          logits_bytes)


# What a GPU's reported bytes hold besides what training_memory counts. Figures to check on a
# real card (scripts/gpu_suite.py prints the context it measures): the CUDA context with its
# loaded kernels and cuBLAS/cuBLASLt workspaces live outside PyTorch's allocator (~0.5-1 GiB on
# an H100); NCCL's communication buffers come with a process group; the caching allocator rounds
# blocks up and fragments (kept low by expandable segments, which the trainer turns on). DDP's
# gradient buckets are the gradients themselves (gradient_as_bucket_view), so they add nothing.
CUDA_CONTEXT_BYTES = 2**30
NCCL_BYTES = 2**30
FRAGMENTATION = 0.05  # of the rest


def usable_memory(device_bytes: float, world_size: int = 1) -> float:
    """Of a GPU's reported bytes (torch.cuda.get_device_properties().total_memory, e.g.
    85.5e9 on an "80 GB" H100), what training_memory's estimate may fill."""
    rest = device_bytes - CUDA_CONTEXT_BYTES - (NCCL_BYTES if world_size > 1 else 0)
    return rest * (1 - FRAGMENTATION)


def largest_micro_batch(config: ModelConfig, n_params: int, dtype: torch.dtype,
                        usable_bytes: float, limit: int = 4096,
                        divides: int | None = None) -> int:
    """The largest micro-batch whose estimate fits in usable_bytes (0 if none does); with
    `divides`, only micro-batches that divide it (the rows of a process's global batch)."""
    best = 0
    for batch in range(1, (divides or limit) + 1):
        if training_memory(config, n_params, batch, dtype).total > usable_bytes:
            break
        if divides is None or divides % batch == 0:
            best = batch
    return best


def device_memory_bytes(device: torch.device, assumed_gb: float) -> float:
    """The GPU's reported memory, or the size assumed for sizing a GPU run from a machine
    without one."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return assumed_gb * 1e9


def auto_micro_batch(config: ModelConfig, global_batch_tokens: int | None, world_size: int,
                     dtype: torch.dtype, memory_bytes: float) -> int:
    """`--batch_size auto`: the largest micro-batch the estimate fits in the usable part of
    memory_bytes, among those that divide each process's share of the global batch (when one
    is fixed)."""
    rows = None
    if global_batch_tokens is not None:
        per_process = config.block_size * world_size
        if global_batch_tokens % per_process:
            raise UserError(f"global_batch_tokens {global_batch_tokens:,} is not a multiple of "
                            f"block_size x processes = {per_process:,}")
        rows = global_batch_tokens // per_process
    n_params = meta_model(config).num_params()
    best = largest_micro_batch(config, n_params, dtype, usable_memory(memory_bytes, world_size),
                               divides=rows)
    if best == 0:
        raise UserError(f"no micro-batch fits {memory_bytes / 1e9:.0f} GB by the memory "
                        "estimate; add --gradient_checkpointing (or --checkpoint_selective) or "
                        "give --batch_size")
    return best


def matmul_flops_per_second(device: torch.device, n: int = 1024) -> float:
    """The dense float32 matmul speed of this device, best of three n x n products: the peak a
    run on a CPU is measured against (a GPU's comes from its data sheet, models/device.py)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = math.inf
    for _ in range(4):  # the first warms up
        start = time.perf_counter()
        (a @ b).sum().item()  # .item() waits for the device
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def seconds_per_step(flops_per_token: float, tokens_per_step: int,
                     flops_per_second: float) -> float:
    """An optimizer step's time if the run computes at flops_per_second."""
    return flops_per_token * tokens_per_step / flops_per_second


def duration(seconds: float) -> str:
    """3.1 minutes, 13.4 hours, 2.1 days (from two of a unit; seconds below that)."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= 2 * size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


# ----------------------------------------------------------------------------- planning a run

COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER = 20  # Hoffmann et al. 2022 (Chinchilla): about 20


@dataclass
class Plan:
    """Time, tokens and money of a run on `gpus` GPUs computing at `mfu` of their peak, from the
    training FLOPs per token the trainer's MFU uses (GPT.flops_per_token), with the GPUs assumed
    to scale perfectly (communication not modelled)."""

    gpus: int
    peak_flops: float  # per GPU, dense bf16
    mfu: float
    flops_per_token: int
    n_params: int

    @property
    def tokens_per_second(self) -> float:
        return self.gpus * self.peak_flops * self.mfu / self.flops_per_token

    def tokens_in(self, hours: float) -> float:
        return self.tokens_per_second * hours * 3600

    def hours_for(self, tokens: float) -> float:
        return tokens / self.tokens_per_second / 3600

    def tokens_per_parameter(self, tokens: float) -> float:
        return tokens / self.n_params

    def gpu_hours(self, hours: float) -> float:
        return self.gpus * hours

    def cost(self, hours: float, price_per_gpu_hour: float) -> float:
        return self.gpu_hours(hours) * price_per_gpu_hour
