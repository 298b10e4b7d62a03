"""From units of text to training batches: one global data order at any number of processes.

**Global rows.** An optimizer step trains on G = batch_size x accumulation_steps x processes rows.
Rank r's micro-batch m is rows r*A*B + m*B ... + B - 1 of the step. Which tokens a step sees
depends on the data, the seed and G only: 1 process x 8 micro-batches, 2 x 4 and 8 x 1 train on
identical rows, and a run may resume on another number of processes.

**Streamed sources: packing lanes.** The split's units (see data.sources) are put in a seeded
permutation per epoch, and the permutations are concatenated into one sequence S. Global row g is
packing lane g: it reads units S[g], S[g + G], S[g + 2G], ..., so every unit is read once per
epoch, by exactly one lane, and the rows of a batch come from G different units. A unit is read
as its pieces in order (most units are one piece; a big parquet row group is several). A lane's
tokens are its units' documents, each preceded by <|endoftext|>; a row is T + 1 consecutive
tokens (inputs and targets shifted by one) and the lane's next row starts at that row's last
target, so no token is lost or repeated.

**Fewer units than rows.** Then several lanes read the same unit in the same round: each starts
at another place in it (a fraction of the unit that depends on the epoch: `rotation`), reads to
its end and wraps around to where it started, so no two rows of a batch start at the same text,
and the unit is still read whole.

**State and resume.** A lane's state is (k, s, p): its k-th unit, segment s of it (the pieces
in the order the lane reads them), token offset p. Resuming opens each lane's current segment
and starts at p: the cost does not grow with the position.

**Workers** (`workers` processes) read and tokenize the pieces the lanes will need next (a lane
asks for more when fewer than PREFETCH_ROWS rows remain in what it holds). Lane g's reads go to
worker g mod workers, in order, so the pieces of a big row group are one decoding stream there.
Workers never decide what is read: their number does not change the data.

**Prepared shards.** Each shard is cut into non-overlapping blocks (T + 1 tokens at multiples of
T); all blocks are put in a seeded permutation per epoch, concatenated as above, and step s takes
positions [s*G, (s+1)*G) of it: every block once per epoch. The state is that position.

The fixed validation set is built by data.validation.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.shards import read_prepared, token_dtype
from data.sources import DataError, Source, Unit
from tokenization.tokenizer import Tokenizer

Batch = tuple[torch.Tensor, torch.Tensor]
PREFETCH_ROWS = 32  # keep about this many rows per lane read or requested ahead
MAX_PENDING = 64  # pieces one lane may have requested and not yet received
STATE_VERSION = 2  # lanes saved as (unit, segment, offset)


def unit_tokens(source: Source, unit: Unit, tokenizer: Tokenizer, piece: int = 0,
                stream: Any = None) -> np.ndarray:
    """Every document of a unit's piece, tokenized and concatenated, each after
    <|endoftext|> (as prepare.py writes them)."""
    dtype = token_dtype(tokenizer.n_vocab)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    pieces = [eot[:0]]
    for text in source.read(unit, piece, stream):
        pieces += [eot, np.array(tokenizer.encode(text), dtype=dtype)]
    return np.concatenate(pieces)


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Batch:
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


def rows_to_batch(rows: list[np.ndarray] | np.ndarray, device: torch.device) -> Batch:
    blocks = torch.from_numpy(np.stack(rows).astype(np.int64))
    return _to_device(blocks[:, :-1], blocks[:, 1:], device)


# ----------------------------------------------------------------------------- the order

def _mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int: a 64-bit hash with good avalanche."""
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9 % 2**64
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB % 2**64
    return x ^ (x >> 31)


def permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """A permutation of range(n) fixed by (seed, epoch) forever: indices sorted by splitmix64
    outputs (computed with numpy), so no library version can change the data order."""
    key = _mix64((_mix64(seed % 2**64) + epoch) % 2**64)
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(key)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return np.argsort(x, kind="stable")


