"""From documents to training batches, in two ways, both resumable exactly.

Packing (both ways): documents are tokenized, each preceded by <|endoftext|>, and concatenated into
streams. A row of a batch is T inputs and the same tokens shifted by one as targets (T + 1 tokens);
the next row of that stream starts at its last target: no token is lost or repeated at a block
boundary.

- Streaming (`StreamingLoader`): DataLoader workers read and tokenize documents in the
  background. Document i goes to shard i % (world_size * workers), shard = rank * workers + worker,
  so no two ranks or workers read the same document. Each batch carries its worker's state (where
  its document iterator is, and what each batch row still holds), and the loader's state is those
  states: a resumed run gets the very batches an uninterrupted one would. Memory holds about one
  document per batch row and worker, whatever the dataset size.
- Prepared (`PreparedLoader`): shards written by data/prepare.py are memory-mapped; blocks are drawn
  at random offsets from a seeded generator whose state is the loader's state.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data.shards import read_prepared
from data.sources import DataError, Source
from tokenization.tokenizer import Tokenizer

Batch = tuple[torch.Tensor, torch.Tensor]


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32: half the memory when it can."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def document_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """A document as the model sees it: <|endoftext|> first, marking a fresh start."""
    return [tokenizer.eot_id, *tokenizer.encode(text)]


def _to_device(x: torch.Tensor, y: torch.Tensor, device: torch.device) -> Batch:
    if device.type == "cuda":  # pinned memory lets the copy overlap with compute
        return (x.pin_memory().to(device, non_blocking=True),
                y.pin_memory().to(device, non_blocking=True))
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- streaming

class PackedDocuments(IterableDataset):
    """Batches (x, y, state) packed from one shard of a source, per DataLoader worker.

    Rows come from `lanes` token streams of whole documents, each packed without loss or
    repetition; lane l gives batch_size / lanes consecutive rows. One iterator over the shard's
    documents feeds the lane holding the fewest tokens. With one lane per row (the default, for
    training) a batch spans about batch_size different documents instead of one long stretch;
    one lane (for validation) wastes nothing at the end of a small split.

    The state after a batch: the iterator's position ("epoch", "next_doc": the next document of
    the shard to read) and each lane's leftover tokens as segments [doc, offset, length]. On
    resume those documents are read and tokenized again, and packing continues identically.
    """

    def __init__(self, source: Source, split: str, tokenizer: Tokenizer, block_size: int,
                 batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                 states: dict[int, dict] | None = None, rotation: int = 0,
                 repeat: bool = True, lanes: int | None = None) -> None:
        self.source, self.split, self.tokenizer = source, split, tokenizer
        self.block_size, self.batch_size = block_size, batch_size
        self.lanes = lanes or batch_size
        if batch_size % self.lanes:
            raise ValueError(f"batch_size {batch_size} is not a multiple of lanes {self.lanes}")
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)
        self.states = states or {}
        self.rotation = rotation  # which worker role the DataLoader's worker 0 plays
        self.repeat = repeat

    def _shard_documents(self, shard: int, count: int, start_epoch: int, first: int
                         ) -> Iterator[tuple[int, int, str]]:
        """(epoch, doc, text) of this shard from document `first` of pass `start_epoch` on."""
        for epoch in itertools.count(start_epoch):
            docs = itertools.islice(self.source.documents(self.split), shard, None, count)
            seen = 0
            for doc, text in enumerate(docs):
                seen += 1
                if doc >= first:
                    yield epoch, doc, text
            if seen == 0 and count == 1:
                raise DataError(f"{self.source.name} has no {self.split} documents (empty, or "
                                "all shorter than 20 characters after cleaning)")
            if seen == 0:
                raise DataError(f"{self.source.name} ({self.split}) gives shard {shard} of {count} "
                                "no documents: it has fewer documents than ranks x workers")
            first = 0
            if not self.repeat:
                return

    def _restore_lanes(self, shard: int, count: int, lane_segments: list[list[list[int]]]
                       ) -> list[np.ndarray]:
        """The lanes' leftover tokens, re-read from the documents their segments name."""
        wanted = {doc for segments in lane_segments for doc, _, _ in segments}
        tokens: dict[int, np.ndarray] = {}
        if wanted:
            for _, doc, text in self._shard_documents(shard, count, 0, min(wanted)):
                if doc in wanted:
                    tokens[doc] = self._tokenize(text)
                if doc >= max(wanted):
                    break
        return [np.concatenate([np.zeros(0, np.int32)] +
                               [tokens[doc][offset:offset + length]
                                for doc, offset, length in segments])
                for segments in lane_segments]

    def _tokenize(self, text: str) -> np.ndarray:
        return np.array(document_tokens(self.tokenizer, text), dtype=np.int32)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        info = get_worker_info()
        role = ((info.id if info else 0) + self.rotation) % self.workers
        shard, count = self.rank * self.workers + role, self.world_size * self.workers
        L, T = self.lanes, self.block_size
        rows = self.batch_size // L  # consecutive rows per lane
        need = rows * T + 1
        state = self.states.get(role, {"epoch": 0, "next_doc": 0, "lanes": [[]] * L})
        segments = [[list(seg) for seg in lane] for lane in state["lanes"]]
        lanes = self._restore_lanes(shard, count, segments)
        documents = self._shard_documents(shard, count, state["epoch"], state["next_doc"])
        epoch, next_doc = state["epoch"], state["next_doc"]
        while True:
            while min(len(lane) for lane in lanes) < need:
                neediest = min(range(L), key=lambda lane: len(lanes[lane]))
                try:
                    epoch, doc, text = next(documents)
                except StopIteration:
                    return  # not repeating: the last, partial batch is dropped
                tokens = self._tokenize(text)
                lanes[neediest] = np.concatenate([lanes[neediest], tokens])
                segments[neediest].append([doc, 0, len(tokens)])
                next_doc = doc + 1
            x = np.stack([lane[r * T:(r + 1) * T] for lane in lanes for r in range(rows)])
            y = np.stack([lane[r * T + 1:(r + 1) * T + 1] for lane in lanes for r in range(rows)])
            for lane in range(L):  # the last target starts the lane's next row
                lanes[lane] = lanes[lane][rows * T:]
                _advance(segments[lane], rows * T)
            yield torch.from_numpy(x).long(), torch.from_numpy(y).long(), {
                "role": role, "epoch": epoch, "next_doc": next_doc,
                "lanes": [[list(seg) for seg in lane] for lane in segments]}


