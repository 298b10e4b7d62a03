"""The training loop behind `python models/gpt.py` (and `torchrun ... models/gpt.py`).

One optimizer step: `accumulation_steps` micro-batches, each loss divided by that number so the
gradients add up to the mean over the whole batch; then gradient clipping and AdamW at the
scheduled learning rate. Every `eval_interval` steps the model is scored on fixed validation
batches; `latest.pt` holds everything needed to continue exactly (weights, optimizer, scaler,
step, data position, RNG states), `best_model.pt` the weights with the best validation loss.

Faults: a step whose loss or gradient norm is not finite is skipped with a warning (with fp16 the
gradient scaler handles overflow itself); `max_bad_steps` in a row stop the run, leaving the last
good checkpoint. Ctrl-C or SIGTERM (preemption) finishes the current step, writes `latest.pt`
and exits cleanly.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data.loader import (
    PreparedLoader,
    StreamingLoader,
    merge_states,
    take_batches,
    validation_batches,
)
from data.shards import is_prepared
from data.sources import DataError, get_source
from models import distributed
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.device import autocast, dtype_name, peak_flops, resolve_device, resolve_dtype
from models.distributed import Distributed
from models.generate import generate_ids
from models.optim import learning_rate_at, make_optimizer
from tokenization.tokenizer import Tokenizer
from transformer_setup.cli import UserError
from transformer_setup.params import ModelConfig, TrainConfig
from transformer_setup.transformer import GPT


class TrainingError(UserError):
    pass


SINGLE_PROCESS = Distributed()


# ----------------------------------------------------------------------------- one step

@dataclass
class StepResult:
    loss: float  # mean over the global batch (all micro-batches, all ranks)
    grad_norm: float  # before clipping
    skipped: bool  # not finite: no update was made


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, micro_batches: list[tuple[torch.Tensor, ...]],
                   ctx: AbstractContextManager, grad_clip: float,
                   d: Distributed = SINGLE_PROCESS) -> StepResult:
    """Forward and backward over the micro-batches, then one update (or a skip)."""
    n = len(micro_batches)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for i, (x, y) in enumerate(micro_batches):
        with distributed.no_sync(model, sync=i == n - 1):
            with ctx:
                loss = model(x, y) / n
            scaler.scale(loss).backward()
        loss_sum += loss.detach()
    loss_sum = distributed.mean(loss_sum, d)  # the same value, hence the same decision, on all
    scaler.unscale_(optimizer)  # true gradients, for the norm and clipping
    params = [p for p in model.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else math.inf)
    grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
    loss_value = loss_sum.item()
    overflow_is_normal = scaler.is_enabled()  # fp16: the scaler skips and lowers its scale
    finite = math.isfinite(loss_value) and (math.isfinite(grad_norm) or overflow_is_normal)
    if finite:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, grad_norm, skipped=not finite)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], ctx,
             byte_lengths: torch.Tensor, d: Distributed = SINGLE_PROCESS) -> tuple[float, float]:
    """Mean loss (nats per token) and bits per byte over fixed batches; each rank scores its
    share of every batch's rows, so the result does not depend on the number of processes."""
    model.eval()
    device = batches[0][0].device
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    for x, y in batches:
        rows = x.shape[0] // d.world_size
        x, y = x[d.rank * rows:(d.rank + 1) * rows], y[d.rank * rows:(d.rank + 1) * rows]
        with ctx:
            loss = model(x, y).double()
        sums += torch.stack([loss * y.numel(), torch.tensor(float(y.numel()), device=device),
                             byte_lengths[y.cpu()].sum().to(device, torch.float64)])
    model.train()
    nats, tokens, n_bytes = distributed.total(sums, d).tolist()
    return nats / tokens, nats / math.log(2) / max(n_bytes, 1.0)


# ----------------------------------------------------------------------------- data

