"""From documents to training batches, in two ways, both resumable exactly.

Packing (both ways): documents are tokenized, each preceded by <|endoftext|>, and concatenated into
one stream. A batch is B consecutive blocks of T inputs; the targets are the same tokens shifted
by one, so each batch reads B*T + 1 tokens and the next batch starts at its last target: no token
is lost or repeated at block boundaries.

- Streaming (`StreamingLoader`): DataLoader workers read and tokenize documents in the
  background. Document i goes to shard i % (world_size * workers), shard = rank * workers + worker,
  so no two ranks or workers read the same document. Each batch carries its worker's position
  (epoch, document, token offset), and the loader's state is those positions: a resumed run gets
  the very batches an uninterrupted one would. Memory holds one document and one batch per worker.
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
    """Batches (x, y, position) packed from one shard of a source, per DataLoader worker.

    A position {"epoch", "doc", "offset"} says where the next batch starts: token `offset` of
    the shard's document number `doc` in pass `epoch` over the source.
    """

    def __init__(self, source: Source, split: str, tokenizer: Tokenizer, block_size: int,
                 batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                 positions: dict[int, dict] | None = None, rotation: int = 0,
                 repeat: bool = True) -> None:
        self.source, self.split, self.tokenizer = source, split, tokenizer
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(workers, 1)
        self.positions = positions or {}
        self.rotation = rotation  # which worker role the DataLoader's worker 0 plays
        self.repeat = repeat

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
        info = get_worker_info()
        role = ((info.id if info else 0) + self.rotation) % self.workers
        shard = self.rank * self.workers + role
        count = self.world_size * self.workers
        start = self.positions.get(role, {"epoch": 0, "doc": 0, "offset": 0})
        need = self.batch_size * self.block_size + 1
        buffer: list[int] = []
        origins: list[tuple[int, int, int, int]] = []  # (epoch, doc, offset, length) of buffer
        for epoch, doc, offset, tokens in self._shard_tokens(shard, count, start):
            buffer.extend(tokens)
            origins.append((epoch, doc, offset, len(tokens)))
            while len(buffer) >= need:
                block = torch.tensor(buffer[:need], dtype=torch.long)
                x = block[:-1].view(self.batch_size, self.block_size)
                y = block[1:].view(self.batch_size, self.block_size)
                consumed = need - 1  # the last target starts the next batch
                del buffer[:consumed]
                while consumed:  # advance the position past what was consumed
                    e, d, o, n = origins[0]
                    if consumed >= n:
                        origins.pop(0)
                        consumed -= n
                    else:
                        origins[0] = (e, d, o + consumed, n - consumed)
                        consumed = 0
                e, d, o, _ = origins[0]
                yield x, y, {"role": role, "epoch": e, "doc": d, "offset": o}

    def _shard_tokens(self, shard: int, count: int, start: dict
                      ) -> Iterator[tuple[int, int, int, list[int]]]:
        """(epoch, doc, offset, tokens) from the start position on, pass after pass."""
        for epoch in itertools.count(start["epoch"]):
            docs = itertools.islice(self.source.documents(self.split), shard, None, count)
            seen = 0
            for doc, text in enumerate(docs):
                seen += 1
                first = epoch == start["epoch"]
                if first and doc < start["doc"]:
                    continue  # skipped without tokenizing
                offset = start["offset"] if first and doc == start["doc"] else 0
                yield epoch, doc, offset, document_tokens(self.tokenizer, text)[offset:]
            if seen == 0:
                raise DataError(f"{self.source.name} ({self.split}) gives shard {shard} of {count} "
                                "no documents: it has fewer documents than ranks x workers")
            if not self.repeat:
                return


class StreamingLoader:
    """Batches from a source, tokenized in background workers; `state_dict` resumes exactly."""

    def __init__(self, source: Source, tokenizer: Tokenizer, block_size: int, batch_size: int,
                 split: str = "train", rank: int = 0, world_size: int = 1, workers: int = 0,
                 device: torch.device | str = "cpu", repeat: bool = True) -> None:
        self.source, self.tokenizer, self.split = source, tokenizer, split
        self.block_size, self.batch_size = block_size, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, workers
        self.device, self.repeat = torch.device(device), repeat
        self.positions: dict[int, dict] = {}
        self.next_role = 0
        self._batches: Iterator | None = None

    def _start(self) -> Iterator:
        dataset = PackedDocuments(self.source, self.split, self.tokenizer, self.block_size,
                                  self.batch_size, self.rank, self.world_size, self.workers,
                                  dict(self.positions), self.next_role, self.repeat)
        if self.workers == 0:
            return iter(dataset)
        return iter(DataLoader(dataset, batch_size=None, num_workers=self.workers,
                               prefetch_factor=4, persistent_workers=False))

    def next_batch(self) -> Batch:
        if self._batches is None:
            self._batches = self._start()
        x, y, position = next(self._batches)
        role = position.pop("role")
        self.positions[role] = position
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
                "positions": {k: dict(v) for k, v in self.positions.items()},
                "next_role": self.next_role}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "stream":
            raise DataError("the checkpoint's data position is not from a streaming loader")
        if (state["world_size"], state["workers"]) != (self.world_size, self.workers):
            raise DataError(f"cannot resume the data stream exactly: it was read by "
                            f"{state['world_size']} ranks x {state['workers']} workers, now "
                            f"{self.world_size} x {self.workers} (use the same --data_workers "
                            "and number of processes)")
        self.positions = {int(k): dict(v) for k, v in state["positions"].items()}
        self.next_role = state["next_role"]
        self._batches = None


# ----------------------------------------------------------------------------- prepared shards

class PreparedLoader:
    """Random blocks from memory-mapped shards; the same seed gives the same blocks."""

    def __init__(self, shards: list[np.ndarray], block_size: int, batch_size: int, seed: int,
                 device: torch.device | str = "cpu") -> None:
        self.shards = [s for s in shards if len(s) > block_size]
        if not self.shards:
            longest = max((len(s) for s in shards), default=0)
            raise DataError(f"only {longest} tokens in the longest shard; a block needs "
                            f"{block_size + 1} (use more data or a smaller --block_size)")
        # Every valid block start, numbered across shards (a block never crosses two shards).
        self.starts = np.cumsum([0] + [len(s) - block_size for s in self.shards])
        self.block_size, self.batch_size = block_size, batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def from_folder(cls, folder: str | Path, split: str, tokenizer: Tokenizer, block_size: int,
                    batch_size: int, seed: int, device: torch.device | str = "cpu"
                    ) -> PreparedLoader:
        return cls(read_prepared(folder, split, tokenizer), block_size, batch_size, seed, device)

    def next_batch(self) -> Batch:
        picks = torch.randint(int(self.starts[-1]), (self.batch_size,), generator=self.generator)
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