class Order:
    """The sequence S: a permutation of n items per epoch (or 0..n-1 unshuffled), concatenated;
    without repeat it ends after one epoch (S[i] is None)."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, repeat: bool = True,
                 keep: int = 4) -> None:
        self.n, self.seed, self.shuffle, self.repeat, self.keep = n, seed, shuffle, repeat, keep
        self._epochs: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def __getitem__(self, i: int) -> int | None:
        epoch, j = divmod(i, self.n)
        if epoch > 0 and not self.repeat:
            return None
        if not self.shuffle:
            return j
        if epoch not in self._epochs:  # lanes drift apart by an epoch or so: keep a few
            self._epochs[epoch] = permutation(self.n, self.seed, epoch)
            if len(self._epochs) > self.keep:
                self._epochs.popitem(last=False)
        self._epochs.move_to_end(epoch)
        return int(self._epochs[epoch][j])


def rank_rows(batch_size: int, accumulation: int, rank: int, world_size: int
              ) -> tuple[int, int]:
    """(G, first global row of this rank): rank r owns rows [r*A*B, (r+1)*A*B)."""
    per_rank = batch_size * accumulation
    return per_rank * world_size, rank * per_rank


def check_rows(state: dict[str, Any], rows: int, block_size: int, seed: int, what: str) -> None:
    """Resuming is exact only with the same global batch, context and seed: refuse the rest."""
    if state["rows"] != rows:
        raise DataError(f"cannot resume: the checkpoint's global batch is {state['rows']} rows "
                        f"per step, this run's is {rows} (batch_size x accumulation_steps x "
                        "processes); keep the global batch (its split over processes and "
                        "accumulation may change)")
    if state["block_size"] != block_size:
        raise DataError(f"cannot resume: block_size was {state['block_size']}, now {block_size}")
    if state["seed"] != seed:
        raise DataError(f"cannot resume: the data order was drawn with seed {state['seed']}, "
                        f"this run has {seed}")
    if state["fingerprint"] != what:
        raise DataError("cannot resume: the data is not the same as the checkpoint's (its list "
                        "of units or blocks differs); resume with the same --data")


# ----------------------------------------------------------------------------- workers

_worker: dict[str, Any] = {}


def _watch_parent(parent: int) -> None:
    while True:  # a worker outlives a killed trainer by a second at most
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)


def _init_worker(source: Source, units: list[Unit], tokenizer: Tokenizer, parent: int) -> None:
    # Ctrl-C and SIGTERM go to the whole process group; the trainer decides when to stop (it
    # finishes its step and saves), so the workers keep serving until it shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _worker.update(source=source, units=units, tokenizer=tokenizer)


def _read_in_worker(unit: int, piece: int, lane: int) -> np.ndarray:
    return unit_tokens(_worker["source"], _worker["units"][unit], _worker["tokenizer"], piece,
                       stream=lane)


class _Ready:
    """A result computed at once, shaped like a Future."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value

    def cancel(self) -> bool:
        return True


class UnitReader:
    """Reads and tokenizes pieces of units: in this process, or ahead of time in worker
    processes. Lane g's reads all go to worker g mod workers, in the order asked, so the pieces
    of one big row group continue one decoding stream there."""

    def __init__(self, source: Source, units: list[Unit], tokenizer: Tokenizer,
                 workers: int) -> None:
        self.source, self.units, self.tokenizer = source, units, tokenizer
        context = multiprocessing.get_context("fork")
        self.pools = [concurrent.futures.ProcessPoolExecutor(
            1, mp_context=context, initializer=_init_worker,
            initargs=(source, units, tokenizer, os.getpid())) for _ in range(workers)]
        # Fork the workers now, while this process is quiet (no logging or TensorBoard
        # threads yet): a fork copies whatever locks other threads hold at that moment.
        for pool in self.pools:
            pool.submit(os.getpid).result()

    def request(self, lane: int, unit: int | None, piece: int = 0):
        if unit is None:  # the end of a sequence that does not repeat
            return _Ready(None)
        if not self.pools:
            return _Ready(unit_tokens(self.source, self.units[unit], self.tokenizer, piece,
                                      stream=lane))
        return self.pools[lane % len(self.pools)].submit(_read_in_worker, unit, piece, lane)

    def close(self, wait: bool = False) -> None:
        """Stop the workers: reads not started are dropped; with `wait`, the ones under way
        are let finish first (nothing of this reader runs after it returns)."""
        for pool in self.pools:
            pool.shutdown(wait=wait, cancel_futures=True)
        self.pools = []


def _result(future) -> np.ndarray | None:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool:
        raise DataError("a data worker process died (out of memory? killed?); resume with "
                        "--resume, perhaps with fewer --data_workers") from None


# ----------------------------------------------------------------------------- lanes

