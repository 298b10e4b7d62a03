"""A GPT-style decoder-only transformer, in one file, readable top to bottom.

One class covers two families, chosen by ModelConfig:
- the modern (Llama) layout: RoPE positions, RMSNorm, SwiGLU MLP, no biases, untied head;
- the classic GPT-2 layout: learned positions, LayerNorm, GELU MLP, biases, tied embeddings.

Each block is pre-norm:   x = x + attn(norm(x));   x = x + mlp(norm(x))

Attention runs through the flash-attn package when it is installed and the tensors suit it (CUDA,
fp16/bf16), otherwise through torch's scaled_dot_product_attention, which picks its own fused
kernel. For generation, each attention layer can hold a static KV cache.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import (
    CheckpointPolicy,
    checkpoint,
    create_selective_checkpoint_contexts,
)

from transformer_setup.params import ConfigError, ModelConfig

try:  # optional extra: `uv sync --extra flash` on a CUDA machine
    from flash_attn import flash_attn_func
except (ImportError, OSError):  # not installed, or built against another CUDA/torch
    flash_attn_func = None


# ----------------------------------------------------------------------------- positions (RoPE)

def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape (max_len, head_dim) for rotary position embeddings.

    Channel i and i + head_dim/2 form one rotating pair (the "rotate half" convention of
    transformers' Llama, so its weights load without permutation).
    """
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, head_dim) by the angles of its positions (cos, sin: (T, D))."""
    cos, sin = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


# ----------------------------------------------------------------------------- building blocks

def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class Embedding(nn.Embedding):
    """nn.Embedding whose initialisation is left to GPT.reset_parameters: no double init, and
    building on the meta device stays instant (init on meta tensors is slow and meaningless)."""

    def reset_parameters(self) -> None:
        pass


class KVCache:
    """Keys and values of past positions for one attention layer: (batch, kv_heads, max_len, D)."""

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def update(self, start: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, T, kv_heads, D) at positions start..start+T; return all up to there."""
        batch, end = k.shape[0], start + k.shape[1]
        self.k[:batch, :, start:end] = k.transpose(1, 2)
        self.v[:batch, :, start:end] = v.transpose(1, 2)
        return self.k[:batch, :, :end], self.v[:batch, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_head, self.n_kv_head = config.n_head, config.n_kv_head
        self.head_dim = config.head_dim
        self.backend = config.attention
        self.dropout = config.dropout
        kv_dim = config.n_kv_head * config.head_dim
        # One matmul for queries, keys and values: [q | k | v] along the output dimension.
        self.qkv_proj = nn.Linear(config.n_embd, config.n_embd + 2 * kv_dim, bias=config.bias)
        self.out_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                start: int) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv_proj(x).split(
            [C, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        if cos is not None:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        if self.kv_cache is not None:
            y = self._attend_cached(q, k, v, start)
        elif self._use_flash(q):
            y = flash_attn_func(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                causal=True)
        else:
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                dropout_p=self.dropout if self.training else 0.0, is_causal=True,
                enable_gqa=self.n_kv_head != self.n_head).transpose(1, 2)
        return self.resid_dropout(self.out_proj(y.reshape(B, T, C)))

    def _use_flash(self, q: torch.Tensor) -> bool:
        usable = (flash_attn_func is not None and q.is_cuda
                  and q.dtype in (torch.float16, torch.bfloat16))
        if self.backend == "flash" and not usable:
            raise RuntimeError("attention='flash' needs the flash-attn package and fp16/bf16 "
                               "tensors on a CUDA device; use attention='auto' or 'sdpa'")
        return usable and self.backend != "sdpa"

    def _attend_cached(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       start: int) -> torch.Tensor:
        """Attention for generation: new queries see every cached position up to their own."""
        T = q.shape[1]
        k_all, v_all = self.kv_cache.update(start, k, v)
        # One new token may see everything cached; a chunk of T needs the causal part among
        # its own positions (SDPA's is_causal aligns top-left, which is wrong when start > 0).
        mask = None
        if T > 1:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=q.device).tril(diagonal=start)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2), k_all.to(q.dtype), v_all.to(q.dtype), attn_mask=mask,
            enable_gqa=self.n_kv_head != self.n_head)
        return y.transpose(1, 2)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)), with gate and up fused in one matmul.
    GELU: down(gelu(up(x)))."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        up_features = 2 * config.ffn_hidden if self.swiglu else config.ffn_hidden
        self.up_proj = nn.Linear(config.n_embd, up_features, bias=config.bias)
        self.down_proj = nn.Linear(config.ffn_hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(x)
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h, approximate="tanh")  # GPT-2's "gelu_new"
        return self.dropout(self.down_proj(h))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, checkpointed: bool = False) -> None:
        super().__init__()
        self.attn_norm = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config)
        self.checkpointed = checkpointed  # recomputed in backward (gradient checkpointing)
        self.selective = config.checkpoint_selective

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                start: int) -> torch.Tensor:
        if self.checkpointed and self.training and torch.is_grad_enabled():
            # Keep the block's input (and, selective, its matmul outputs); recompute the rest
            # of its insides during backward. Inside the block, so that a block compiled on
            # its own (under FSDP) holds its checkpoint too.
            return checkpoint(self.compute, x, cos, sin, start, use_reentrant=False,
                              **selective_checkpointing(self.selective))
        return self.compute(x, cos, sin, start)

    def compute(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                start: int) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, start)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------- recomputation

