"""The optimizers and the learning-rate schedule.

`--optimizer adamw` (the seed's recipe): AdamW with decoupled weight decay on matrices
(embeddings included), none on norms and biases.

`--optimizer muon`: the hidden matrices of the blocks (attention and MLP weights) are trained
with Muon (torch.optim.Muon: momentum orthogonalised by a Newton-Schulz iteration); everything
else (embeddings, the head, norms, biases) stays with AdamW. Muon scales each matrix's update
with Moonshot's `match_rms_adamw` rule (0.2 x sqrt(max(fan_in, fan_out))), so that its update
has AdamW's size and the same learning rate and weight decay carry over between the two and
across shapes (Liu et al., "Muon is Scalable for LLM Training", 2025); --muon_lr sets Muon's
peak on its own. Both follow the same warmup and cosine schedule. On a CPU the Newton-Schulz
iteration runs in float32 (see `Muon`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from transformer_setup.params import TrainConfig


def muon_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The 2-D weights inside the blocks: what Muon trains."""
    return [(name, p) for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and name.startswith("blocks.")]


def orthogonalize(update: torch.Tensor, coefficients: tuple[float, float, float],
                  steps: int, eps: float) -> torch.Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon, in float32: it maps a matrix to
    one with the same singular vectors and singular values near 1."""
    a, b, c = coefficients
    x = update.float()
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T  # iterate on the smaller Gram matrix
    x = x / x.norm().clamp(min=eps)  # spectral norm at most 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


def update_scale(rule: str | None, rows: int, cols: int) -> float:
    """torch.optim.Muon's two learning-rate adjustments by matrix shape."""
    if rule == "match_rms_adamw":  # Moonshot: an update of AdamW's typical size
        return 0.2 * math.sqrt(max(rows, cols))
    return math.sqrt(max(1.0, rows / cols))  # "original" (Keller Jordan's)


class Muon(torch.optim.Muon):
    """torch.optim.Muon with the Newton-Schulz iteration in float32 on a CPU. torch runs it in
    bfloat16, which CPUs without bf16 instructions emulate: one 384x384 matrix took 0.70 s
    there against 0.03 s in float32 (2-core AMD EPYC without AVX-512), which made a
    10M-parameter model's step a minute long. On GPUs torch's own step runs unchanged. Same
    state, same update rule (momentum, Nesterov, decoupled decay, the shape scale); only the
    precision of the iteration differs."""

    @torch.no_grad()
    def step(self, closure=None):
        if any(p.device.type != "cpu" for g in self.param_groups for p in g["params"]):
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, buffers = [], [], []
            self._init_group(group, params, grads, buffers)
            momentum = group["momentum"]
            for param, grad, buffer in zip(params, grads, buffers):
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"],
                                       group["eps"])
                param.mul_(1 - group["lr"] * group["weight_decay"])
                scale = update_scale(group["adjust_lr_fn"], *param.shape)
                param.add_(update.to(param.dtype), alpha=-group["lr"] * scale)
        return loss


class Optimizers:
    """Several optimizers stepped as one: the loop, the gradient scaler and checkpoints see
    param_groups, step, zero_grad and one state dict (keyed by optimizer name)."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]) -> None:
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [group for opt in self.optimizers.values() for group in opt.param_groups]

    def step(self, closure=None) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state for {sorted(state)}, not {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.Optimizer | Optimizers:
    """Matrices (linear weights, embeddings) are decayed; norms and biases are not, since
    shrinking a gain or an offset toward zero is not regularisation."""
    muon = {id(p) for _, p in muon_parameters(model)} if config.optimizer == "muon" else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in muon]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2),
                              fused=device.type == "cuda")
    if not muon:
        return adamw
    peak = config.muon_lr or config.learning_rate
    matrices = [p for _, p in muon_parameters(model)]
    muon_opt = Muon(
        [{"params": matrices, "weight_decay": config.weight_decay,
          "lr_scale": peak / config.learning_rate}],
        lr=peak, momentum=config.muon_momentum, adjust_lr_fn="match_rms_adamw")
    return Optimizers({"adamw": adamw, "muon": muon_opt})


def apply_hyperparameters(optimizer: torch.optim.Optimizer | Optimizers,
                          config: TrainConfig) -> None:
    """Betas, momentum and weight decay from the config, over what a loaded optimizer state
    carried (the learning rate is set every step). AdamW's group 0 holds the matrices, as
    make_optimizer builds it."""
    parts = optimizer.optimizers if isinstance(optimizer, Optimizers) else {"adamw": optimizer}
    for index, group in enumerate(parts["adamw"].param_groups):
        group["betas"] = (config.beta1, config.beta2)
        group["weight_decay"] = config.weight_decay if index == 0 else 0.0
    for group in parts["muon"].param_groups if "muon" in parts else []:
        group["momentum"] = config.muon_momentum
        group["weight_decay"] = config.weight_decay
        group["lr_scale"] = (config.muon_lr or config.learning_rate) / config.learning_rate


def set_learning_rate(optimizer: torch.optim.Optimizer | Optimizers, lr: float) -> None:
    """The scheduled rate, times each group's own scale (Muon's peak over AdamW's)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def learning_rate_at(step: int, config: TrainConfig) -> float:
    """The rate of optimizer step `step` (counted from 0). Linear warmup reaches the peak once,
    at step warmup_iters - 1 (step 0 without warmup); cosine decay from there reaches min_lr at
    step lr_decay_iters - 1, the last step of a run by default; min_lr after it."""
    peak_step = max(config.warmup_iters - 1, 0)
    last = config.lr_decay_iters - 1  # the last step of the decay: min_lr
    if step < config.warmup_iters:
        return config.learning_rate * (step + 1) / config.warmup_iters
    if step <= peak_step:  # no warmup: step 0 is at the peak
        return config.learning_rate
    if step >= last:
        return config.min_lr
    progress = (step - peak_step) / (last - peak_step)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)


def coherent_schedule(config: TrainConfig) -> tuple[TrainConfig, str | None]:
    """A warmup longer than the decay after it (often a preset's warmup under a shorter
    --max_iters) is shortened to half of lr_decay_iters, the longest that is not, with a note
    to log: the run still reaches the peak once and decays smoothly to min_lr, instead of never
    decaying or dropping from the peak to min_lr in one step."""
    warmup, decay = config.warmup_iters, config.lr_decay_iters
    if warmup <= decay - warmup:
        return config, None
    shorter = decay // 2
    return dataclasses.replace(config, warmup_iters=shorter), (
        f"warmup_iters {warmup} is longer than the decay after it (lr_decay_iters {decay}): "
        f"shortened to {shorter} steps, half of lr_decay_iters")
