"""Data parallelism with torchrun: DDP (replicated model) or FSDP2 (sharded model).

Single-process runs go through the same functions with world_size 1, so the training loop has one
shape. torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; NCCL is used on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
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


def setup(device: torch.device, timeout_s: float = 300.0) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (if any); each rank gets its own GPU. A
    collective that waits timeout_s for a rank fails (NCCL's default would be 10 minutes of
    every GPU idle, gloo's 30)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(), device
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                            device_id=device if device.type == "cuda" else None,
                            timeout=timedelta(seconds=timeout_s))
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


def wrap(model: GPT, d: Distributed, device: torch.device, fsdp: bool,
         dtype: torch.dtype = torch.float32, backend: str | None = None) -> torch.nn.Module:
    """The module the loop calls: the model, under DDP or FSDP2 shards when there are several
    processes, compiled with torch.compile's `backend` (None: eager). DDP stays outside the
    compiled graph, so that no_sync and its bucket hooks work as in eager mode (Dynamo's
    DDPOptimizer splits the graph at bucket boundaries for that). Under FSDP2 each block is
    compiled on its own, before sharding: its hooks (all-gather, reduce-scatter) run between the
    blocks' graphs; embeddings, final norm and loss run eagerly."""
    if fsdp and d.enabled:
        if backend:  # before sharding, as torchtitan does
            for block in model.blocks:
                block.compile(backend=backend)
        return shard(model, dtype)
    if d.enabled:
        # gradient_as_bucket_view: the gradients live in DDP's buckets instead of beside them (a
        # second fp32 copy: 4.2 GB for the 1b preset). broadcast_buffers off: the only buffers
        # are the RoPE tables, computed alike on every rank; broadcasting them would be a
        # collective in every forward.
        model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            bucket_cap_mb=bucket_megabytes(model), gradient_as_bucket_view=True,
            **NO_BUFFER_SYNC)
    return torch.compile(model, backend=backend) if backend else model


# Buffers are not broadcast in forward (torch 2.15 renamed the argument; syncing them once at
# start, as the new one does, is harmless).
NO_BUFFER_SYNC = {"forward_sync_buffers": False} if "forward_sync_buffers" in \
    inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False}

DDP_PIECES = 8  # gradient buckets per model, hence pieces of its compiled graph


def bucket_megabytes(model: torch.nn.Module) -> float:
    """DDP's bucket size: an eighth of the gradients (at least DDP's default 25 MB). Under
    torch.compile each bucket boundary splits the graph (Dynamo's DDPOptimizer), so that a
    bucket's all-reduce runs while the backward of the rest goes on: the default 25 MB cuts the
    1b preset's 4.2 GB of gradients into 74 buckets and its graph into 74 pieces. Eight keep
    the graph in a few large pieces, and leave only the last eighth's all-reduce after the
    backward (~0.5 GB for 1b: ~2 ms over NVLink, ~20 ms over a 400 Gb/s network)."""
    grad_bytes = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return max(25.0, grad_bytes / DDP_PIECES / 2**20)


def shard(model: GPT, dtype: torch.dtype) -> GPT:
    """FSDP2: each block, then the whole (embeddings, final norm, head) a unit of its own.
    Under bf16, weights are gathered in bf16 and gradients reduced in fp32: half the bytes of
    every all-gather, and sums over ranks without bf16 rounding."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if dtype == torch.bfloat16 else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The module torch.compile wraps (OptimizedModule keeps it as _orig_mod)."""
    return getattr(model, "_orig_mod", model)


def no_sync(model: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """Skip the gradient reduction on micro-steps before the last of an accumulation: DDP's
    all-reduce, FSDP2's reduce-scatter (gradients then accumulate unsharded). Compiled or not."""
    module = unwrapped(model)
    if not sync and isinstance(module, DistributedDataParallel):
        return module.no_sync()
    if hasattr(module, "set_requires_gradient_sync"):  # an FSDP2 module
        return fsdp_sync(module, sync)
    return contextlib.nullcontext()


@contextlib.contextmanager
def fsdp_sync(module: torch.nn.Module, sync: bool):
    module.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def failure_key(rank: int) -> str:
    """Where a rank leaves its error in the job's store (per torchrun restart)."""
    return f"gpt-pretrain/failed/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{rank}"


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def report_failure(d: Distributed, err: BaseException) -> None:
    """Leave this rank's error in the rendezvous store, which outlives the collectives, so that
    the ranks waiting for this one can say which rank failed and why."""
    if not (d.enabled and dist.is_initialized()):
        return
    try:
        dist.distributed_c10d._get_default_store().set(failure_key(d.rank), one_line(err))
    except Exception:  # the store is gone too: the others will say no rank reported
        pass


def failed_ranks(d: Distributed) -> dict[int, str]:
    """The other ranks that reported an error, with it."""
    try:
        store = dist.distributed_c10d._get_default_store()
        return {rank: store.get(failure_key(rank)).decode()
                for rank in range(d.world_size)
                if rank != d.rank and store.check([failure_key(rank)])}
    except Exception:
        return {}


def peer_failure(d: Distributed, err: BaseException) -> str:
    """One line for a rank whose collective failed or timed out because of another rank."""
    failed = failed_ranks(d)
    if failed:
        named = "; ".join(f"rank {rank} failed ({why})" for rank, why in sorted(failed.items()))
        return f"rank {d.rank}: another process of this run stopped: {named}; stopping too"
    return (f"rank {d.rank}: another process of this run stopped, is stuck, or was slower than "
            f"--collective_timeout_s ({one_line(err)}); none reported an error (killed or hung: "
            "torchrun's report names its exit code; slow: raise --collective_timeout_s); "
            "stopping too")


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


