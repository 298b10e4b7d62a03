"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule."""

from __future__ import annotations

import math

import torch

from transformer_setup.params import TrainConfig


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.AdamW:
    """Matrices (linear weights, embeddings) are decayed; norms and biases are not, since
    shrinking a gain or an offset toward zero is not regularisation."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                             fused=device.type == "cuda")


def apply_hyperparameters(optimizer: torch.optim.AdamW, config: TrainConfig) -> None:
    """Betas and weight decay from the config, over what a loaded optimizer state carried (the
    learning rate is set every step). Group 0 holds the matrices, as make_optimizer builds it."""
    for index, group in enumerate(optimizer.param_groups):
        group["betas"] = (config.beta1, config.beta2)
        group["weight_decay"] = config.weight_decay if index == 0 else 0.0


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """Linear warmup to the peak over warmup_iters, cosine decay to min_lr at lr_decay_iters,
    then min_lr. `step` counts optimizer steps from 0."""
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / config.warmup_iters
    if step >= config.lr_decay_iters:
        return config.min_lr
    progress = (step - config.warmup_iters) / max(1, config.lr_decay_iters - config.warmup_iters)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)
