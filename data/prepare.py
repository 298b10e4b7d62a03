"""Pre-tokenize a source into shards, once, so that training reads tokens at memory speed.

    python data/prepare.py --data fineweb-edu --tokenizer gpt2 --out out/fineweb-gpt2
    python models/gpt.py --preset 1b --data out/fineweb-gpt2

Documents are tokenized in a pool of processes, in order, and written to shards of about
--shard_tokens tokens, each closed at a document boundary and written atomically. Interrupted,
the same command resumes after the last complete shard, and the result is byte for byte what one
uninterrupted run writes. `meta.json`, written last, marks the folder complete.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from data.shards import (
    FORMAT,
    SHARD_NAME,
    document_tokens,
    read_header,
    shard_path,
    token_dtype,
    write_meta,
    write_shard,
)
from data.sources import DataError, Source, add_source_arguments, source_from_args
from tokenization.tokenizer import Tokenizer, get_tokenizer
from transformer_setup.cli import ArgumentParser, positive_int, run_main

DOCS_PER_TASK = 256
_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer: Tokenizer) -> None:
    global _worker_tokenizer
    _worker_tokenizer = tokenizer


def _encode(texts: list[str]) -> list[np.ndarray]:
    dtype = token_dtype(_worker_tokenizer.n_vocab)
    return [np.array(document_tokens(_worker_tokenizer, t), dtype=dtype) for t in texts]


def _chunks(docs: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(itertools.islice(docs, size)):
        yield chunk


def identity(args, tokenizer: Tokenizer) -> dict[str, Any]:
    """What decides a folder's contents: the source, its options and the tokenizer."""
    return {"source": args.data, "text_field": args.text_field, "data_config": args.data_config,
            "min_int_score": args.min_int_score, "tokenizer": tokenizer.name,
            "tokenizer_fingerprint": tokenizer.fingerprint()}


def identity_key(ident: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def completed_shards(folder: Path, split: str, key: str) -> tuple[int, int]:
    """(shards already written, documents they cover): where an interrupted run resumes."""
    index, end_doc = 0, 0
    while shard_path(folder, split, index).exists():
        header = read_header(shard_path(folder, split, index))
        if header.get("identity") != key:
            raise DataError(f"{folder} holds shards of another source or tokenizer "
                            f"({header.get('tokenizer')}); choose another --out or pass "
                            "--overwrite")
        index, end_doc = index + 1, header["end_doc"]
    return index, end_doc


def prepare_split(source: Source, split: str, tokenizer: Tokenizer, folder: Path,
                  shard_tokens: int, workers: int, key: str = "") -> dict[str, Any]:
    """Write one split's shards (resuming if some exist); return its totals."""
    done_marker = folder / f".{split}.complete"
    if done_marker.exists():
        totals = json.loads(done_marker.read_text())
        if totals.get("identity") == key:
            return totals
        raise DataError(f"{folder} holds finished {split} shards of another source or "
                        "tokenizer; choose another --out or pass --overwrite")
    index, next_doc = completed_shards(folder, split, key)
    header = {"tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint(),
              "identity": key, "split": split}
    docs = itertools.islice(source.documents(split), next_doc, None)
    pending: list[np.ndarray] = []
    first_doc = doc = next_doc

    def flush() -> None:
        nonlocal index, first_doc, pending
        tokens = np.concatenate(pending)
        write_shard(shard_path(folder, split, index),
                    tokens, {**header, "index": index, "first_doc": first_doc, "end_doc": doc})
        index, first_doc, pending = index + 1, doc, []

    progress = tqdm(desc=f"{split}", unit="doc", initial=next_doc, disable=None)
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(tokenizer,)) as pool:
        pending_tokens = 0
        for encoded in pool.imap(_encode, _chunks(docs, DOCS_PER_TASK)):
            for tokens in encoded:
                pending.append(tokens)
                pending_tokens += len(tokens)
                doc += 1
                if pending_tokens >= shard_tokens:
                    flush()
                    pending_tokens = 0
            progress.update(len(encoded))
    progress.close()
    if pending:
        flush()
    if index == 0:
        raise DataError(f"source {source.name!r} has no {split} documents")
    headers = [read_header(shard_path(folder, split, i)) for i in range(index)]
    records = [{k: h[k] for k in ("tokens", "max_id", "crc32")} for h in headers]
    totals = {"shards": index, "documents": doc, "tokens": sum(r["tokens"] for r in records),
              "records": records, "identity": key}
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
            or p.name in ("meta.json", ".val.complete", ".train.complete")]
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
                        help="tokens per shard (closed at the next document boundary)")
    parser.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                        help="tokenizer processes")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the shards of other data in --out")
    add_source_arguments(parser)
    args = parser.parse_args(argv)

    tokenizer = get_tokenizer(args.tokenizer)
    source = source_from_args(args)
    folder = Path(args.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder} ({err.strerror})") from None
    ident = identity(args, tokenizer)
    meta = claim_folder(folder, ident, args.overwrite)
    if meta is None:
        splits = {split: prepare_split(source, split, tokenizer, folder, args.shard_tokens,
                                       args.workers, identity_key(ident))
                  for split in ("val", "train")}
        meta = {"format": FORMAT, "identity": ident, "source": args.data,
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
