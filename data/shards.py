"""Pre-tokenized shards: the files data/prepare.py writes and the prepared loader reads.

A folder holds `train_000000.bin`, `train_000001.bin`, ..., `val_000000.bin`, ..., and `meta.json`
(written last: its presence means the folder is complete). Each shard is a 1,024-byte header,
b"GPTSHARD" then JSON padded with spaces (source, tokenizer name and fingerprint, dtype, token
count, largest id, CRC-32 of the ids, the documents it covers), followed by the token ids: uint16
when the vocabulary fits, else uint32. `meta.json` repeats each shard's count, largest id and
checksum, so that opening a folder checks every shard against it: a truncated, replaced or
corrupted shard, or one with ids beyond the tokenizer's vocabulary, is refused in one line.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from data.sources import DataError
from tokenization.tokenizer import Tokenizer

MAGIC = b"GPTSHARD"
HEADER_BYTES = 1024
FORMAT = "gpt-pretrain-shards/3"  # /3: shards hold whole units, headers their item range
READABLE_FORMATS = (FORMAT, "gpt-pretrain-shards/2")  # older folders still train
VERIFIED = ".verified.json"  # shards whose checksum was checked, by size and modification time
DTYPES = ("uint16", "uint32")
CHECK_BYTES = 64 << 20  # checksums are computed in pieces of this size


SHARD_NAME = re.compile(r"(train|val)_\d{6}\.bin")


def shard_path(folder: Path, split: str, index: int) -> Path:
    return folder / f"{split}_{index:06d}.bin"


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    """meta.json, atomically: its presence means the folder is complete."""
    tmp = folder / f".meta.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, folder / "meta.json")


def token_dtype(n_vocab: int) -> np.dtype:
    """uint16 when every id fits (GPT-2's 50,257 does), else uint32: half the memory when it can."""
    return np.dtype(np.uint16) if n_vocab <= 2**16 else np.dtype(np.uint32)


def document_tokens(tokenizer: Tokenizer, text: str) -> list[int]:
    """A document as the model sees it, in shards and in packing lanes: <|endoftext|> first,
    marking a fresh start."""
    return [tokenizer.eot_id, *tokenizer.encode(text)]


def checksum(data) -> int:
    """CRC-32 of a buffer, piece by piece (zlib releases the GIL: shards check in parallel)."""
    view, crc = memoryview(data).cast("B"), 0
    for start in range(0, len(view), CHECK_BYTES):
        crc = zlib.crc32(view[start:start + CHECK_BYTES], crc)
    return crc


def shard_record(tokens: np.ndarray) -> dict[str, int]:
    """What meta.json and the header say of a shard's ids."""
    return {"tokens": len(tokens), "max_id": int(tokens.max()) if len(tokens) else -1,
            "crc32": checksum(tokens)}


def write_shard(path: Path, tokens: np.ndarray, header: dict[str, Any]) -> None:
    """Atomically: a temporary file, fsync, rename. A crash never leaves half a shard."""
    meta = json.dumps({**header, "dtype": tokens.dtype.name, **shard_record(tokens)}).encode()
    if len(MAGIC) + len(meta) > HEADER_BYTES:
        raise ValueError("shard header too long")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + meta.ljust(HEADER_BYTES - len(MAGIC)))
            f.write(tokens.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"cannot write {path} ({err.strerror})") from None


def read_header(path: Path) -> dict[str, Any]:
    """The header, after checking it is ours, its dtype is one we write, and the file holds
    exactly the ids it announces."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        if not raw.startswith(MAGIC):
            raise ValueError("no shard header")
        header = json.loads(raw[len(MAGIC):].decode().strip())
        dtype, tokens = header["dtype"], header["tokens"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is not a shard written by data/prepare.py ({err})") from None
    if dtype not in DTYPES:
        raise DataError(f"{path} announces token dtype {dtype!r}; shards hold "
                        f"{' or '.join(DTYPES)}")
    if not isinstance(tokens, int) or tokens < 0:
        raise DataError(f"{path} announces {tokens!r} tokens")
    size, expected = path.stat().st_size, HEADER_BYTES + tokens * np.dtype(dtype).itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(f"{path} is {state} ({size:,} bytes, expected {expected:,}): rerun "
                        "data/prepare.py to rewrite it")
    return header


def open_shard(path: Path) -> np.ndarray:
    """The shard's tokens, memory-mapped: pages are read from disk only when touched."""
    header = read_header(path)
    return np.memmap(path, dtype=np.dtype(header["dtype"]), mode="r", offset=HEADER_BYTES,
                     shape=(header["tokens"],))


