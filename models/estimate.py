"""Sizing a run before it starts: parameters, FLOPs per token and training memory.

The memory figure is an estimate from counting what autograd keeps per token, for our block
under mixed precision; docs/BENCHMARKS.md compares it with measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    attention = act_bytes * (C + (C + 2 * kv) + C)  # qkv input; q, k, v; attention output
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


def training_memory(config: ModelConfig, n_params: int, micro_batch: int,
                    dtype: torch.dtype) -> MemoryEstimate:
    tokens = micro_batch * config.block_size
    act_bytes = torch.finfo(dtype).bits // 8
    per_layer = activation_bytes_per_token_per_layer(config, act_bytes)
    if config.gradient_checkpointing:  # each block's input, plus one block recomputed
        activations = tokens * (config.n_layer * 4 * config.n_embd + per_layer)
    else:
        activations = tokens * config.n_layer * per_layer
    # Logits in the autocast dtype, their fp32 copy for the loss, and its gradient: for one
    # chunk of the loss at a time (see chunked_cross_entropy).
    logits_bytes = (act_bytes + 4 + 4) if act_bytes != 4 else (4 + 4)
    return MemoryEstimate(weights_and_optimizer=16 * n_params, activations=activations,
                          logits=min(tokens, LOSS_CHUNK_TOKENS) * config.padded_vocab_size *
                          logits_bytes)


def largest_micro_batch(config: ModelConfig, n_params: int, dtype: torch.dtype,
                        memory_bytes: float, headroom: float = 0.9, limit: int = 4096) -> int:
    """The largest micro-batch whose estimate fits in headroom x memory (0 if none does)."""
    best = 0
    for batch in range(1, limit + 1):
        if training_memory(config, n_params, batch, dtype).total > headroom * memory_bytes:
            break
        best = batch
    return best
