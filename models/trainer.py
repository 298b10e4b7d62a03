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
import signal
import sys
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data.loader import PreparedLoader, StreamingLoader, merge_states
from data.shards import is_prepared
from data.sources import DATASETS, get_source, split_revision
from data.validation import (
    ROWS_PER_EVAL_ITER,
    check_prepared_training,
    validation_set,
    without_validation,
)
from evaluation.hellaswag_scoring import (
    Example,
    fingerprint,
    load_examples,
    score_examples,
    spread,
)
from models import distributed
from models.checkpoint import CheckpointError, copy_atomically, load_checkpoint, save_checkpoint
from models.device import (
    autocast,
    dtype_name,
    enable_tf32,
    peak_flops,
    resolve_device,
    resolve_dtype,
    use_expandable_segments,
)
from models.distributed import Distributed
from models.estimate import auto_micro_batch, device_memory_bytes
from models.generate import generate_ids
from models.optim import (
    apply_hyperparameters,
    coherent_schedule,
    learning_rate_at,
    make_optimizer,
    set_learning_rate,
)
from models.report import hardware_line, run_line, write_report
from models.resume import check_resumable, resume_summary
from models.run_dir import RunLock, check_room, checkpoint_bytes, written_checkpoints
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
    loss: float  # mean over the global batch's target tokens (all micro-batches, all ranks)
    grad_norm: float  # before clipping
    skipped: bool  # no update was made: not finite, or fp16 overflow (the scaler skipped it)


def target_weight(micro_batches: list[tuple[torch.Tensor, ...]], d: Distributed) -> torch.Tensor:
    """What each micro-batch's summed loss is multiplied by so that the gradients add up to
    those of the mean over the global batch's targets (-1: ignored), however unevenly they fall
    across micro-batches and ranks: world size (DDP and FSDP average over ranks) over the count
    of targets of all ranks."""
    count = torch.stack([(y != -1).sum() for _, y in micro_batches]).sum()
    return d.world_size / distributed.total(count, d).clamp(min=1)


def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   scaler: torch.amp.GradScaler, micro_batches: list[tuple[torch.Tensor, ...]],
                   ctx: AbstractContextManager, grad_clip: float,
                   d: Distributed = SINGLE_PROCESS) -> StepResult:
    """Forward and backward over the micro-batches, then one update (or a skip)."""
    n = len(micro_batches)
    weight = target_weight(micro_batches, d)
    loss_sum = torch.zeros((), device=micro_batches[0][0].device)
    for i, (x, y) in enumerate(micro_batches):
        with distributed.no_sync(model, sync=i == n - 1):
            with ctx:
                loss = model(x, y, reduction="sum") * weight
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
    scale = scaler.get_scale() if scaler.is_enabled() else None
    scaler.update()
    # fp16: the scaler lowers its scale exactly when it found inf/NaN gradients and skipped
    overflow = scale is not None and scaler.get_scale() < scale
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, grad_norm, skipped=not finite or overflow)


# ----------------------------------------------------------------------------- evaluation

def rank_share(rows: torch.Tensor, batch_size: int, d: Distributed) -> list[torch.Tensor]:
    """This rank's share of the validation rows in micro-batches of batch_size. Every rank gets
    the same number of micro-batches (FSDP's forwards are collective): shares are padded with
    rows whose targets are all ignored (-1)."""
    per_rank = math.ceil(len(rows) / d.world_size)
    mine = rows[d.rank * per_rank:(d.rank + 1) * per_rank]
    if len(mine) < per_rank:
        padding = torch.zeros(per_rank - len(mine), rows.shape[1], dtype=rows.dtype)
        padding[:, 1:] = -1
        mine = torch.cat([mine, padding])
    return list(mine.split(batch_size))


