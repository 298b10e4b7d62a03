"""The fixed held-out set: the same tokens at any number of processes, never trained on.

A run scores a fixed number of validation tokens (`val_tokens`, whole rows of block_size + 1
tokens at multiples of block_size) read in order from the held-out text: the source's `val`
split, the prepared folder's val shards, or all of `--val_data`. The rows depend on neither the
number of processes, nor the micro-batch, nor accumulation; each process scores its share of
them. The set's identity (what it was read from and how many tokens) is saved in checkpoints, so
a resumed run never compares a best validation loss measured on another set.

With `--val_data`, training reads the train split of `--data` minus everything `--val_data`
covers: files that are the same (path, or size and content), and any document whose text is one
of `--val_data`'s documents. An overlap that cannot be removed (`--val_data` is all of `--data`,
or the text prepared shards were made from) is refused.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data.loader import unit_tokens
from data.shards import is_prepared, read_meta, read_prepared
from data.sources import (
    DataError,
    FileSource,
    Source,
    document_key,
    file_key,
    get_source,
    local_files,
    split_revision,
)
from tokenization.tokenizer import Tokenizer

ROWS_PER_EVAL_ITER = 32  # eval_iters counts batches of this many rows
MAX_VAL_DATA_BYTES = 1 << 30  # --val_data is read whole (to keep its text out of training)


@dataclass
class ValidationSet:
    """The held-out rows (N x (block_size + 1) token ids) and what they were read from."""

    rows: np.ndarray
    identity: dict[str, Any]
    covers: Coverage | None = None  # with --val_data: what training must leave out


@dataclass
class Coverage:
    """What --val_data holds, for training to leave out."""

    spec: str
    files: set[str] = field(default_factory=set)  # file_keys
    contents: dict[int, set[str]] = field(default_factory=dict)  # size -> content SHA-256s
    documents: frozenset[bytes] = frozenset()  # document_keys
    prepared_identity: dict[str, Any] | None = None  # --val_data is a prepared folder of this
    prepared_val: str | None = None  # ... whose val shards hold the units of this fingerprint

    def holds(self, path: str, local: bool) -> bool:
        """Whether a file of --data is one of --val_data's: the same file, or (local) the same
        size and content."""
        if file_key(path) in self.files:
            return True
        if not local:
            return False
        try:
            size = os.path.getsize(path)
        except OSError:
            return False
        return size in self.contents and content_hash(path) in self.contents[size]


def validation_rows_count(val_tokens: int, block_size: int) -> int:
    return max(1, val_tokens // block_size)


def shortfall(what: str, have: int, rows: int, block_size: int) -> DataError:
    need = rows * block_size + 1
    return DataError(f"the validation text of {what} holds {have:,} tokens, fewer than the "
                     f"{need:,} asked for ({rows:,} rows of {block_size}); lower --val_tokens "
                     f"(or --eval_iters) to at most {max(0, have - 1):,}, or give more "
                     "held-out text with --val_data")


def source_rows(source: Source, split: str, tokenizer: Tokenizer, block_size: int,
                rows: int) -> np.ndarray:
    """The first `rows` rows of the split read in order as one stream (each unit's documents
    after <|endoftext|>, as training and prepare.py see them), reading no unit past them."""
    need, have, pieces = rows * block_size + 1, 0, []
    for unit in source.units(split):
        for piece in range(unit.pieces):
            tokens = unit_tokens(source, unit, tokenizer, piece, stream="validation")
            pieces.append(tokens)
            have += len(tokens)
            if have >= need:
                return blocks(np.concatenate(pieces), rows, block_size)
    raise shortfall(f"{source.name} ({split})", have, rows, block_size)


def blocks(stream: np.ndarray, rows: int, block_size: int) -> np.ndarray:
    """Rows of block_size + 1 tokens at multiples of block_size (consecutive rows share one
    token: a row's last target is the next row's first input)."""
    starts = np.arange(rows) * block_size
    return np.stack([stream[s:s + block_size + 1] for s in starts]).astype(np.int32)


def prepared_rows(folder: str, tokenizer: Tokenizer, block_size: int, rows: int) -> np.ndarray:
    """The first `rows` rows of a prepared folder's val shards, in order."""
    need, pieces = rows * block_size + 1, []
    for shard in read_prepared(folder, "val", tokenizer):  # memory-mapped: read what is used
        pieces.append(np.asarray(shard[:need - sum(map(len, pieces))]))
        if sum(map(len, pieces)) >= need:
            return blocks(np.concatenate(pieces), rows, block_size)
    raise shortfall(f"{folder} (val shards)", sum(map(len, pieces)), rows, block_size)