def verify_shard(path: Path, record: dict[str, int], n_vocab: int,
                 verified: dict[str, list[int]]) -> np.ndarray:
    """Open a shard and check it against its meta.json record: same count, ids within the
    vocabulary, and (once per file: `verified` remembers it by size and modification time) the
    checksum of every id."""
    if not path.is_file():
        raise DataError(f"{path} is missing (meta.json lists it); rerun data/prepare.py")
    header = read_header(path)
    if any(header.get(key) != record.get(key) for key in ("tokens", "max_id", "crc32")):
        raise DataError(f"{path} is not the shard meta.json describes (replaced or rewritten?); "
                        "rerun data/prepare.py")
    if record["max_id"] >= n_vocab:
        raise DataError(f"{path} holds id {record['max_id']}, beyond this tokenizer's "
                        f"{n_vocab} ids")
    tokens = open_shard(path)
    if verified.get(path.name) != file_stamp(path, record):
        if checksum(tokens) != record["crc32"]:
            raise DataError(f"{path} is corrupt (its ids do not match their checksum); rerun "
                            "data/prepare.py to rewrite it")
        verified[path.name] = file_stamp(path, record)
    return tokens


def file_stamp(path: Path, record: dict[str, int]) -> list[int]:
    """What must not change for a checked shard to stay checked."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, record["crc32"]]


def read_verified(folder: Path) -> dict[str, list[int]]:
    try:
        verified = json.loads((folder / VERIFIED).read_text())
        return verified if isinstance(verified, dict) else {}
    except (OSError, ValueError):
        return {}


def write_verified(folder: Path, verified: dict[str, list[int]]) -> None:
    """Best effort and atomic (a read-only folder is checked in full at every start)."""
    tmp = folder / f".{VERIFIED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(verified))
        os.replace(tmp, folder / VERIFIED)
    except OSError:
        tmp.unlink(missing_ok=True)


def is_prepared(spec: str) -> bool:
    return (Path(spec) / "meta.json").is_file()


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{folder} is not a complete prepared folder ({err}); run or finish "
                        "data/prepare.py") from None
    if not isinstance(meta, dict) or meta.get("format") not in READABLE_FORMATS:
        raise DataError(f"{folder}/meta.json is not from this version of data/prepare.py "
                        "(prepare the data again)")
    for split, totals in meta.get("splits", {}).items():
        records = totals.get("records") if isinstance(totals, dict) else None
        if not isinstance(records, list) or totals.get("shards") != len(records):
            raise DataError(f"{folder}/meta.json does not list the {split} shards it counts "
                            "(edited or damaged?); prepare the data again")
    return meta


def read_prepared(folder: str | Path, split: str, tokenizer: Tokenizer) -> list[np.ndarray]:
    """The memory-mapped shards of one split, after checking they match the run's tokenizer
    and meta.json (counts, ids within the vocabulary, checksums: all shards in parallel)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta["tokenizer_fingerprint"] != tokenizer.fingerprint():
        raise DataError(f"the shards in {folder} were written with tokenizer "
                        f"{meta['tokenizer']!r}, not this run's {tokenizer.name!r}; pass "
                        f"--tokenizer {meta.get('tokenizer_arg', meta['tokenizer'])} or prepare "
                        "the data again")
    if split not in meta["splits"]:
        raise DataError(f"{folder} has no {split!r} shards")
    records = meta["splits"][split]["records"]
    paths = [shard_path(folder, split, i) for i in range(len(records))]
    verified = read_verified(folder)
    before = dict(verified)
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        shards = list(pool.map(verify_shard, paths, records, [tokenizer.n_vocab] * len(paths),
                               [verified] * len(paths)))
    if verified != before:
        write_verified(folder, verified)
    return shards