@torch.no_grad()
def evaluate(model: torch.nn.Module, rows: torch.Tensor, batch_size: int, ctx,
             byte_lengths: torch.Tensor, device: torch.device,
             d: Distributed = SINGLE_PROCESS) -> tuple[float, float]:
    """Mean loss (nats per token) and bits per byte over the fixed validation rows (N x T+1,
    on the CPU); each rank scores its share, so the result does not depend on the number of
    processes or the micro-batch."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    for block in rank_share(rows, batch_size, d):
        block = block.to(device, torch.long)
        x, y = block[:, :-1], block[:, 1:]
        scored = y >= 0
        count = scored.sum()
        with ctx:
            nats = model(x, y, reduction="sum").double()  # ignored targets add nothing
        n_bytes = (byte_lengths.to(device)[y.clamp(min=0)] * scored).sum()
        sums += torch.stack([nats, count.double(), n_bytes.double()])
    model.train()
    nats, tokens, n_bytes = distributed.total(sums, d).tolist()
    return nats / tokens, nats / math.log(2) / max(n_bytes, 1.0)


# ----------------------------------------------------------------------------- downstream

def hellaswag_examples(tc: TrainConfig, d: Distributed, log) -> list[Example]:
    """--eval_hellaswag's examples: tc.eval_hellaswag of the split, spread evenly over it, the
    same ones every time and at any number of processes (rank 0 reads them, every rank gets
    them). Where they cannot be read, one logged line, and training goes on without them."""
    if not tc.eval_hellaswag:
        return []

    def read() -> tuple[list[Example], str | None]:  # every rank gets the same answer
        try:
            return load_examples(tc.hellaswag_data), None
        except Exception as err:  # unreadable, malformed, unreachable: never the run's end
            return [], str(err).splitlines()[0][:200] if str(err) else type(err).__name__

    examples, problem = distributed.on_main(read, d)
    if problem is not None:
        log(f"warning: --eval_hellaswag is off for this run: {problem}")
        return []
    chosen = spread(examples, tc.eval_hellaswag)
    log(f"hellaswag: {len(chosen):,} of the {len(examples):,} examples of {tc.hellaswag_data} "
        f"(spread evenly over it; fingerprint {fingerprint(chosen)}), acc_norm at each "
        "evaluation")
    return chosen


def rank_examples(examples: list[Example], d: Distributed) -> tuple[list[Example], int]:
    """This rank's share of the examples, and how many of them count: shares are padded (with
    the first example, not counted) to one length, so that every rank makes the same number of
    forward calls (FSDP's are collective)."""
    per_rank = math.ceil(len(examples) / d.world_size)
    mine = examples[d.rank * per_rank:(d.rank + 1) * per_rank]
    return mine + [examples[0]] * (per_rank - len(mine)), len(mine)


def hellaswag_accuracy(model: GPT, tokenizer: Tokenizer, examples: list[Example],
                       batch_size: int, ctx, device: torch.device,
                       d: Distributed = SINGLE_PROCESS) -> tuple[float, float]:
    """(acc, acc_norm) over the examples, scored by evaluation/hellaswag_scoring.py (as
    `evaluation/hellaswag.py` scores them), each rank its share. `model`: the GPT itself (FSDP's
    sharded module, not a DDP or compiled wrapper)."""
    share, counted = rank_examples(examples, d)
    model.eval()
    scored = score_examples(model, tokenizer, share, batch_size, ctx)[:counted]
    model.train()
    sums = torch.tensor([sum(s.acc for s in scored), sum(s.acc_norm for s in scored)],
                        dtype=torch.float64, device=device)
    acc, acc_norm = (distributed.total(sums, d) / len(examples)).tolist()
    return acc, acc_norm


# ----------------------------------------------------------------------------- data

def val_tokens(tc: TrainConfig, block_size: int) -> int:
    """The held-out set's size: val_tokens, else eval_iters batches of 32 rows."""
    return tc.val_tokens or tc.eval_iters * ROWS_PER_EVAL_ITER * block_size


def make_loaders(tc: TrainConfig, tokenizer: Tokenizer, block_size: int, accumulation: int,
                 device: torch.device, d: Distributed = SINGLE_PROCESS,
                 saved: dict[str, Any] | None = None):
    """The training loader (this rank's rows of every global batch) and the fixed validation
    set. Rank 0 lists the source, reads the held-out text and takes out what --val_data covers;
    the others receive the result (one listing per job) and read the footers they need once.
    `saved`: a resumed run's checkpoint, whose Hub revisions are kept."""
    options = {"text_field": tc.text_field, "data_config": tc.data_config,
               "min_int_score": tc.min_int_score}
    prepared = is_prepared(tc.data)
    revision, val_revision = saved_revisions(saved, tc)

    def read_on_main():
        source = None if prepared else get_source(tc.data, revision=revision, **options)
        val = validation_set(tc.data, tc.val_data, source, tokenizer, block_size,
                             val_tokens(tc, block_size), options, val_revision)
        if prepared and val.covers:
            check_prepared_training(tc.data, val.covers)
        if source is not None and val.covers:
            source = without_validation(source, val.covers, tc.data)
        return (source.listed() if source else None), val

    source, val = distributed.on_main(read_on_main, d)
    if prepared:
        train = PreparedLoader.from_folder(
            tc.data, "train", tokenizer, block_size, tc.batch_size, accumulation=accumulation,
            rank=d.rank, world_size=d.world_size, seed=tc.seed, device=device)
        return train, val, f"prepared shards in {tc.data}"
    if hasattr(source, "load_footers"):
        source.load_footers()  # before the loader's workers fork: they inherit them
    train = StreamingLoader(source, tokenizer, block_size, tc.batch_size, "train", accumulation,
                            d.rank, d.world_size, tc.data_workers, tc.seed, device)
    description = (f"{source.name}, {len(train.units):,} units streamed into {train.rows} "
                   f"lanes ({tc.data_workers} worker processes)")
    if source.revision:
        description += f" at revision {source.revision}"
    return train, val, description + shared_units_note(train.units, train.rows, d.world_size)


def saved_revisions(saved: dict[str, Any] | None, tc: TrainConfig
                    ) -> tuple[str | None, str | None]:
    """The Hub commits a resumed run read --data and --val_data at (None: not on the Hub, or a
    new run)."""
    if saved is None:
        return None, None
    data = saved.get("data", {}).get("revision")
    val = saved.get("validation", {}).get("data", {})
    name = split_revision(tc.val_data)[0] if tc.val_data else None
    same_val = name is not None and val.get("source") == DATASETS.get(name, name)
    return data, val.get("revision") if same_val else None


def shared_units_note(units: list, rows: int, world_size: int) -> str:
    """What fewer units than rows per step means, and its cost where units are big row groups
    (a lane starting inside one decodes what comes before its start, at every start)."""
    if len(units) >= rows:
        return ""
    note = ("; fewer units than rows per step: lanes sharing a unit start at different places "
            "in it")
    biggest = max(u.nbytes for u in units)
    if max(u.pieces for u in units) > 1 and biggest > 1e9:
        per_rank = rows / world_size * biggest * 0.5  # lanes start on average mid-unit
        note += (f". warning: row groups of up to {biggest / 1e9:.1f} GB: each start and "
                 f"resume decodes ~{per_rank / 1e9:.0f} GB per rank before the first batch; "
                 "rewrite the files with row groups of ~100 MB (pyarrow's row_group_size), or "
                 "prepare them with data/prepare.py")
    return note


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
        self.path = path
        try:
            self.file = open(path, "a", encoding="utf-8") if path else None
        except OSError as err:
            raise UserError(f"cannot write {path} ({err.strerror})") from None

    def __call__(self, message: str) -> None:
        if self.file is None:
            return
        tqdm.write(message)
        try:
            self.file.write(message + "\n")
            self.file.flush()
        except OSError as err:
            raise UserError(f"cannot write {self.path} ({err.strerror})") from None

    def close(self) -> None:
        if self.file:
            self.file.close()


def weights_finite(model: torch.nn.Module, d: Distributed, device: torch.device) -> bool:
    """Every weight finite, on every rank (FSDP: each rank checks its shards)."""
    local = all(bool(torch.isfinite(p.to_local() if hasattr(p, "to_local") else p).all())
                for p in model.parameters())
    return not distributed.any_rank(not local, d, device)


def is_lost_peer(err: BaseException) -> bool:
    """A collective failed because another process of the run is gone or stuck."""
    text = str(err)
    return isinstance(err, torch.distributed.DistError) or any(
        phrase in text for phrase in ("Connection reset by peer", "Connection closed by peer",
                                      "remote process exited", "Broken pipe",
                                      "Timed out waiting"))  # gloo's timeout


def train(model_config: ModelConfig, tc: TrainConfig, tokenizer: Tokenizer) -> dict[str, float]:
    """Train, owning OUT_DIR (rank 0 holds its lock) for the whole run."""
    use_expandable_segments()
    device = resolve_device(tc.device)
    d, device = distributed.setup(device, tc.collective_timeout_s)
    lock, clean = None, False
    try:
        out_dir = Path(tc.out_dir)
        if d.is_main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"cannot create {out_dir} ({err.strerror})") from None
            lock = RunLock(out_dir)
            warning = lock.acquire()
            if warning:
                print(warning, file=sys.stderr)
        tc, schedule_note = coherent_schedule(tc)
        run = Run(model_config, tc, tokenizer, device, d)
        if schedule_note:
            run.log(f"note: {schedule_note}")
        result = run.train()
        clean = True
        return result
    except Exception as err:
        if d.enabled and is_lost_peer(err):
            raise TrainingError(distributed.peer_failure(d, err)) from None
        distributed.report_failure(d, err)  # for the others to name this rank
        raise
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown(d, clean)