def validation_set(data: str, val_data: str | None, source: Source | None,
                   tokenizer: Tokenizer, block_size: int, val_tokens: int,
                   source_options: dict[str, Any], revision: str | None = None
                   ) -> ValidationSet:
    """The run's held-out rows. `source` is --data's source (None when --data is prepared):
    without --val_data its val split is the held-out text. `revision`: the Hub commit a
    resumed run's --val_data was read at (kept, so that the set does not move)."""
    rows = validation_rows_count(val_tokens, block_size)
    identity = {"tokens": rows * block_size, "block_size": block_size,
                "tokenizer": tokenizer.fingerprint()}
    spec = val_data or data
    if is_prepared(spec):
        val_rows = prepared_rows(spec, tokenizer, block_size, rows)
        meta = read_meta(Path(spec))
        identity["data"] = {"prepared": meta["identity"], "val": meta["splits"]["val"]["tokens"]}
        covers = prepared_coverage(spec, tokenizer) if val_data else None
        return ValidationSet(val_rows, identity, covers)
    if val_data is None:
        identity["data"] = {"source": source.name, "split": "val",
                            "units": source.fingerprint("val"), "revision": source.revision}
        return ValidationSet(source_rows(source, "val", tokenizer, block_size, rows), identity)
    val_source = get_source(val_data, **source_options, revision=revision)
    split = "val" if "val" in native_splits(val_source) else "all"
    identity["data"] = {"source": val_source.name, "split": split,
                        "units": val_source.fingerprint(split), "revision": val_source.revision}
    val_rows = source_rows(val_source, split, tokenizer, block_size, rows)
    return ValidationSet(val_rows, identity, source_coverage(val_data, val_source, split))


def native_splits(source: Source) -> tuple[str, ...]:
    """The splits a dataset has of its own (a Hub dataset's validation split, say)."""
    return tuple(source.files) if isinstance(source, FileSource) else ()


# ----------------------------------------------------------------------------- coverage

def content_hash(path: str) -> str:
    """SHA-256 of a local file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def source_coverage(spec: str, source: Source, split: str) -> Coverage:
    """The files and documents of a --val_data source's split (documents as training reads
    them: one per row, or per unit of a .txt file). It is read whole, so it must be of a
    validation set's size."""
    units = source.units(split)
    size = sum(u.nbytes for u in units)
    if size > MAX_VAL_DATA_BYTES:
        raise DataError(f"--val_data {spec} holds {size / 1e9:.1f} GB of text; it is read whole "
                        f"to keep it out of training, so give at most "
                        f"{MAX_VAL_DATA_BYTES / 1e9:.2f} GB (a held-out file, or a prepared "
                        "folder's val shards)")
    covers = Coverage(spec)
    if isinstance(source, FileSource):
        files = source.files.get("val", []) if split == "val" else \
            [f for fs in source.files.values() for f in fs]
        for path in files:
            covers.files.add(file_key(path))
            if not source.on_hub:
                covers.contents.setdefault(os.path.getsize(path), set()).add(
                    content_hash(path))
    keys = set()
    for unit in units:
        for piece in range(unit.pieces):
            keys.update(map(document_key, source.read(unit, piece, stream="coverage")))
    covers.documents = frozenset(keys)
    return covers


def prepared_coverage(folder: str, tokenizer: Tokenizer) -> Coverage:
    """A prepared --val_data folder covers the documents of its val shards (decoded: byte-level
    BPE gives back the cleaned text exactly) and the source they were held out of."""
    meta = read_meta(Path(folder))
    keys = set()
    for shard in read_prepared(folder, "val", tokenizer):
        tokens = np.asarray(shard)
        starts = np.flatnonzero(tokens == tokenizer.eot_id).tolist() + [len(tokens)]
        for a, b in zip(starts, starts[1:]):
            if b > a + 1:
                keys.add(document_key(tokenizer.decode(tokens[a + 1:b].tolist())))
    return Coverage(folder, documents=frozenset(keys), prepared_identity=meta["identity"],
                    prepared_val=meta["splits"]["val"].get("fingerprint"))


def without_validation(source: Source, covers: Coverage, data: str) -> Source:
    """--data's source minus what --val_data covers: its files, then its documents. A prepared
    --val_data made from --data itself must hold the val split --data has now: a .txt unit's
    text depends on where the listing cuts, so a changed listing could not be told apart."""
    same_data = covers.prepared_identity and covers.prepared_identity.get("source") == data
    if same_data and covers.prepared_val and covers.prepared_val != source.fingerprint("val"):
        raise DataError(f"the held-out split of {data} has changed since {covers.spec} was "
                        "prepared (files added or changed?): its validation shards could hold "
                        "training text; prepare it again")
    if isinstance(source, FileSource):
        files = [f for fs in source.files.values() for f in fs]
        same = [f for f in files if covers.holds(f, local=not source.on_hub)]
        if len(same) == len(files):
            raise DataError(f"--val_data {covers.spec} covers all of --data {data}: nothing "
                            "would be left to train on; give validation text that is not in "
                            "--data")
        if same:
            source = source.without_files({file_key(f) for f in same})
    source.excluded = covers.documents
    return source


def check_prepared_training(folder: str, covers: Coverage) -> None:
    """Prepared training shards cannot drop documents: refuse a --val_data whose text they may
    hold (the source they were prepared from, or any of its files)."""
    identity = read_meta(Path(folder))["identity"]
    if covers.prepared_identity is not None:
        if covers.prepared_identity == identity:
            return  # the same preparation: its val split was held out of its train split
        theirs = str(covers.prepared_identity.get("source"))
    else:
        theirs = covers.spec
    ours = str(identity.get("source"))
    if split_revision(theirs)[0] == split_revision(ours)[0]:
        raise DataError(f"--val_data {covers.spec} is the data the shards in {folder} were "
                        f"prepared from ({ours}); its text is in them: use that folder's own "
                        "validation shards (no --val_data) or other text")
    try:
        files = local_files(ours) or []
    except DataError:  # prepared elsewhere, from files this machine does not have
        files = []
    if any(covers.holds(str(p.resolve()), local=True) for p in files):
        raise DataError(f"--val_data {covers.spec} holds files that the shards in {folder} "
                        f"were prepared from ({ours}); give validation text that is not in them")