def _saved_ops() -> set:
    """Ops whose outputs selective checkpointing keeps: the matmuls and attention kernels (the
    FLOPs); norms, activations, RoPE and casts are recomputed (cheap, and most of the memory)."""
    aten = torch.ops.aten
    names = ["mm", "addmm", "bmm", "_scaled_dot_product_flash_attention",
             "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
             "_scaled_dot_product_flash_attention_for_cpu"]
    ops = {getattr(aten, name).default for name in names if hasattr(aten, name)}
    if hasattr(torch.ops, "flash_attn") and hasattr(torch.ops.flash_attn, "_flash_attn_forward"):
        ops.add(torch.ops.flash_attn._flash_attn_forward.default)
    return ops


def _keep_matmuls(ctx, op, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


SAVED_OPS = _saved_ops()


def _selective_arguments() -> dict:
    """checkpoint()'s extra arguments for torch's selective policy keeping SAVED_OPS' outputs.
    Decided once, at import: inside a compiled forward, `inspect.signature` is a graph break
    that makes Dynamo skip the whole frame (nothing compiled)."""
    extra = {"context_fn": functools.partial(create_selective_checkpoint_contexts, _keep_matmuls)}
    if "respect_saved_tensors_hooks" in inspect.signature(checkpoint).parameters:
        extra["respect_saved_tensors_hooks"] = True  # what it keeps is seen like the rest
    return extra


SELECTIVE = _selective_arguments()


def selective_checkpointing(enabled: bool) -> dict:
    """checkpoint()'s extra arguments: SELECTIVE, or none for plain recomputation."""
    return SELECTIVE if enabled else {}


# ----------------------------------------------------------------------------- the loss

LOSS_CHUNK_TOKENS = 8192  # above this many tokens the loss is computed chunk by chunk


def _chunk_loss_sum(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    vocab_size: int) -> torch.Tensor:
    logits = F.linear(x, weight)[:, :vocab_size].float()
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")


def chunked_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          vocab_size: int, chunk_tokens: int = LOSS_CHUNK_TOKENS,
                          reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (mean, or sum) of the head's logits x @ weight.T against targets (-1: ignored),
    without ever holding the logits of all tokens: each chunk's fp32 logits exist only inside a
    checkpointed function and are recomputed in backward. At 72 x 1024 tokens and a 50k
    vocabulary, that is one chunk's ~1.6 GB instead of ~15 GB, for one extra head matmul."""
    x, targets = x.reshape(-1, x.shape[-1]), targets.reshape(-1)
    total = torch.zeros((), device=x.device, dtype=torch.float32)
    for xs, ts in zip(x.split(chunk_tokens), targets.split(chunk_tokens), strict=True):
        total = total + checkpoint(_chunk_loss_sum, xs, weight, ts, vocab_size,
                                   use_reentrant=False)
    return total if reduction == "sum" else total / (targets != -1).sum().clamp(min=1)


# ----------------------------------------------------------------------------- the model

class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.attention == "flash" and flash_attn_func is None:
            raise ConfigError("attention='flash' needs the flash-attn package "
                              "(uv sync --extra flash, on a CUDA machine)")
        self.config = config
        vocab = config.padded_vocab_size
        self.tok_emb = Embedding(vocab, config.n_embd)
        self.pos_emb = Embedding(config.block_size, config.n_embd) \
            if config.pos_emb == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(  # with gradient checkpointing: every k-th block
            Block(config, config.gradient_checkpointing and i % config.checkpoint_every == 0)
            for i in range(config.n_layer))
        self.norm_f = make_norm(config)
        # A tied head reuses the embedding matrix in forward rather than sharing a Parameter,
        # which stays correct through meta-device init, FSDP sharding and state dicts.
        self.lm_head = None if config.tie_embeddings else \
            nn.Linear(config.n_embd, vocab, bias=False)
        self.init_buffers()
        if not self.tok_emb.weight.is_meta:  # meta: sizing only, or materialised and loaded later
            self.reset_parameters()

    def init_buffers(self) -> None:
        """Compute the RoPE tables (not saved in checkpoints). Call again after materialising a
        model built on the meta device, on the device the model now lives on."""
        if self.config.pos_emb == "rope":
            cos, sin = rope_tables(self.config.head_dim, self.config.block_size,
                                   self.config.rope_theta)
            device = self.tok_emb.weight.device
            self.register_buffer("rope_cos", cos.to(device), persistent=False)
            self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def reset_parameters(self) -> None:
        """GPT-2 initialisation: N(0, init_std) for matrices, zero biases, unit norms, and the
        projections that write into the residual stream scaled by 1/sqrt(2 * n_layer) so the
        stream's variance does not grow with depth."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.mlp.down_proj):
                nn.init.normal_(proj.weight, mean=0.0, std=std / math.sqrt(2 * self.config.n_layer))
        # Padding rows of the vocabulary get no gradient, so zeros stay zeros: exports drop them
        # and imports restore them exactly.
        with torch.no_grad():
            for head in (self.tok_emb, self.lm_head):
                if head is not None:
                    head.weight[self.config.vocab_size:] = 0.0

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                start: int = 0, reduction: str = "mean") -> torch.Tensor:
        """idx: (B, T) token ids at positions start..start+T.

        Returns logits (B, T, vocab_size), or with targets the cross-entropy over the targets
        that are not -1: their mean, or with reduction="sum" their sum (the trainer divides the
        sums of all micro-batches by their count of targets, so ignored ones weigh nothing).
        """
        T = idx.shape[1]
        if start + T > self.config.block_size:
            raise ValueError(f"positions up to {start + T} exceed block_size "
                             f"{self.config.block_size}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start, start + T, device=idx.device))
        x = self.drop(x)
        cos = sin = None
        if self.config.pos_emb == "rope":
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        for block in self.blocks:
            x = block(x, cos, sin, start)
        x = self.norm_f(x)
        head = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        if targets is not None and targets.numel() > LOSS_CHUNK_TOKENS:
            return chunked_cross_entropy(x, head, targets, self.config.vocab_size,
                                         reduction=reduction)
        logits = F.linear(x, head)[..., :self.config.vocab_size]  # padding ids: never predicted
        if targets is None:
            return logits
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=-1, reduction=reduction)

    # --------------------------------------------------------------------- generation support

    def setup_kv_cache(self, batch_size: int, max_len: int | None = None,
                       dtype: torch.dtype | None = None) -> None:
        """Give every attention layer a cache for batch_size sequences of up to max_len tokens,
        by default in the dtype keys and values come in: autocast's where it is on (an fp32
        cache would be cast whole to bf16 at every decoded token)."""
        param = self.tok_emb.weight
        if dtype is None and torch.is_autocast_enabled(param.device.type):
            dtype = torch.get_autocast_dtype(param.device.type)
        max_len = max_len or self.config.block_size
        for block in self.blocks:
            block.attn.kv_cache = KVCache(batch_size, self.config.n_kv_head, max_len,
                                          self.config.head_dim, dtype or param.dtype, param.device)

    def clear_kv_cache(self) -> None:
        for block in self.blocks:
            block.attn.kv_cache = None

    # --------------------------------------------------------------------- accounting

    def num_params(self) -> int:
        """All parameters (a tied head is the embedding, so it adds none)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token (forward + backward), as in PaLM's appendix B:
        6 per weight of every matmul (the head included, even when tied), plus 12 * n_layer *
        n_embd * seq_len for the attention scores and the weighted sum of values."""
        seq_len = seq_len or self.config.block_size
        matmul_weights = sum(m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))
        if self.lm_head is None:
            matmul_weights += self.tok_emb.weight.numel()
        return 6 * matmul_weights + 12 * self.config.n_layer * self.config.n_embd * seq_len

    def recomputed_flops_per_token(self, tokens_per_micro_batch: int,
                                   seq_len: int | None = None) -> int:
        """FLOPs done again in backward, per token: the forward (matmuls and attention) of each
        fully checkpointed block, and the head's matmul when the loss is computed in chunks.
        flops_per_token + this = what the hardware does (for HFU); MFU counts only the first."""
        config, seq_len = self.config, seq_len or self.config.block_size
        recomputed = 0
        if config.gradient_checkpointing and not config.checkpoint_selective:
            block_weights = sum(m.weight.numel() for m in self.blocks[0].modules()
                                if isinstance(m, nn.Linear))
            checkpointed = len(range(0, config.n_layer, config.checkpoint_every))
            recomputed += checkpointed * (2 * block_weights + 4 * config.n_embd * seq_len)
        if tokens_per_micro_batch > LOSS_CHUNK_TOKENS:
            recomputed += 2 * config.n_embd * config.padded_vocab_size
        return recomputed
