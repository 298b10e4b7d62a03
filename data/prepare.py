"""Pre-tokenize a source into shards, once, so that training reads tokens at memory speed.

    python data/prepare.py --data fineweb-edu --tokenizer gpt2 --out out/fineweb-gpt2
    python models/gpt.py --preset 1b --data out/fineweb-gpt2

The source's units (data.sources) are read, cleaned and tokenized in a pool of processes, in
order, exactly as the streaming loader reads them (each unit's documents after <|endoftext|>),
and written to shards of about --shard_tokens tokens, each closed at a unit boundary and written
atomically. A shard's header records the units it holds, so an interrupted run restarted with
the same command opens the next unit directly (nothing before it is read again) and writes, byte
for byte, what one uninterrupted run writes. A Hub source is pinned to the revision the first
run read. `meta.json`, written last, marks the folder complete.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from data.shards import (
    FORMAT,
    SHARD_NAME,
    VERIFIED,
    file_stamp,
    read_header,
    read_verified,
    shard_path,
    token_dtype,
    write_meta,
    write_shard,
    write_verified,
)
from data.sources import DataError, Source, add_source_arguments, get_source
from tokenization.tokenizer import Tokenizer, get_tokenizer
from transformer_setup.cli import ArgumentParser, positive_int, run_main

if TYPE_CHECKING:
    from data.loader import UnitReader

# data.loader (torch) is imported where it is used: --help answers at once.

AHEAD_PER_WORKER = 4  # pieces requested ahead of the one being written, per worker


def identity(args, tokenizer: Tokenizer) -> dict[str, Any]:
    """What decides a folder's contents: the source, its options and the tokenizer."""
    return {"source": args.data, "text_field": args.text_field, "data_config": args.data_config,
            "min_int_score": args.min_int_score, "tokenizer": tokenizer.name,
            "tokenizer_fingerprint": tokenizer.fingerprint(), "format": FORMAT}