def make_loaders(tc: TrainConfig, tokenizer: Tokenizer, block_size: int, accumulation: int,
                 device: torch.device, d: Distributed = SINGLE_PROCESS):
    """The training loader (this rank's rows of every global batch) and the fixed validation
    batches (global-batch-sized, the same text at any number of processes). With --val_data,
    training reads all of --data and validation all of --val_data (or its prepared val split)."""
    val_rows = tc.batch_size * d.world_size
    train_split = "all" if tc.val_data else "train"
    if is_prepared(tc.data):
        train = PreparedLoader.from_folder(
            tc.data, "train", tokenizer, block_size, tc.batch_size, accumulation=accumulation,
            rank=d.rank, world_size=d.world_size, seed=tc.seed, device=device)
        description = f"prepared shards in {tc.data}"
    else:
        source = get_source(tc.data, tc.text_field, tc.data_config, tc.min_int_score)
        train = StreamingLoader(source, tokenizer, block_size, tc.batch_size, train_split,
                                accumulation, d.rank, d.world_size, tc.data_workers, tc.seed,
                                device)
        description = (f"{source.name}, {len(train.units):,} units streamed into "
                       f"{train.rows} lanes ({tc.data_workers} worker processes)")
        if len(train.units) < train.rows:
            description += ("; warning: fewer units than rows per step, so some rows repeat "
                            "text (use more data or a smaller global batch)")
    val_spec = tc.val_data or tc.data
    if is_prepared(val_spec):
        val = PreparedLoader.from_folder(val_spec, "val", tokenizer, block_size, val_rows,
                                         device=device, shuffle=False, repeat=False)
        val_batches = take_batches(val, tc.eval_iters)
    else:
        source = get_source(val_spec, tc.text_field, tc.data_config, tc.min_int_score)
        val_batches = validation_batches(source, "all" if tc.val_data else "val", tokenizer,
                                         block_size, val_rows, tc.eval_iters, device)
    if not val_batches:
        train.close()
        raise DataError(f"the validation text of {val_spec} is less than one batch "
                        f"({val_rows} x {block_size + 1} tokens); use more data or a smaller "
                        "--batch_size or --block_size")
    return train, val_batches, description


# ----------------------------------------------------------------------------- the run

def resolve_accumulation(tc: TrainConfig, block_size: int, world_size: int) -> int:
    """accumulation_steps, or derived from global_batch_tokens when that is given."""
    if tc.global_batch_tokens is None:
        return tc.accumulation_steps
    per_step = tc.batch_size * block_size * world_size
    if tc.global_batch_tokens % per_step:
        raise TrainingError(f"global_batch_tokens {tc.global_batch_tokens:,} is not a multiple "
                            f"of batch_size x block_size x processes = {per_step:,}")
    return tc.global_batch_tokens // per_step


def check_resumable(ckpt: dict[str, Any], model_config: ModelConfig, tokenizer: Tokenizer,
                    tc: TrainConfig) -> None:
    """Resuming with another model shape or tokenizer would silently train something else."""
    saved = ckpt["model_config"]
    ignored = {"attention", "gradient_checkpointing", "dropout"}  # do not change the weights
    for key, value in dataclasses.asdict(model_config).items():
        if key not in ignored and saved.get(key) != value:
            raise CheckpointError(f"cannot resume: {key} is {saved.get(key)!r} in the "
                                  f"checkpoint but {value!r} now")
    if ckpt["tokenizer"] != tokenizer.spec():
        raise CheckpointError(f"cannot resume: the checkpoint was trained with tokenizer "
                              f"{ckpt['tokenizer']['name']!r}, not {tokenizer.name!r}")
    if bool(ckpt["train_config"].get("fsdp")) != tc.fsdp:
        raise CheckpointError("cannot resume: --fsdp must match the run that wrote the checkpoint")
    if "optimizer" not in ckpt:
        raise CheckpointError("cannot resume from a weights-only checkpoint (best_model.pt); "
                              "use latest.pt")


