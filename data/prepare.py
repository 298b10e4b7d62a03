"""Pre-tokenize a source into shards, once, so that training reads tokens at memory speed.

    python data/prepare.py --data fineweb-edu --tokenizer gpt2 --out data/fineweb-gpt2
    python models/gpt.py --preset 1b --data data/fineweb-gpt2

Documents are tokenized in a pool of processes, in order, and written to shards of about
--shard_tokens tokens, each closed at a document boundary and written atomically. Interrupted,
the same command resumes after the last complete shard, and the result is byte for byte what one
uninterrupted run writes. `meta.json`, written last, marks the folder complete.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.loader import document_tokens, token_dtype
from data.shards import FORMAT, read_header, shard_path, write_shard
from data.sources import DataError, Source, add_source_arguments, source_from_args
from tokenization.tokenizer import Tokenizer, get_tokenizer
from transformer_setup.cli import ArgumentParser, run_main

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


def completed_shards(folder: Path, split: str, tokenizer: Tokenizer) -> tuple[int, int]:
    """(shards already written, documents they cover): where an interrupted run resumes."""
    index, end_doc = 0, 0
    while shard_path(folder, split, index).exists():
        header = read_header(shard_path(folder, split, index))
        if header["tokenizer_fingerprint"] != tokenizer.fingerprint():
            raise DataError(f"{folder} holds shards of another tokenizer "
                            f"({header['tokenizer']}); choose a new --out")
        index, end_doc = index + 1, header["end_doc"]
    return index, end_doc


def prepare_split(source: Source, split: str, tokenizer: Tokenizer, folder: Path,
                  shard_tokens: int, workers: int) -> dict[str, int]:
    """Write one split's shards (resuming if some exist); return its totals."""
    done_marker = folder / f".{split}.complete"
    if done_marker.exists():
        return json.loads(done_marker.read_text())
    index, next_doc = completed_shards(folder, split, tokenizer)
    header = {"tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint(),
              "split": split}
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
    totals = {"shards": index, "documents": doc,
              "tokens": sum(read_header(shard_path(folder, split, i))["tokens"]
                            for i in range(index))}
    done_marker.write_text(json.dumps(totals))
    return totals


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Pre-tokenize a data source into shards.")
    parser.add_argument("--data", required=True, help="pydocs, fineweb-edu, a path or glob, ...")
    parser.add_argument("--tokenizer", required=True, help="gpt2, bytes or a tokenizer folder")
    parser.add_argument("--out", required=True, help="folder for the shards")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000,
                        help="tokens per shard (closed at the next document boundary)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="tokenizer processes")
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    if args.shard_tokens < 1 or args.workers < 1:
        parser.error("--shard_tokens and --workers must be positive")

    tokenizer = get_tokenizer(args.tokenizer)
    source = source_from_args(args)
    folder = Path(args.out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create {folder} ({err.strerror})") from None
    splits = {split: prepare_split(source, split, tokenizer, folder, args.shard_tokens,
                                   args.workers) for split in ("val", "train")}
    meta = {"format": FORMAT, "source": args.data, "tokenizer": tokenizer.name,
            "tokenizer_arg": args.tokenizer, "tokenizer_fingerprint": tokenizer.fingerprint(),
            "dtype": token_dtype(tokenizer.n_vocab).name, "splits": splits}
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    for split, totals in splits.items():
        print(f"{split}: {totals['tokens']:,} tokens from {totals['documents']:,} documents in "
              f"{totals['shards']} shards")
    print(f"written to {folder} ({meta['dtype']}); train with --data {folder} "
          f"--tokenizer {args.tokenizer}")


if __name__ == "__main__":
    run_main(main)