def rotation(position: int, units: int, rows: int) -> float:
    """Where in its unit the lane reading S[position] starts, as a fraction of the unit: 0 when
    there are at least as many units as rows. Otherwise a round of G positions spans at most
    m + 1 epochs (m = ceil(G / units)), and epoch e starts at (e mod (m + 1)) / (m + 1): lanes
    reading the same unit in one round start apart, and on average before its middle (a big row
    group is decoded up to the start once more: 1 + m / (2m + 2) < 1.5 times on average)."""
    if units >= rows:
        return 0.0
    starts = -(-rows // units) + 1
    return (position // units) % starts / starts


class UnitSizes:
    """The running mean of tokens per piece, shared by a loader's lanes: how many pieces to
    request ahead so that about PREFETCH_ROWS rows are on their way."""

    def __init__(self) -> None:
        self.units, self.tokens = 0, 0

    def add(self, tokens: int) -> None:
        self.units, self.tokens = self.units + 1, self.tokens + tokens

    def mean(self, default: int) -> float:
        return max(1.0, self.tokens / self.units) if self.units else default


@dataclass(frozen=True)
class Plan:
    """How a lane reads its k-th unit: `pieces` pieces starting at piece `first`, the first of
    them from token fraction `fraction` on; segment s is piece (first + s) % pieces, and when
    fraction > 0, one more segment at the end holds the first piece's part before it."""

    unit: int | None  # None: the order has ended (no repeat)
    pieces: int = 1
    first: int = 0
    fraction: float = 0.0

    @property
    def segments(self) -> int:
        return self.pieces + (1 if self.fraction > 0 else 0)

    def piece(self, s: int) -> int:
        return (self.first + s) % self.pieces


class Lane:
    """One global row's token stream: units S[g], S[g + G], ... read piece by piece."""

    def __init__(self, index: int, stride: int, order: Order, units: list[Unit],
                 request: Callable[..., Any], sizes: UnitSizes, k: int = 0, s: int = 0,
                 p: int = 0) -> None:
        self.index, self.stride, self.order, self.units = index, stride, order, units
        self.request, self.sizes = request, sizes
        self.k, self.s, self.p = k, s, p  # the next row starts at token p of segment s of unit k
        self.loaded: list[np.ndarray] = []  # segments from (k, s) on, read so far
        self.pending: collections.deque = collections.deque()  # (plan, segment, future)
        self.asked = (k, s)  # the next segment to request
        self.head: tuple[int, np.ndarray] | None = None  # unit k's first piece before `fraction`
        self.empty = 0  # segments in a row without a token
        self._plans: dict[int, Plan] = {}

    def plan(self, k: int) -> Plan:
        if k not in self._plans:
            position = self.index + k * self.stride
            unit = self.order[position]
            if unit is None:
                self._plans[k] = Plan(None)
            else:
                pieces = self.units[unit].pieces
                x = rotation(position, self.order.n, self.stride) * pieces
                self._plans[k] = Plan(unit, pieces, int(x), x - int(x))
            for old in [j for j in self._plans if j < self.k]:
                del self._plans[old]
        return self._plans[k]

    def _ask(self) -> None:
        k, s = self.asked
        plan = self.plan(k)
        if plan.unit is None:
            future = _Ready(None)
        elif s == plan.pieces:  # the head of the first piece: kept from segment 0 if read here
            future = None
        else:
            future = self.request(self.index, plan.unit, plan.piece(s))
        self.pending.append((plan, k, s, future))
        self.asked = (k, s + 1) if s + 1 < plan.segments else (k + 1, 0)

    def _receive(self) -> np.ndarray | None:
        plan, k, s, future = self.pending.popleft()
        if future is None and self.head is not None and self.head[0] == k:
            head, self.head = self.head[1], None
            return head
        if future is None:  # resumed past segment 0: read the first piece again
            future = self.request(self.index, plan.unit, plan.first)
        tokens = _result(future)
        if tokens is None or plan.fraction == 0:
            return tokens
        cut = int(plan.fraction * len(tokens))
        if s == 0:
            self.head = (k, tokens[:cut])
            return tokens[cut:]
        return tokens[:cut]

    def _available(self) -> int:
        return sum(len(tokens) for tokens in self.loaded) - self.p

    def _prefetch(self, want: int) -> None:
        """Request pieces until about `want` tokens are held or on their way."""
        if not self.loaded:  # the first segment's size, and p within it, decide what comes next
            if not self.pending:
                self._ask()
            return
        mean = self.sizes.mean(default=want)
        while len(self.pending) < MAX_PENDING and \
                self._available() + len(self.pending) * mean < want:
            self._ask()

    def _next_segment(self) -> None:
        """Move (k, s) past the segment just used up."""
        plan = self.plan(self.k)
        self.k, self.s = (self.k, self.s + 1) if self.s + 1 < plan.segments else \
            (self.k + 1, 0)

    def row(self, length: int, advance: int) -> np.ndarray | None:
        """The next `length` tokens, then move on by `advance`; None at the end of the data."""
        while self._available() < length:
            self._prefetch(length)
            if not self.pending:
                self._ask()
            tokens = self._receive()
            if tokens is None:
                return None
            self.sizes.add(len(tokens))
            self.empty = self.empty + 1 if len(tokens) == 0 else 0
            if self.empty and self.empty > 2 * sum(u.pieces for u in self.units) + 2:
                raise DataError("the data has no documents (empty, filtered out, or all "
                                "shorter than 20 characters after cleaning)")
            self.loaded.append(tokens)
        pieces, need, offset = [], length, self.p
        for tokens in self.loaded:
            piece = tokens[offset:offset + need]
            pieces.append(piece)
            need, offset = need - len(piece), max(0, offset - len(tokens))
            if not need:
                break
        self.p += advance
        while self.loaded and self.p >= len(self.loaded[0]):
            self.p -= len(self.loaded.pop(0))
            self._next_segment()
        self._prefetch(PREFETCH_ROWS * length)
        return np.concatenate(pieces)

    def close(self) -> None:
        for _, _, _, future in self.pending:
            if future is not None:
                future.cancel()


class StreamingLoader:
    """Batches of this rank's rows from a source's units; `state_dict` resumes exactly, on any
    number of processes and workers with the same global batch."""

    def __init__(self, source: Source, tokenizer: Tokenizer, block_size: int, batch_size: int,
                 split: str = "train", accumulation: int = 1, rank: int = 0,
                 world_size: int = 1, workers: int = 0, seed: int = 0,
                 device: torch.device | str = "cpu", repeat: bool = True) -> None:
        self.units = source.units(split)
        self.fingerprint = source.fingerprint(split)
        self.revision = source.revision
        self.block_size, self.batch_size, self.accumulation = block_size, batch_size, accumulation
        self.rows, self.first_row = rank_rows(batch_size, accumulation, rank, world_size)
        self.seed, self.device = seed, torch.device(device)
        self.order = Order(len(self.units), seed, repeat=repeat)
        self.reader = UnitReader(source, self.units, tokenizer, workers)
        self.sizes = UnitSizes()
        self.positions = {g: (0, 0, 0) for g in self._my_rows()}  # (k, s, p) before lanes exist
        self.lanes: list[Lane] | None = None
        self.micro = 0  # the next micro-batch of the step

    def _my_rows(self) -> range:
        return range(self.first_row, self.first_row + self.batch_size * self.accumulation)

    def _start(self) -> list[Lane]:
        lanes = [Lane(g, self.rows, self.order, self.units, self.reader.request, self.sizes,
                      *self.positions[g]) for g in self._my_rows()]
        for lane in lanes:  # every lane's first piece requested at once: workers read in parallel
            lane._prefetch(self.block_size + 1)
        return lanes

    def next_batch(self) -> Batch:
        if self.lanes is None:
            self.lanes = self._start()
        B, T = self.batch_size, self.block_size
        rows = [lane.row(T + 1, T) for lane in self.lanes[self.micro * B:(self.micro + 1) * B]]
        if any(row is None for row in rows):
            raise StopIteration  # not repeating: the data has run out
        self.micro = (self.micro + 1) % self.accumulation
        return rows_to_batch(rows, self.device)

    def state_dict(self) -> dict[str, Any]:
        """This rank's lanes (merge_states joins the ranks'); taken between optimizer steps."""
        lanes = {lane.index: [lane.k, lane.s, lane.p] for lane in self.lanes} if self.lanes \
            else {g: list(ksp) for g, ksp in self.positions.items()}
        return {"kind": "lanes", "version": STATE_VERSION, "rows": self.rows,
                "block_size": self.block_size, "seed": self.seed,
                "fingerprint": self.fingerprint, "revision": self.revision,
                "units": len(self.units), "lanes": lanes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "lanes":
            raise DataError("cannot resume: the checkpoint's data position is not from a "
                            "streamed source (was it trained on prepared shards?)")
        if state.get("version") != STATE_VERSION:
            raise DataError("cannot resume: the checkpoint's data position was saved by an "
                            "older version of the loader; start a new run (or --init_from it)")
        check_rows(state, self.rows, self.block_size, self.seed, self.fingerprint)
        self.close_lanes()
        self.positions = {g: tuple(state["lanes"][g]) for g in self._my_rows()}
        self.micro = 0

    def close_lanes(self) -> None:
        for lane in self.lanes or []:
            lane.close()
        self.lanes = None

    def close(self) -> None:
        self.close_lanes()
        self.reader.close()

    def __iter__(self):
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """One data state from every rank's: the lanes of all ranks (prepared: rank 0's, which all
    ranks share)."""
    merged = dict(states[0])
    if merged.get("kind") == "lanes":
        merged["lanes"] = {g: ksp for state in states for g, ksp in state["lanes"].items()}
    return merged


def epochs_read(state: dict[str, Any]) -> float | None:
    """Passes over the training split a saved data state has made: units read to their end over
    the split's units (streamed), or blocks taken over blocks (prepared); None where the state
    does not say (prepared states saved before they recorded their blocks)."""
    if state.get("kind") == "lanes" and state.get("units"):
        return sum(k for k, _, _ in state["lanes"].values()) / state["units"]
    if state.get("kind") == "prepared" and state.get("blocks"):
        return state["position"] / state["blocks"]
    return None


# ----------------------------------------------------------------------------- prepared shards

class PreparedLoader:
    """Blocks of memory-mapped shards, every block once per epoch in a seeded order; the same
    global rows at any number of processes (see the module's docstring)."""

    def __init__(self, shards: list[np.ndarray], block_size: int, batch_size: int,
                 accumulation: int = 1, rank: int = 0, world_size: int = 1, seed: int = 0,
                 device: torch.device | str = "cpu", shuffle: bool = True,
                 repeat: bool = True) -> None:
        counts = [(len(s) - 1) // block_size for s in shards]
        self.shards = [s for s, n in zip(shards, counts) if n > 0]
        if not self.shards:
            longest = max((len(s) for s in shards), default=0)
            raise DataError(f"only {longest} tokens in the longest shard; a block needs "
                            f"{block_size + 1} (use more data or a smaller --block_size)")
        self.first_block = np.cumsum([0] + [n for n in counts if n > 0])
        self.blocks = int(self.first_block[-1])
        self.block_size, self.batch_size, self.accumulation = block_size, batch_size, accumulation
        self.rows, self.first_row = rank_rows(batch_size, accumulation, rank, world_size)
        self.seed, self.device = seed, torch.device(device)
        self.order = Order(self.blocks, seed, shuffle, repeat, keep=2)  # 8 bytes per block
        self.position, self.micro = 0, 0  # the step's first position in the order

    @classmethod
    def from_folder(cls, folder: str | Path, split: str, tokenizer: Tokenizer, block_size: int,
                    batch_size: int, **options: Any) -> PreparedLoader:
        return cls(read_prepared(folder, split, tokenizer), block_size, batch_size, **options)

    def _block(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.first_block, index, side="right")) - 1
        start = (index - int(self.first_block[shard])) * self.block_size
        return np.asarray(self.shards[shard][start:start + self.block_size + 1])

    def next_batch(self) -> Batch:
        first = self.position + self.first_row + self.micro * self.batch_size
        picks = [self.order[i] for i in range(first, first + self.batch_size)]
        if any(pick is None for pick in picks):
            raise StopIteration
        self.micro += 1
        if self.micro == self.accumulation:
            self.position, self.micro = self.position + self.rows, 0
        return rows_to_batch([self._block(pick) for pick in picks], self.device)

    def _fingerprint(self) -> str:
        return f"{self.blocks} blocks of {self.block_size + 1} tokens"

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "prepared", "rows": self.rows, "block_size": self.block_size,
                "seed": self.seed, "fingerprint": self._fingerprint(),
                "epoch": self.position // self.blocks, "position": self.position,
                "blocks": self.blocks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "prepared":
            raise DataError("cannot resume: the checkpoint's data position is not from prepared "
                            "shards (was it trained on a streamed source?)")
        check_rows(state, self.rows, self.block_size, self.seed, self._fingerprint())
        self.position, self.micro = state["position"], 0

    def close(self) -> None:
        pass


def take_batches(loader, n: int) -> list[Batch]:
    """The first n batches (fewer if the loader runs out): fixed validation batches."""
    batches = []
    for _ in range(n):
        try:
            batches.append(loader.next_batch())
        except StopIteration:
            break
    return batches