def _advance(segments: list[list[int]], n: int) -> None:
    """Drop the first n tokens from a lane's list of [doc, offset, length] segments."""
    while n:
        doc, offset, length = segments[0]
        if n >= length:
            segments.pop(0)
            n -= length
        else:
            segments[0] = [doc, offset + n, length - n]
            n = 0


class StreamingLoader:
    """Batches from a source, tokenized in background workers; `state_dict` resumes exactly."""

    def __init__(self, source: Source, tokenizer: Tokenizer, block_size: int, batch_size: int,
                 split: str = "train", rank: int = 0, world_size: int = 1, workers: int = 0,
                 device: torch.device | str = "cpu", repeat: bool = True,
                 lanes: int | None = None) -> None:
        self.source, self.tokenizer, self.split = source, tokenizer, split
        self.block_size, self.batch_size, self.lanes = block_size, batch_size, lanes
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.device, self.repeat = torch.device(device), repeat
        self.states: dict[int, dict] = {}  # the latest state of each worker role
        self.next_role = 0
        self._batches: Iterator | None = None

    def _start(self) -> Iterator:
        dataset = PackedDocuments(self.source, self.split, self.tokenizer, self.block_size,
                                  self.batch_size, self.rank, self.world_size, self.workers,
                                  dict(self.states), self.next_role, self.repeat, self.lanes)
        if self.workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.workers,
                               prefetch_factor=4, persistent_workers=False))

    def next_batch(self) -> Batch:
        if self._batches is None:
            self._batches = self._start()
        x, y, state = next(self._batches)
        role = state.pop("role")
        self.states[role] = state
        self.next_role = (role + 1) % max(self.workers, 1)
        return _to_device(x, y, self.device)

    def __iter__(self) -> Iterator[Batch]:
        while True:
            try:
                yield self.next_batch()
            except StopIteration:
                return

    def state_dict(self) -> dict:
        return {"kind": "stream", "world_size": self.world_size, "workers": self.workers,
                "batch_size": self.batch_size, "block_size": self.block_size,
                "states": {k: dict(v) for k, v in self.states.items()},
                "next_role": self.next_role}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "stream":
            raise DataError("the checkpoint's data position is not from a streaming loader")
        saved = tuple(state[k] for k in ("world_size", "workers", "batch_size", "block_size"))
        now = (self.world_size, self.workers, self.batch_size, self.block_size)
        if saved != now:
            raise DataError(f"cannot resume the data stream exactly: it was read as "
                            f"{saved[0]} ranks x {saved[1]} workers, batches of {saved[2]} x "
                            f"{saved[3]}; now {now[0]} x {now[1]}, {now[2]} x {now[3]} (resume "
                            "with the same processes, --data_workers and batch shape)")
        self.states = {int(k): dict(v) for k, v in state["states"].items()}
        self.next_role = state["next_role"]
        self._batches = None


