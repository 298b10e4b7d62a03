"""Pre-tokenized shards: the files data/prepare.py writes and the prepared loader reads.

A folder holds `train_000000.bin`, `train_000001.bin`, ..., `val_000000.bin`, ..., and `meta.json`
(written last: its presence means the folder is complete). Each shard is a 1,024-byte header,
b"GPTSHARD" then JSON padded with spaces (tokenizer name and fingerprint, dtype, token count,
the documents it covers), followed by the token ids: uint16 when the vocabulary fits, else uint32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from data.sources import DataError
from tokenization.tokenizer import Tokenizer

MAGIC = b"GPTSHARD"
HEADER_BYTES = 1024
FORMAT = "gpt-pretrain-shards/1"


def shard_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}_{index:06d}.bin"


def write_shard(path: Path, tokens: np.ndarray, header: dict[str, Any]) -> None:
    """Atomically: a temporary file, fsync, rename. A crash never leaves half a shard."""
    meta = json.dumps({**header, "dtype": tokens.dtype.name, "tokens": len(tokens)}).encode()
    if len(MAGIC) + len(meta) > HEADER_BYTES:
        raise ValueError("shard header too long")
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + meta.ljust(HEADER_BYTES - len(MAGIC)))
        f.write(tokens.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        if not raw.startswith(MAGIC):
            raise ValueError("no shard header")
        header = json.loads(raw[len(MAGIC):].decode().strip())
        expected = HEADER_BYTES + header["tokens"] * np.dtype(header["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a shard written by data/prepare.py ({err})") from None
    if path.stat().st_size != expected:
        raise DataError(f"{path} is truncated: rerun data/prepare.py to rewrite it")
    return header


def open_shard(path: Path) -> np.ndarray:
    """The shard's tokens, memory-mapped: pages are read from disk only when touched."""
    header = read_header(path)
    return np.memmap(path, dtype=np.dtype(header["dtype"]), mode="r", offset=HEADER_BYTES,
                     shape=(header["tokens"],))


def is_prepared(spec: str) -> bool:
    return (Path(spec) / "meta.json").is_file()


def read_prepared(folder: str | Path, split: str, tokenizer: Tokenizer) -> list[np.ndarray]:
    """The memory-mapped shards of one split, after checking they match the run's tokenizer."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{folder} is not a complete prepared folder ({err}); run or finish "
                        "data/prepare.py") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{folder}/meta.json is not from data/prepare.py")
    if meta["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise DataError(f"the shards in {folder} were written with tokenizer "
                        f"{meta['tokenizer']!r}, not this run's {tokenizer.name!r}; pass "
                        f"--tokenizer {meta.get('tokenizer_arg', meta['tokenizer'])} or prepare "
                        "the data again")
    if split not in meta["splits"]:
        raise DataError(f"{folder} has no {split!r} shards")
    count = meta["splits"][split]["shards"]
    return [open_shard(shard_path(folder, split, i)) for i in range(count)]
