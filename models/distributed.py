"""Data parallelism with torchrun: DDP (replicated model) or FSDP2 (sharded model).

Single-process runs go through the same functions with world_size 1, so the training loop has one
shape. torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; NCCL is used on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from transformer_setup.cli import UserError
from transformer_setup.transformer import GPT


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup(device: torch.device) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (if any); each rank gets its own GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None)
    return Distributed(rank, local_rank, world_size), device


def teardown(d: Distributed, clean: bool = True) -> None:
    """Leave together: a rank that destroys its group while another is still sending can abort
    the process (gloo's "terminate called without an active exception"). After a failure the
    others may be gone: no barrier then, and nothing raised over the first error."""
    if d.enabled and dist.is_initialized():
        try:
            if clean:
                dist.barrier()
        finally:
            try:
                dist.destroy_process_group()
            except Exception:
                if clean:
                    raise


def wrap(model: GPT, d: Distributed, device: torch.device, fsdp: bool) -> torch.nn.Module:
    """DDP around the model, or FSDP2 shards of each block and of the whole."""
    if not d.enabled:
        return model
    if fsdp:
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def no_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip DDP's gradient all-reduce on micro-steps before the last of an accumulation."""
    if not sync and isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def mean(value: torch.Tensor, d: Distributed) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.AVG if dist.get_backend() == "nccl"
                        else dist.ReduceOp.SUM)
        if dist.get_backend() != "nccl":  # gloo has no AVG
            value /= d.world_size
    return value


def total(value: torch.Tensor, d: Distributed) -> torch.Tensor:
    if d.enabled:
        value = value.clone()
        dist.all_reduce(value)
    return value


def any_rank(flag: bool, d: Distributed, device: torch.device) -> bool:
    """True on every rank if it is true on one (so all ranks stop together)."""
    if not d.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather(obj: Any, d: Distributed) -> list[Any]:
    """Every rank's obj, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def on_main(build: Callable[[], Any], d: Distributed) -> Any:
    """build() on rank 0, its result on every rank: one process reads what all need (a Hub
    listing, the held-out text). An error on rank 0 is raised on every rank."""
    if not d.enabled:
        return build()
    payload: list[Any] = [None]
    failure = None
    if d.is_main:
        try:
            payload = [("ok", build())]
        except Exception as err:
            failure = err
            payload = [("error", err if isinstance(err, UserError) else
                        UserError(f"rank 0 failed ({type(err).__name__}: {err})"))]
    dist.broadcast_object_list(payload, src=0)
    if failure is not None:
        raise failure
    kind, value = payload[0]
    if kind == "error":
        raise value
    return value


def full_state(model: GPT, optimizer: torch.optim.Optimizer | None, fsdp: bool
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Unsharded model and optimizer state (on CPU for FSDP), the same as one process would save.
    Without an optimizer, its state is left alone: under FSDP, asking for the state of an
    optimizer that has not stepped yet makes it take a zero step to create it (which counts)."""
    if not fsdp:
        return model.state_dict(), optimizer.state_dict() if optimizer else None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=options),
            get_optimizer_state_dict(model, optimizer, options=options) if optimizer else None)


def load_full_state(model: GPT, optimizer: torch.optim.Optimizer, model_state: dict,
                    optimizer_state: dict, fsdp: bool) -> None:
    if not fsdp:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_state, options=options)
    set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)


