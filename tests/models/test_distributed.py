"""Gradients cross the network once per optimizer step, eager or compiled, DDP or FSDP2: the
collectives counted on 2 gloo processes at accumulation 4, and the weights against one process
at the same global batch."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import distributed
from models.distributed import Distributed
from models.trainer import is_lost_peer, optimizer_step
from transformer_setup.params import ModelConfig
from transformer_setup.transformer import GPT

WORLD, ACCUMULATION, STEPS, ROWS = 2, 4, 2, 2  # ROWS per micro-batch per rank
CONFIG = ModelConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
# Dynamo and AOTAutograd capture the graphs as the trainer's inductor would (the wrappers see
# the same graphs); aot_eager only skips generating kernels, minutes on a 2-core CPU.
BACKEND = "aot_eager"
CASES = [("ddp", False), ("ddp", True), ("fsdp", False), ("fsdp", True)]
# FSDP2 compiles each block on its own: selective checkpointing must live inside those graphs
SELECTIVE = dict(gradient_checkpointing=True, checkpoint_selective=True)


def global_batch(step: int) -> torch.Tensor:
    """ACCUMULATION x WORLD x ROWS rows of block_size + 1 tokens."""
    generator = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, CONFIG.vocab_size, (ACCUMULATION, WORLD, ROWS, CONFIG.block_size + 1),
                         generator=generator)


def micro_batches(data: torch.Tensor, rank: int | None) -> list[tuple[torch.Tensor, ...]]:
    """This rank's micro-batches, or (rank None) one process's: both ranks' rows together."""
    rows = data[:, rank] if rank is not None else data.flatten(1, 2)
    return [(block[:, :-1], block[:, 1:]) for block in rows]