PROFILE_SKIP = 2  # steps to wait and warm up before recording (compilation, allocator)


def start_profiler(steps: int, folder: Path, device: torch.device):
    """torch.profiler over `steps` steps after PROFILE_SKIP, as a trace TensorBoard shows."""
    from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    profiler = profile(activities=activities, record_shapes=True, profile_memory=True,
                       schedule=schedule(wait=1, warmup=PROFILE_SKIP - 1, active=steps, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(folder)))
    profiler.start()
    return profiler


class StopRequest:
    """Ctrl-C or SIGTERM ask the loop to stop after the current step (and save)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle)
                          for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.requested:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class RunLog:
    """Log lines to the terminal (above the progress bar) and to OUT_DIR/train.log."""

    def __init__(self, path: Path | None) -> None:
        self.file = open(path, "a", encoding="utf-8") if path else None

    def __call__(self, message: str) -> None:
        if self.file is None:
            return
        tqdm.write(message)
        self.file.write(message + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()


def prepare_out_dir(out_dir: Path) -> None:
    """Fail before training, not after an hour, when checkpoints could not be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output folder {out_dir} is not writable ({err.strerror})") from None


def train(model_config: ModelConfig, tc: TrainConfig, tokenizer: Tokenizer) -> dict[str, float]:
    device = resolve_device(tc.device)
    d, device = distributed.setup(device)
    try:
        return _train(model_config, tc, tokenizer, device, d)
    finally:
        distributed.teardown(d)