def identity_key(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def work_items(source: Source, split: str) -> list[tuple[int, int]]:
    """(unit index, piece) in the order shards hold them."""
    return [(u, piece) for u, unit in enumerate(source.units(split))
            for piece in range(unit.pieces)]


def tokens_in_order(reader: UnitReader, items: list[tuple[int, int]], start: int,
                    ahead: int):
    """The tokens of items[start:], in order, read ahead by the reader's workers. A unit's
    pieces all go to one worker (routed by unit), so a big row group is decoded once."""
    pending: collections.deque = collections.deque()
    for unit, piece in items[start:]:
        pending.append(reader.request(unit, unit, piece))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def completed_shards(folder: Path, split: str, key: str, units: str) -> tuple[int, int]:
    """(shards already written, work items they hold): where an interrupted run resumes. Its
    shards must hold this very list of units (a source that changed in between would mix two
    listings, and could move held-out text into training)."""
    index, end_item = 0, 0
    while shard_path(folder, split, index).exists():
        header = read_header(shard_path(folder, split, index))
        if header.get("identity") != key:
            raise DataError(f"{folder} holds shards of another source, tokenizer or version of "
                            f"prepare.py ({header.get('tokenizer')}); choose another --out or "
                            "pass --overwrite")
        if header.get("units") != units:
            raise DataError(f"{folder}: the source's {split} units changed since these shards "
                            "were written (files added, removed or rewritten); pass --overwrite "
                            "to prepare it again")
        index, end_item = index + 1, header["end_item"]
    return index, end_item


def prepared_revision(folder: Path) -> str | None:
    """The Hub revision the folder's first shard was read at (a restart reads the same)."""
    for split in ("val", "train"):
        if shard_path(folder, split, 0).exists():
            return read_header(shard_path(folder, split, 0)).get("revision")
    return None


def prepare_split(source: Source, split: str, tokenizer: Tokenizer, folder: Path,
                  shard_tokens: int, workers: int, key: str = "") -> dict[str, Any]:
    """Write one split's shards (resuming after the last complete one); return its totals."""
    units = source.fingerprint(split)
    done_marker = folder / f".{split}.complete"
    if done_marker.exists():
        totals = json.loads(done_marker.read_text())
        if totals.get("identity") == key and totals.get("fingerprint") == units:
            return totals
        raise DataError(f"{folder} holds finished {split} shards of another source, tokenizer "
                        "or listing of it (files added or changed?); choose another --out or "
                        "pass --overwrite")
    items = work_items(source, split)
    index, next_item = completed_shards(folder, split, key, units)
    header = {"tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint(),
              "identity": key, "split": split, "revision": source.revision, "units": units}
    pending: list[np.ndarray] = []
    first_item = item = next_item

    def flush() -> None:
        nonlocal index, first_item, pending
        tokens = np.concatenate(pending)
        documents = int(np.count_nonzero(tokens == tokenizer.eot_id))
        write_shard(shard_path(folder, split, index), tokens,
                    {**header, "index": index, "first_item": first_item, "end_item": item,
                     "documents": documents})
        index, first_item, pending = index + 1, item, []

    from data.loader import UnitReader

    progress = tqdm(desc=split, unit="unit", initial=next_item, total=len(items), disable=None)
    reader = UnitReader(source, source.units(split), tokenizer, workers)
    try:
        pending_tokens = 0
        for tokens in tokens_in_order(reader, items, next_item, AHEAD_PER_WORKER * workers):
            pending.append(tokens)
            pending_tokens += len(tokens)
            item += 1
            if pending_tokens >= shard_tokens:
                flush()
                pending_tokens = 0
            progress.update(1)
    finally:
        reader.close(wait=True)  # an interrupted run leaves no worker reading behind it
    progress.close()
    if pending and sum(map(len, pending)):
        flush()
    if index == 0:
        raise DataError(f"source {source.name!r} has no {split} documents")
    headers = [read_header(shard_path(folder, split, i)) for i in range(index)]
    records = [{k: h[k] for k in ("tokens", "max_id", "crc32")} for h in headers]
    totals = {"shards": index, "documents": sum(h["documents"] for h in headers),
              "tokens": sum(r["tokens"] for r in records), "records": records, "identity": key,
              "fingerprint": units}
    verified = read_verified(folder)  # their checksums were just computed: no re-check later
    verified.update({shard_path(folder, split, i).name: file_stamp(shard_path(folder, split, i),
                                                                   record)
                     for i, record in enumerate(records)})
    write_verified(folder, verified)
    done_marker.write_text(json.dumps(totals))
    return totals


def claim_folder(folder: Path, ident: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The folder's finished meta.json when it holds this very data (nothing to do), None when
    it is free (or --overwrite cleared it); refuse a folder of other data or other files."""
    meta_path = folder / "meta.json"
    theirs = None
    if meta_path.exists():
        try:
            theirs = json.loads(meta_path.read_text())
        except ValueError:
            theirs = {}
        if theirs.get("identity") == ident and theirs.get("format") == FORMAT and not overwrite:
            return theirs
    ours = [p for p in folder.iterdir() if SHARD_NAME.fullmatch(p.name)
            or p.name in ("meta.json", ".val.complete", ".train.complete", VERIFIED)]
    others = [p for p in folder.iterdir() if p not in ours and not p.name.startswith(".")]
    if others:
        raise DataError(f"{folder} holds other files ({others[0].name}, ...); choose an empty "
                        "or new --out")
    if theirs is not None and not overwrite:
        what = theirs.get("identity", {}).get("source", theirs.get("source", "other data"))
        raise DataError(f"{folder} already holds shards of {what!r} (tokenizer "
                        f"{theirs.get('tokenizer')}); choose another --out or pass --overwrite")
    if overwrite:
        for path in ours:
            path.unlink()
    return None


def plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Pre-tokenize a data source into shards.")
    parser.add_argument("--data", required=True, help="pydocs, fineweb-edu, a path or glob, ...")
    parser.add_argument("--tokenizer", required=True, help="gpt2, bytes or a tokenizer folder")
    parser.add_argument("--out", required=True, help="folder for the shards")
    parser.add_argument("--shard_tokens", type=positive_int, default=100_000_000,
                        help="tokens per shard (closed at the next unit boundary)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="tokenizer processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards of other data in --out")
    add_source_arguments(parser)
    args = parser.parse_args(argv)

    tokenizer = get_tokenizer(args.tokenizer)
    folder = Path(args.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder} ({err.strerror})") from None
    ident = identity(args, tokenizer)
    meta = claim_folder(folder, ident, args.overwrite)
    if meta is None:
        source = get_source(args.data, args.text_field, args.data_config, args.min_int_score,
                            revision=prepared_revision(folder))
        splits = {split: prepare_split(source, split, tokenizer, folder, args.shard_tokens,
                                       args.workers, identity_key(ident))
                  for split in ("val", "train")}
        meta = {"format": FORMAT, "identity": ident, "source": args.data,
                "revision": source.revision,
                "tokenizer": tokenizer.name, "tokenizer_arg": args.tokenizer,
                "tokenizer_fingerprint": tokenizer.fingerprint(),
                "dtype": token_dtype(tokenizer.n_vocab).name, "splits": splits}
        write_meta(folder, meta)
    else:
        print(f"{folder} already holds this data, complete")
    for split, totals in meta["splits"].items():
        print(f"{split}: {totals['tokens']:,} tokens from {plural(totals['documents'], 'document')}"
              f" in {plural(totals['shards'], 'shard')}")
    print(f"written to {folder} ({meta['dtype']}); train with --data {folder} "
          f"--tokenizer {args.tokenizer}")


if __name__ == "__main__":
    run_main(main)