class Collectives:
    """Counts gradient reductions (DDP buckets through a comm hook, FSDP2 reduce-scatters) and
    FSDP2 all-gathers, with their bytes and dtypes, by wrapping torch.distributed's calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, torch.dtype, int]] = []  # kind, bytes, dtype, what

    def record(self, kind: str, tensor: torch.Tensor, what: int = 0) -> None:
        self.calls.append((kind, tensor.numel() * tensor.element_size(), tensor.dtype, what))

    def ddp_hook(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.record("all_reduce", bucket.buffer(), sum(p.numel() for p in bucket.parameters()))
        return allreduce_hook(state, bucket)

    @contextlib.contextmanager
    def fsdp(self):
        originals = dist.reduce_scatter_single, dist.all_gather_single

        def reduce_scatter(output, input, *args, **kwargs):
            self.record("reduce_scatter", input)
            return originals[0](output, input, *args, **kwargs)

        def all_gather(output, input, *args, **kwargs):
            self.record("all_gather", output)
            return originals[1](output, input, *args, **kwargs)

        dist.reduce_scatter_single, dist.all_gather_single = reduce_scatter, all_gather
        try:
            yield
        finally:
            dist.reduce_scatter_single, dist.all_gather_single = originals


def run_case(d: Distributed, mode: str, compile_model: bool, dtype: torch.dtype,
             **fields) -> dict:
    """STEPS optimizer steps through the trainer's wrap, compile and optimizer_step."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    raw = GPT(dataclasses.replace(CONFIG, **fields))
    model = distributed.wrap(raw, d, torch.device("cpu"), mode == "fsdp", dtype,
                             BACKEND if compile_model else None)
    counter = Collectives()
    if mode == "ddp":
        distributed.unwrapped(model).register_comm_hook(None, counter.ddp_hook)
    optimizer = torch.optim.SGD(raw.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ctx = torch.autocast("cpu", dtype) if dtype != torch.float32 else contextlib.nullcontext()
    per_step = []
    with counter.fsdp() if mode == "fsdp" else contextlib.nullcontext():
        for step in range(STEPS):
            before = len(counter.calls)
            optimizer_step(model, optimizer, scaler, micro_batches(global_batch(step), d.rank),
                           ctx, 1.0, d)
            per_step.append(counter.calls[before:])
    state = distributed.full_state(raw, None, mode == "fsdp")[0]
    storages = None
    if mode == "ddp":  # where one more backward leaves the gradients
        x, y = micro_batches(global_batch(0), d.rank)[0]
        model(x, y).backward()
        storages = len({p.grad.untyped_storage().data_ptr() for p in raw.parameters()})
    return {"per_step": per_step, "state": state, "grad_storages": storages}


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    d = Distributed(rank, rank, WORLD)
    results = {}
    try:
        for mode, compile_model in CASES:
            start = time.perf_counter()
            results[(mode, compile_model)] = run_case(d, mode, compile_model, torch.float32)
            results[(mode, compile_model)]["seconds"] = time.perf_counter() - start
        results[("fsdp", "bf16")] = run_case(d, "fsdp", False, torch.bfloat16)
        results[("fsdp", "selective")] = run_case(d, "fsdp", True, torch.float32, **SELECTIVE)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(results, out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("sync") / "results.pt"
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD)
    return torch.load(out, weights_only=False)


@pytest.fixture(scope="module")
def one_process() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for step in range(STEPS):
        optimizer_step(model, optimizer, scaler, micro_batches(global_batch(step), None),
                       contextlib.nullcontext(), 1.0)
    return model.state_dict()


@pytest.mark.parametrize("mode,compile_model", CASES)
def test_one_gradient_reduction_per_optimizer_step(two_ranks, mode, compile_model):
    result = two_ranks[(mode, compile_model)]
    n_params = GPT(CONFIG).num_params()
    for calls in result["per_step"]:
        if mode == "ddp":  # each bucket once: the buckets' parameters add up to the model's
            reduced = [what for kind, _, _, what in calls if kind == "all_reduce"]
            assert sum(reduced) == n_params, calls
        else:  # one reduce-scatter per FSDP unit (each block, the root), of a shard of it
            reduced = [kind for kind, _, _, _ in calls if kind == "reduce_scatter"]
            assert len(reduced) == CONFIG.n_layer + 1, calls
    print(f"{mode} compiled={compile_model}: {result['seconds']:.1f} s on rank 0")


@pytest.mark.parametrize("mode,compile_model", CASES + [("fsdp", "selective")])
def test_weights_equal_one_process_at_the_same_global_batch(two_ranks, one_process, mode,
                                                            compile_model):
    reference = one_process
    ours = two_ranks[(mode, compile_model)]["state"]
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_ddp_gradients_are_views_of_its_buckets_not_a_second_copy(two_ranks):
    # the tiny model's gradients fit one bucket: one storage for all of them
    assert two_ranks[("ddp", False)]["grad_storages"] == 1
    assert two_ranks[("ddp", True)]["grad_storages"] == 1


def test_fsdp_under_bf16_gathers_bf16_weights_and_reduces_fp32_gradients(two_ranks):
    calls = two_ranks[("fsdp", "bf16")]["per_step"][0]
    gathered = {dtype for kind, _, dtype, _ in calls if kind == "all_gather"}
    reduced = {dtype for kind, _, dtype, _ in calls if kind == "reduce_scatter"}
    assert gathered == {torch.bfloat16} and reduced == {torch.float32}


def stuck_peer(rank: int, port: int, reports: bool, out: str) -> None:
    """Rank 1 fails (reporting it, or silently) and hangs; rank 0 waits in a collective."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    d, _ = distributed.setup(torch.device("cpu"), timeout_s=1.0)
    if rank == 1:
        if reports:
            distributed.report_failure(d, ValueError("CUDA out of memory on this rank\nmore"))
        time.sleep(3.5)  # stuck: not in the collective, not gone
    else:
        start = time.perf_counter()
        try:
            distributed.mean(torch.ones(1), d)
            line = "no error"
        except Exception as err:
            line = distributed.peer_failure(d, err) if is_lost_peer(err) else repr(err)
        with open(out, "w") as f:
            f.write(f"{time.perf_counter() - start:.1f}\n{line}")
    distributed.teardown(d, clean=False)


@pytest.mark.parametrize("reports", [True, False])
def test_a_stuck_rank_times_out_in_one_line_naming_it(tmp_path, reports):
    out = tmp_path / "line.txt"
    mp.spawn(stuck_peer, args=(free_port(), reports, str(out)), nprocs=WORLD)
    seconds, line = out.read_text().split("\n", 1)
    assert float(seconds) < 3  # the process group's timeout, not NCCL's 10 minutes
    if reports:
        assert line == ("rank 0: another process of this run stopped: rank 1 failed "
                        "(ValueError: CUDA out of memory on this rank); stopping too")
    else:
        assert line.startswith("rank 0: another process of this run stopped, is stuck, or was "
                               "slower than --collective_timeout_s (") \
            and "none reported an error" in line and "\n" not in line