def compile_backend(tc: TrainConfig, device: torch.device) -> str | None:
    """torch.compile's backend for the run, or None (eager): --compile, by default on CUDA."""
    return "inductor" if (tc.compile if tc.compile is not None else device.type == "cuda") \
        else None


@dataclass
class Progress:
    """Where the run stands; saved in every checkpoint."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    saved_step: int | None = None  # the step latest.pt holds, if there is one
    good_steps: int = 0  # updates made by this process's run (skipped steps not counted)
    skipped_steps: int = 0  # steps without an update, over the whole run (resumes included)
    bad_in_a_row: int = 0
    nonfinite_in_a_row: int = 0  # of those, not fp16 overflows (which leave the weights as
    # they were and finite: saving after one is safe)
    last_loss: float = math.nan
    config_changes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    numbered: list[int] = dataclasses.field(default_factory=list)  # steps of the ckpt_STEP.pt
    # files this run's lineage wrote and keeps (--keep_checkpoints)


class Run:
    """One training run: the model, optimizer, data and checkpoints, and the loop over steps."""

    def __init__(self, model_config: ModelConfig, tc: TrainConfig, tokenizer: Tokenizer,
                 device: torch.device, d: Distributed) -> None:
        self.model_config, self.tc, self.tokenizer, self.device, self.d = \
            model_config, tc, tokenizer, device, d
        self.out_dir = Path(tc.out_dir)
        self.latest_path = self.out_dir / "latest.pt"
        self.best_path = self.out_dir / "best_model.pt"
        if tc.resume and not self.latest_path.exists():
            raise UserError(f"--resume: no checkpoint to resume from at {self.latest_path}")
        if tc.fsdp and not d.enabled:
            raise UserError("--fsdp shards across processes: start the run with torchrun")
        self.dtype = resolve_dtype(tc.dtype, device)
        enable_tf32(device)
        self.ctx = autocast(device, self.dtype)
        auto_batch = tc.batch_size is None
        self.configured = tc  # as given: an auto micro-batch is chosen again on every resume
        if auto_batch:
            memory = device_memory_bytes(device, tc.gpu_memory_gb)
            tc = self.tc = dataclasses.replace(tc, batch_size=auto_micro_batch(
                model_config, tc.global_batch_tokens, d.world_size, self.dtype, memory))
        self.accumulation = resolve_accumulation(tc, model_config.block_size, d.world_size)
        self.progress = Progress()
        ckpt = load_checkpoint(self.latest_path) if tc.resume else None
        changes = check_resumable(ckpt, model_config, tokenizer, self.configured) if ckpt \
            else []
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        self.raw_model = GPT(model_config).to(device)
        warning = None
        if d.is_main:
            warning = check_room(self.out_dir, checkpoint_bytes(self.raw_model.num_params()),
                                 tc.keep_checkpoints, written_checkpoints(self.out_dir))
        self.log = RunLog(self.out_dir / "train.log" if d.is_main else None)
        if d.is_main and warning:
            self.log(warning)
        if auto_batch:
            self.log(f"micro-batch: {tc.batch_size} (auto: the largest the memory estimate fits "
                     f"in {memory / 1e9:.0f} GB that divides the global batch)")
        if ckpt is not None and not tc.fsdp:
            self.raw_model.load_state_dict(ckpt["model"])
        elif ckpt is None and tc.init_from:  # weights to start from; the rest starts fresh
            self.raw_model.load_state_dict(load_checkpoint(tc.init_from)["model"])
            self.log(f"initialised from {tc.init_from}")
        self.model = distributed.wrap(self.raw_model, d, device, tc.fsdp, self.dtype,
                                      compile_backend(tc, device))
        self.optimizer = make_optimizer(self.raw_model, tc, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.dtype == torch.float16)
        self.loader, self.validation, self.data_description = make_loaders(
            tc, tokenizer, model_config.block_size, self.accumulation, device, d, ckpt)
        self.val_rows = torch.from_numpy(self.validation.rows)
        torch.manual_seed(tc.seed + d.rank)  # dropout differs across ranks
        if ckpt is not None:
            self.restore(ckpt, changes)
        self.byte_lengths = torch.tensor(tokenizer.token_byte_lengths())
        self.tokens_per_step = (tc.batch_size * self.accumulation * model_config.block_size
                                * d.world_size)

    def restore(self, ckpt: dict[str, Any], changes: list[dict[str, Any]]) -> None:
        """Continue where latest.pt stopped, applying (and recording) the changes allowed."""
        tc, d, p = self.tc, self.d, self.progress
        if tc.fsdp:
            distributed.load_full_state(self.raw_model, self.optimizer, ckpt["model"],
                                        ckpt["optimizer"], fsdp=True)
        else:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        apply_hyperparameters(self.optimizer, tc)  # the state carries the old ones
        if self.scaler.is_enabled() and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.loader.load_state_dict(ckpt["data"])
        if d.rank < len(ckpt["rng"]):  # a new rank (more processes than before) keeps its seed
            torch.set_rng_state(ckpt["rng"][d.rank]["torch"])
            if self.device.type == "cuda" and "cuda" in ckpt["rng"][d.rank]:
                torch.cuda.set_rng_state(ckpt["rng"][d.rank]["cuda"], self.device)
        p.step, p.tokens_seen = ckpt["step"], ckpt["tokens_seen"]
        p.best_val_loss = self.restored_best(ckpt)
        p.saved_step = ckpt["step"]
        p.skipped_steps = ckpt.get("skipped_steps", 0)
        p.config_changes = list(ckpt.get("config_changes", [])) + changes
        p.numbered = self.lineage(ckpt)
        self.log(resume_summary(self.latest_path, ckpt, tc, changes))

    def lineage(self, ckpt: dict[str, Any]) -> list[int]:
        """The numbered checkpoints of the run being resumed that still exist: after a roll
        back to an earlier one, the files of the abandoned branch are not among them. (Older
        checkpoints did not record theirs: those up to the resumed step are taken.)"""
        steps = ckpt.get("numbered_checkpoints")
        if steps is None:
            steps = [int(f.stem[5:]) for f in self.out_dir.glob("ckpt_*.pt")
                     if f.stem[5:].isdigit() and int(f.stem[5:]) <= ckpt["step"]]
        return sorted(s for s in steps if self.numbered_path(s).exists())

    def numbered_path(self, step: int) -> Path:
        return self.out_dir / f"ckpt_{step:07d}.pt"

    def restored_best(self, ckpt: dict[str, Any]) -> float:
        """The checkpoint's best validation loss, if it was measured on this run's held-out
        set; otherwise the best starts again (losses on two sets do not compare)."""
        if ckpt.get("validation") == self.validation.identity:
            return ckpt["best_val_loss"]
        self.log("resume: the validation set differs from the checkpoint's (other held-out "
                 "text or size); the best validation loss starts again, and the next "
                 f"evaluation replaces {self.best_path.name}")
        return math.inf

    # ------------------------------------------------------------------ checkpoints

    def payload(self, with_training_state: bool) -> dict[str, Any] | None:
        """Collective under FSDP/DDP: every rank must call it; rank 0 gets the payload."""
        d, p = self.d, self.progress
        model_state, optimizer_state = distributed.full_state(
            self.raw_model, self.optimizer if with_training_state else None, self.tc.fsdp)
        data_state = merge_states(distributed.gather(self.loader.state_dict(), d))
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rng_states = distributed.gather(rng, d)
        if not d.is_main:
            return None
        payload = {"model_config": dataclasses.asdict(self.model_config),
                   "train_config": dataclasses.asdict(dataclasses.replace(
                       self.tc, batch_size=self.configured.batch_size)),
                   "micro_batch": self.tc.batch_size,
                   "tokenizer": self.tokenizer.spec(), "model": model_state, "step": p.step,
                   "tokens_seen": p.tokens_seen, "best_val_loss": p.best_val_loss,
                   "validation": self.validation.identity, "world_size": d.world_size,
                   "config_changes": p.config_changes, "skipped_steps": p.skipped_steps,
                   "numbered_checkpoints": p.numbered}
        if with_training_state:
            payload.update(optimizer=optimizer_state, scaler=self.scaler.state_dict(),
                           data=data_state, rng=rng_states)
        return payload

    def write(self, path: Path, with_training_state: bool) -> None:
        payload = self.payload(with_training_state)
        if payload is None:
            return
        try:
            save_checkpoint(payload, path)
        except CheckpointError as err:
            saved = self.progress.saved_step
            intact = f"the previous latest.pt (step {saved}) is intact" if saved is not None \
                else "no latest.pt was written before"
            raise TrainingError(f"{err}; {intact}") from None

    def save_latest(self) -> None:
        """latest.pt (and a numbered copy with --keep_checkpoints), only of finite weights."""
        p = self.progress
        if not weights_finite(self.raw_model, self.d, self.device):
            where = f"the last good checkpoint is {self.latest_path} (step {p.saved_step})" \
                if p.saved_step is not None else "no checkpoint was written"
            raise TrainingError(f"the weights are not finite after step {p.step} (training "
                                f"diverged); {where}; try a lower --learning_rate")
        k = self.tc.keep_checkpoints
        lineage = sorted({*p.numbered, p.step}) if k else []
        p.numbered, dropped = lineage[-k:], lineage[:-k]  # k = 0: both empty
        self.write(self.latest_path, with_training_state=True)  # records p.numbered
        p.saved_step = p.step
        if k and self.d.is_main:  # a copy, then the lowest steps of this lineage beyond k go
            copy_atomically(self.latest_path, self.numbered_path(p.step))
            for step in dropped:
                self.numbered_path(step).unlink(missing_ok=True)

    def save_final(self) -> None:
        """A run never ends without latest.pt of its last step: after a streak of skipped
        steps (no update made) the weights are those of the last good update, saved with the
        data position past the skipped batches. A run without one good update saves nothing."""
        p = self.progress
        if p.saved_step == p.step:
            return
        if p.good_steps == 0:
            where = f"{self.latest_path} (step {p.saved_step}) is unchanged" \
                if p.saved_step is not None else "nothing was saved"
            raise TrainingError(f"no step of this run was finite ({p.bad_in_a_row} skipped); "
                                f"{where}; try a lower --learning_rate or --dtype bf16")
        self.save_latest()
        if p.bad_in_a_row:
            self.log(f"warning: the run ended on {p.bad_in_a_row} skipped steps; latest.pt "
                     f"(step {p.step}) holds the weights of the last good update")

    # ------------------------------------------------------------------ the loop

    def train(self) -> dict[str, float]:
        tc, d, p, log = self.tc, self.d, self.progress, self.log
        self.log_header()
        writer = None
        if tc.tensorboard and d.is_main:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(log_dir=str(self.out_dir), purge_step=p.step or None)
        profiler = start_profiler(tc.profile, self.out_dir / "profile", self.device) \
            if tc.profile and d.is_main else None
        stop = StopRequest()
        bar = tqdm(total=tc.max_iters, initial=p.step, desc="training", unit="step",
                   disable=None if d.is_main else True, dynamic_ncols=True)
        meter = Throughput(self.tokens_per_step)
        first_step = True
        self.hellaswag = hellaswag_examples(tc, d, log)
        try:
            if p.step == 0:  # where the curve starts: the untrained model's loss
                self.evaluate_and_sample(writer)
            self.model.train()
            meter.restart()  # the first step's time: compilation and warm-up, not evaluation
            while p.step < tc.max_iters:
                lr = learning_rate_at(p.step, tc)
                result = self.one_step(lr)
                meter.count()
                bar.update(1)
                if first_step:  # compilation and warm-up: reported apart, not in throughput
                    seconds = meter.read()[1] / 1000
                    log(f"first step: {seconds:.1f} s (compilation and warm-up included; "
                        "throughput counts from the next step)")
                    meter.restart()
                    first_step = False
                if profiler is not None and self.profile_step(profiler):
                    profiler = None
                if p.step % tc.log_interval == 0 or p.step == tc.max_iters:
                    self.log_step(result, lr, meter, bar, writer)
                if p.step % tc.eval_interval == 0 or p.step == tc.max_iters:
                    self.evaluate_and_sample(writer)
                    meter.restart()
                if p.step % tc.save_interval == 0 and p.nonfinite_in_a_row == 0:
                    self.save_latest()  # never during a non-finite streak (fp16 overflows are
                    # skips that leave the weights as they were: saving after one is safe)
                    meter.restart()
                if distributed.any_rank(stop.requested, d, self.device):
                    self.save_final()
                    log(f"stopped at step {p.step}: {self.latest_path} saved; continue with "
                        "--resume")
                    break
            else:
                self.save_final()
        finally:
            self.loader.close()
            if profiler is not None:
                profiler.stop()
            stop.restore()
            bar.close()
            if writer:
                writer.close()
        log(f"done: {p.step} steps ({p.skipped_steps} skipped), "
            f"{p.tokens_seen:,} tokens, best val loss {p.best_val_loss:.4f}; "
            f"{self.latest_path} holds step {p.saved_step}")
        self.write_report()
        log.close()
        return {"best_val_loss": p.best_val_loss, "final_loss": p.last_loss, "step": p.step}

    def log_header(self) -> None:
        tc, d, log = self.tc, self.d, self.log
        log(run_line())
        log(hardware_line(self.device, d.world_size))
        log(f"model: {self.raw_model.num_params():,} parameters, {self.model_config}")
        log(f"training: {tc}")
        log(f"data: {self.data_description}; tokenizer {self.tokenizer.name} "
            f"({self.tokenizer.n_vocab:,} ids); validation: {len(self.val_rows):,} rows "
            f"({self.validation.identity['tokens']:,} tokens, the same at any number of "
            "processes)")
        log(f"device: {self.device} x {d.world_size} process(es), dtype "
            f"{dtype_name(self.dtype)}, {self.tokens_per_step:,} tokens per step "
            f"({tc.batch_size} x {self.accumulation} x {self.model_config.block_size} x "
            f"{d.world_size})")

    def one_step(self, lr: float) -> StepResult:
        p = self.progress
        set_learning_rate(self.optimizer, lr)
        batches = [self.loader.next_batch() for _ in range(self.accumulation)]
        result = optimizer_step(self.model, self.optimizer, self.scaler, batches, self.ctx,
                                self.tc.grad_clip, self.d)
        p.step += 1
        p.tokens_seen += self.tokens_per_step
        if not result.skipped:
            p.good_steps, p.bad_in_a_row, p.last_loss = p.good_steps + 1, 0, result.loss
            p.nonfinite_in_a_row = 0
            return result
        p.bad_in_a_row += 1
        p.skipped_steps += 1
        if math.isfinite(result.loss) and self.scaler.is_enabled():
            why = f"fp16 gradient overflow (loss scale now {self.scaler.get_scale():g})"
        else:
            why = "non-finite loss or gradient"
            p.nonfinite_in_a_row += 1
        self.log(f"warning: step {p.step}: {why} (loss {result.loss}, gradient norm "
                 f"{result.grad_norm}); update skipped")
        if p.bad_in_a_row >= self.tc.max_bad_steps:
            where = f"the last good checkpoint is {self.latest_path} (step {p.saved_step})" \
                if p.saved_step is not None else "no checkpoint was written"
            raise TrainingError(f"stopping: {p.bad_in_a_row} skipped steps in a row at step "
                                f"{p.step} (non-finite or fp16 overflow); {where}; try a lower "
                                "--learning_rate or --dtype bf16")
        return result

    def profile_step(self, profiler) -> bool:
        """Advance the profiler; True once it has written its trace."""
        profiler.step()
        if profiler.step_num < PROFILE_SKIP + self.tc.profile:
            return False
        profiler.stop()
        folder = self.out_dir / "profile"
        self.log(f"profile of {self.tc.profile} steps written to {folder} "
                 f"(tensorboard --logdir {folder})")
        return True

    def utilization(self, tokens_per_sec: float) -> tuple[float, float] | None:
        """(MFU, HFU) on GPUs of known peak: model FLOPs, and those plus what recomputation
        does again, per second over the peak of all processes' GPUs."""
        peak = peak_flops(self.device, self.dtype)
        if not peak or tokens_per_sec <= 0:
            return None
        model_flops = self.raw_model.flops_per_token()
        extra = self.raw_model.recomputed_flops_per_token(self.tc.batch_size *
                                                          self.model_config.block_size)
        per_second = tokens_per_sec / (peak * self.d.world_size)
        return model_flops * per_second, (model_flops + extra) * per_second

    def log_step(self, result: StepResult, lr: float, meter: Throughput, bar, writer) -> None:
        p, tc = self.progress, self.tc
        tokens_per_sec, ms_per_step = meter.read()
        utilization = self.utilization(tokens_per_sec)
        line = (f"step {p.step}/{tc.max_iters} | loss {result.loss:.4f} | lr {lr:.2e} | "
                f"grad norm {result.grad_norm:.3f}")
        postfix = {"loss": f"{result.loss:.4f}"}
        if meter.steps:  # none right after the first step, which is reported on its own
            line += f" | {tokens_per_sec:,.0f} tok/s | {ms_per_step:.0f} ms/step"
            postfix["tok/s"] = f"{tokens_per_sec:,.0f}"
        if utilization is not None:
            mfu, hfu = utilization
            line += f" | MFU {100 * mfu:.1f}% | HFU {100 * hfu:.1f}%"
            postfix["MFU"] = f"{100 * mfu:.1f}%"
        elif meter.steps and self.device.type == "cuda":  # no data-sheet peak for this GPU
            line += " | MFU unknown"
        self.log(line)
        bar.set_postfix(postfix)
        if writer:
            scalars = {"train/loss": result.loss, "train/lr": lr,
                       "train/grad_norm": result.grad_norm}
            if meter.steps:
                scalars["train/tokens_per_sec"] = tokens_per_sec
            if utilization is not None:
                scalars["train/mfu"], scalars["train/hfu"] = utilization
            if self.device.type == "cuda":
                scalars["train/peak_memory_gb"] = \
                    torch.cuda.max_memory_allocated(self.device) / 1e9
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, p.step)
        meter.restart()

    def evaluate_and_sample(self, writer) -> None:
        p, tc = self.progress, self.tc
        val_loss, val_bpb = evaluate(self.model, self.val_rows, self.tc.batch_size, self.ctx,
                                     self.byte_lengths, self.device, self.d)
        line = f"step {p.step}: val loss {val_loss:.4f} | val bits/byte {val_bpb:.4f}"
        scalars = {"val/loss": val_loss, "val/bpb": val_bpb}
        if self.hellaswag:  # on every rank: under FSDP each forward is collective
            start = time.perf_counter()
            scalars["val/hellaswag_acc"], scalars["val/hellaswag_acc_norm"] = hellaswag_accuracy(
                self.raw_model, self.tokenizer, self.hellaswag, tc.batch_size, self.ctx,
                self.device, self.d)
            line += (f" | hellaswag acc_norm {scalars['val/hellaswag_acc_norm']:.4f} "
                     f"({len(self.hellaswag):,} examples, {time.perf_counter() - start:.1f} s)")
        self.log(line)
        if writer:
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, p.step)
        if tc.sample_tokens:  # on every rank: under FSDP each forward is collective
            generator = torch.Generator(device=self.device).manual_seed(tc.seed)
            # Eager: a compiled block (FSDP) would recompile for every position decoded.
            with self.ctx, torch.compiler.set_stance("force_eager"):
                ids = generate_ids(self.raw_model, [self.tokenizer.eot_id], tc.sample_tokens,
                                   temperature=0.8, top_k=200, generator=generator,
                                   n_vocab=self.tokenizer.n_vocab)[0]
            self.log(f"sample: {self.tokenizer.decode(ids)!r}")
        if val_loss < p.best_val_loss:
            p.best_val_loss = val_loss
            self.write(self.best_path, with_training_state=False)
        self.write_report()

    def write_report(self) -> None:
        """OUT_DIR/report.md from the run's folder (rank 0). A report that cannot be written
        is a logged warning: it never stops a run."""
        if not self.d.is_main:
            return
        try:
            write_report(self.out_dir)
        except Exception as err:  # noqa: BLE001 (any failure of a side product)
            self.log(f"warning: {self.out_dir / 'report.md'} not written ({type(err).__name__}:"
                     f" {str(err).splitlines()[0][:160] if str(err) else ''})")


class Throughput:
    """Tokens per second over the steps since the last restart (evaluation and saving left
    out, by restarting after them)."""

    clock = staticmethod(time.perf_counter)

    def __init__(self, tokens_per_step: int) -> None:
        self.tokens_per_step = tokens_per_step
        self.restart()

    def restart(self) -> None:
        self.start, self.steps = self.clock(), 0

    def count(self) -> None:
        self.steps += 1

    def read(self) -> tuple[float, float]:
        """(tokens per second, milliseconds per step); zeros before the first counted step."""
        elapsed = max(self.clock() - self.start, 1e-9)
        if not self.steps:
            return 0.0, 0.0
        return self.tokens_per_step * self.steps / elapsed, 1000 * elapsed / self.steps