# ----------------------------------------------------------------------------- prepared shards

class PreparedLoader:
    """Random blocks from memory-mapped shards; the same seed gives the same blocks.

    Every rank draws the whole global batch (batch_size x world_size blocks) from the same
    generator and keeps its own slice, so N processes train on exactly the rows one process
    with an N-times larger batch would.
    """

    def __init__(self, shards: list[np.ndarray], block_size: int, batch_size: int, seed: int,
                 device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1) -> None:
        self.shards = [s for s in shards if len(s) > block_size]
        if not self.shards:
            longest = max((len(s) for s in shards), default=0)
            raise DataError(f"only {longest} tokens in the longest shard; a block needs "
                            f"{block_size + 1} (use more data or a smaller --block_size)")
        # Every valid block start, numbered across shards (a block never crosses two shards).
        self.starts = np.cumsum([0] + [len(s) - block_size for s in self.shards])
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_folder(cls, folder: str | Path, split: str, tokenizer: Tokenizer, block_size: int,
                    batch_size: int, seed: int, device: torch.device | str = "cpu",
                    rank: int = 0, world_size: int = 1) -> PreparedLoader:
        return cls(read_prepared(folder, split, tokenizer), block_size, batch_size, seed, device,
                   rank, world_size)

    def next_batch(self) -> Batch:
        picks = torch.randint(int(self.starts[-1]), (self.batch_size * self.world_size,),
                              generator=self.generator)
        picks = picks[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        rows = []
        for pick in picks.tolist():
            shard = int(np.searchsorted(self.starts, pick, side="right")) - 1
            start = pick - int(self.starts[shard])
            rows.append(np.asarray(self.shards[shard][start:start + self.block_size + 1]))
        blocks = torch.from_numpy(np.stack(rows).astype(np.int64))
        return _to_device(blocks[:, :-1], blocks[:, 1:], self.device)

    def state_dict(self) -> dict:
        return {"kind": "prepared", "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "prepared":
            raise DataError("the checkpoint's data position is not from a prepared loader")
        self.generator.set_state(state["generator"])


def take_batches(loader, n: int) -> list[Batch]:
    """The first n batches (fewer if the loader runs out): fixed validation batches."""
    batches = []
    for _ in range(n):
        try:
            batches.append(loader.next_batch())
        except StopIteration:
            break
    return batches