def _train(model_config: ModelConfig, tc: TrainConfig, tokenizer: Tokenizer,
           device: torch.device, d: Distributed) -> dict[str, float]:
    out_dir = Path(tc.out_dir)
    if d.is_main:
        prepare_out_dir(out_dir)
    latest_path, best_path = out_dir / "latest.pt", out_dir / "best_model.pt"
    if tc.resume and not latest_path.exists():
        raise UserError(f"--resume: no checkpoint to resume from at {latest_path}")
    if tc.fsdp and not d.enabled:
        raise UserError("--fsdp shards across processes: start the run with torchrun")
    dtype = resolve_dtype(tc.dtype, device)
    ctx = autocast(device, dtype)
    accumulation = resolve_accumulation(tc, model_config.block_size, d.world_size)
    log = RunLog(out_dir / "train.log" if d.is_main else None)

    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    raw_model = GPT(model_config).to(device)
    ckpt = None
    if tc.resume:
        ckpt = load_checkpoint(latest_path)
        check_resumable(ckpt, model_config, tokenizer, tc)
        if not tc.fsdp:
            raw_model.load_state_dict(ckpt["model"])
    elif tc.init_from:  # weights to start from; optimizer, step and data start fresh
        raw_model.load_state_dict(load_checkpoint(tc.init_from)["model"])
        log(f"initialised from {tc.init_from}")
    model = distributed.wrap(raw_model, d, device, tc.fsdp)
    optimizer = make_optimizer(raw_model, tc, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loader, val_batches, data_description = make_loaders(tc, tokenizer, model_config.block_size,
                                                         accumulation, device, d)
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths())
    step, best_val_loss, tokens_seen = 0, math.inf, 0
    torch.manual_seed(tc.seed + d.rank)  # dropout differs across ranks
    if ckpt is not None:
        if tc.fsdp:
            distributed.load_full_state(raw_model, optimizer, ckpt["model"], ckpt["optimizer"],
                                        fsdp=True)
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["data"])
        if d.rank < len(ckpt["rng"]):  # a new rank (more processes than before) keeps its seed
            torch.set_rng_state(ckpt["rng"][d.rank]["torch"])
            if device.type == "cuda" and "cuda" in ckpt["rng"][d.rank]:
                torch.cuda.set_rng_state(ckpt["rng"][d.rank]["cuda"], device)
        step, best_val_loss = ckpt["step"], ckpt["best_val_loss"]
        tokens_seen = ckpt["tokens_seen"]
        log(f"resumed from {latest_path} at step {step}")
        del ckpt
    if tc.compile if tc.compile is not None else device.type == "cuda":
        model = torch.compile(model)

    tokens_per_step = tc.batch_size * accumulation * model_config.block_size * d.world_size
    flops_per_token = raw_model.flops_per_token()
    peak = peak_flops(device)
    log(f"model: {raw_model.num_params():,} parameters, {model_config}")
    log(f"training: {tc}")
    log(f"data: {data_description}; tokenizer {tokenizer.name} ({tokenizer.n_vocab:,} ids); "
        f"validation: {len(val_batches)} batches")
    log(f"device: {device} x {d.world_size} process(es), dtype {dtype_name(dtype)}, "
        f"{tokens_per_step:,} tokens per step ({tc.batch_size} x {accumulation} x "
        f"{model_config.block_size} x {d.world_size})")
    writer = None
    if tc.tensorboard and d.is_main:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(out_dir), purge_step=step if step else None)

    def checkpoint_payload(with_training_state: bool) -> dict[str, Any] | None:
        """Collective under FSDP/DDP: every rank must call it; rank 0 gets the payload."""
        model_state, optimizer_state = distributed.full_state(raw_model, optimizer, tc.fsdp)
        data_state = merge_states(distributed.gather(loader.state_dict(), d))
        rng = {"torch": torch.get_rng_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        rng_states = distributed.gather(rng, d)
        if not d.is_main:
            return None
        payload = {"model_config": dataclasses.asdict(model_config),
                   "train_config": dataclasses.asdict(tc), "tokenizer": tokenizer.spec(),
                   "model": model_state, "step": step, "tokens_seen": tokens_seen,
                   "best_val_loss": best_val_loss, "world_size": d.world_size}
        if with_training_state:
            payload.update(optimizer=optimizer_state, scaler=scaler.state_dict(),
                           data=data_state, rng=rng_states)
        return payload

    def save(path: Path, with_training_state: bool = True) -> None:
        payload = checkpoint_payload(with_training_state)
        if payload is not None:
            save_checkpoint(payload, path)

    def save_latest() -> None:
        save(latest_path)
        if tc.keep_checkpoints and d.is_main:  # a copy of latest.pt, then the oldest go
            numbered = out_dir / f"ckpt_{step:07d}.pt"
            tmp = numbered.with_name(f".{numbered.name}.tmp")
            shutil.copyfile(latest_path, tmp)
            os.replace(tmp, numbered)
            for old in sorted(out_dir.glob("ckpt_*.pt"))[:-tc.keep_checkpoints]:
                old.unlink()

    profiler = start_profiler(tc.profile, out_dir / "profile", device) \
        if tc.profile and d.is_main else None
    stop = StopRequest()
    sample_generator = torch.Generator(device=device)
    progress = tqdm(total=tc.max_iters, initial=step, desc="training", unit="step",
                    disable=None if d.is_main else True, dynamic_ncols=True)
    last_loss, bad_in_a_row = math.nan, 0
    timer, timed_steps = time.perf_counter(), 0  # throughput excludes evaluation and saving
    saved_step = step
    model.train()
    try:
        while step < tc.max_iters:
            lr = learning_rate_at(step, tc)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = [loader.next_batch() for _ in range(accumulation)]
            result = optimizer_step(model, optimizer, scaler, batches, ctx, tc.grad_clip, d)
            step += 1
            tokens_seen += tokens_per_step
            timed_steps += 1
            if result.skipped:
                bad_in_a_row += 1
                log(f"warning: step {step}: non-finite loss or gradient (loss {result.loss}, "
                    f"gradient norm {result.grad_norm}); update skipped")
                if bad_in_a_row >= tc.max_bad_steps:
                    raise TrainingError(
                        f"stopping: {bad_in_a_row} non-finite steps in a row at step {step}; "
                        f"the last good checkpoint (step {saved_step}) is in {latest_path}; try "
                        "a lower --learning_rate or --dtype bf16")
            else:
                bad_in_a_row, last_loss = 0, result.loss
            progress.update(1)
            if profiler is not None:
                profiler.step()
                if profiler.step_num >= PROFILE_SKIP + tc.profile:
                    profiler.stop()
                    log(f"profile of {tc.profile} steps written to {out_dir / 'profile'} "
                        f"(tensorboard --logdir {out_dir / 'profile'})")
                    profiler = None

            if step % tc.log_interval == 0 or step == tc.max_iters:
                elapsed = time.perf_counter() - timer
                tokens_per_sec = tokens_per_step * timed_steps / elapsed
                mfu = flops_per_token * tokens_per_sec / (peak * d.world_size) if peak else None
                line = (f"step {step}/{tc.max_iters} | loss {result.loss:.4f} | lr {lr:.2e} | "
                        f"grad norm {result.grad_norm:.3f} | {tokens_per_sec:,.0f} tok/s | "
                        f"{1000 * elapsed / timed_steps:.0f} ms/step")
                postfix = {"loss": f"{result.loss:.4f}", "tok/s": f"{tokens_per_sec:,.0f}"}
                if mfu is not None:
                    line += f" | MFU {100 * mfu:.1f}%"
                    postfix["MFU"] = f"{100 * mfu:.1f}%"
                log(line)
                progress.set_postfix(postfix)
                if writer:
                    writer.add_scalar("train/loss", result.loss, step)
                    writer.add_scalar("train/lr", lr, step)
                    writer.add_scalar("train/grad_norm", result.grad_norm, step)
                    writer.add_scalar("train/tokens_per_sec", tokens_per_sec, step)
                    if mfu is not None:
                        writer.add_scalar("train/mfu", mfu, step)
                    if device.type == "cuda":
                        writer.add_scalar("train/peak_memory_gb",
                                          torch.cuda.max_memory_allocated(device) / 1e9, step)
                timer, timed_steps = time.perf_counter(), 0

            if step % tc.eval_interval == 0 or step == tc.max_iters:
                val_loss, val_bpb = evaluate(model, val_batches, ctx, byte_lengths, d)
                log(f"step {step}: val loss {val_loss:.4f} | val bits/byte {val_bpb:.4f}")
                if writer:
                    writer.add_scalar("val/loss", val_loss, step)
                    writer.add_scalar("val/bpb", val_bpb, step)
                if tc.sample_tokens:  # on every rank: under FSDP each forward is collective
                    sample_generator.manual_seed(tc.seed)
                    with ctx:
                        ids = generate_ids(raw_model, [tokenizer.eot_id], tc.sample_tokens,
                                           temperature=0.8, top_k=200,
                                           generator=sample_generator)[0]
                    log(f"sample: {tokenizer.decode(ids)!r}")
                if val_loss < best_val_loss:
                    best_val_loss = val_loss
                    save(best_path, with_training_state=False)
                timer, timed_steps = time.perf_counter(), 0

            due = step % tc.save_interval == 0 or step == tc.max_iters
            if due and bad_in_a_row == 0:  # never replace a good checkpoint during a bad streak
                save_latest()
                saved_step = step
                timer, timed_steps = time.perf_counter(), 0
            if distributed.any_rank(stop.requested, d, device):
                if saved_step != step:
                    save_latest()
                    saved_step = step
                log(f"stopped at step {step}: {latest_path} saved; continue with --resume")
                break
    finally:
        loader.close()
        if profiler is not None:
            profiler.stop()
        stop.restore()
        progress.close()
        if writer:
            writer.close()
    log(f"done: {step} steps, {tokens_seen:,} tokens, best val loss {best_val_loss:.4f}; "
        f"checkpoints in {out_dir}")
    log.close()
    return {"best_val_loss": best_val_loss, "final_loss": last_loss, "step": step}
