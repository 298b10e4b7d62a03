"""From documents to training batches.

Documents are tokenized and concatenated into one stream, each preceded by <|endoftext|>, so the
model learns where documents begin. Batches are blocks of block_size + 1 consecutive tokens drawn at
random offsets: inputs are the first block_size tokens, targets the same shifted by one.

The offsets come from a seeded torch.Generator whose state is saved in checkpoints, so a resumed
run draws the same batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from data.sources import DataError
from tokenization.tokenizer import Tokenizer


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32: half the memory when it can."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def tokenize_documents(documents: Iterable[str], tokenizer: Tokenizer,
                       batch_size: int = 256) -> np.ndarray:
    """One array of ids: <|endoftext|> doc1 <|endoftext|> doc2 ..."""
    dtype = token_dtype(tokenizer.n_vocab)
    chunks: list[np.ndarray] = []
    pending: list[str] = []

    def flush() -> None:
        for ids in tokenizer.encode_batch(pending):
            chunks.append(np.array([tokenizer.eot_id, *ids], dtype=dtype))
        pending.clear()

    for text in documents:
        pending.append(text)
        if len(pending) == batch_size:
            flush()
    flush()
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)


class RandomBlockLoader:
    """Batches of (inputs, targets), each (batch_size, block_size), at seeded random offsets."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 device: torch.device | str = "cpu") -> None:
        if len(tokens) < block_size + 1:
            raise DataError(f"only {len(tokens)} tokens; a block needs {block_size + 1} "
                            "(use more data or a smaller --block_size)")
        self.tokens = torch.from_numpy(tokens.astype(np.int64, copy=False))
        self.block_size, self.batch_size = block_size, batch_size
        self.device = torch.device(device)
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,),
                               generator=self.generator)
        window = torch.arange(self.block_size + 1)
        blocks = self.tokens[starts[:, None] + window]
        x, y = blocks[:, :-1], blocks[:, 1:]
        if self.device.type == "cuda":  # pinned memory lets the copy overlap with compute
            return (x.pin_memory().to(self.device, non_blocking=True),
                    y.pin_memory().to(self.device, non_blocking=True))
        return x.to(self.device), y.to(self.device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def fixed_batches(tokens: np.ndarray, block_size: int, batch_size: int, n_batches: int,
                  seed: int = 0, device: torch.device | str = "cpu"
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The same n_batches every call, for validation losses comparable across steps and runs."""
    loader = RandomBlockLoader(tokens, block_size, batch_size, seed, device)
    return [loader.next_batch() for _ in range(n_batches)]
