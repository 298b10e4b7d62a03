"""Tokens per second delivered by the data loaders, and the memory they take.

    python scripts/benchmark_data.py --tokenizer gpt2 --data pydocs
    python scripts/benchmark_data.py --tokenizer bytes --json

Streaming: documents read, cleaned, tokenized and packed on the fly (0 workers: in the training
process; N: in N background processes). Prepared: the source is first written to shards by
data/prepare.py (timed separately), then blocks are drawn from memory-mapped shards. Each loader
runs for --seconds after a warm-up batch; peak memory is the process's resident set high-water
mark (children included for worker processes).
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import tempfile
import time
from pathlib import Path

from data import prepare
from data.loader import PreparedLoader, StreamingLoader
from data.sources import get_source
from tokenization.tokenizer import get_tokenizer
from transformer_setup.cli import ArgumentParser, run_main


def peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, children_kb) / 1024


def tokens_per_second(loader, tokens_per_batch: int, seconds: float) -> tuple[float, int]:
    loader.next_batch()  # warm-up: workers started, first documents read
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loader.next_batch()
        batches += 1
    return batches * tokens_per_batch / (time.perf_counter() - start), batches


def loader_rows(data: str, tokenizer_name: str, batch_size: int, block_size: int,
                seconds: float, worker_counts: list[int]) -> list[dict]:
    """tokens/s and peak memory of streaming (per worker count), prepare.py and prepared."""
    tokenizer = get_tokenizer(tokenizer_name)
    source = get_source(data)
    per_batch = batch_size * block_size
    rows = []
    for workers in worker_counts:
        loader = StreamingLoader(source, tokenizer, block_size, batch_size, workers=workers)
        rate, batches = tokens_per_second(loader, per_batch, seconds)
        rows.append({"loader": f"streaming, {workers} workers", "tokens_per_s": rate,
                     "batches": batches, "peak_rss_mb": peak_rss_mb()})
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            prepare.main(["--data", data, "--tokenizer", tokenizer_name, "--out", folder])
        prepare_seconds = time.perf_counter() - start
        total = json.loads((Path(folder) / "meta.json").read_text())["splits"]
        tokens = total["train"]["tokens"] + total["val"]["tokens"]
        rows.append({"loader": "prepare.py (writing shards)", "tokens_per_s": tokens /
                     prepare_seconds, "batches": 0, "peak_rss_mb": peak_rss_mb()})
        loader = PreparedLoader.from_folder(folder, "train", tokenizer, block_size, batch_size,
                                            seed=0)
        rate, batches = tokens_per_second(loader, per_batch, seconds)
        rows.append({"loader": "prepared (memory-mapped)", "tokens_per_s": rate,
                     "batches": batches, "peak_rss_mb": peak_rss_mb()})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pydocs")
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--batch_size", type=int, default=72)
    parser.add_argument("--block_size", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                        help="streaming worker counts to measure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = loader_rows(args.data, args.tokenizer, args.batch_size, args.block_size, args.seconds,
                       args.workers)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"data {args.data}, tokenizer {args.tokenizer}, batch {args.batch_size} x "
          f"{args.block_size} tokens")
    print(f"{'loader':<30}{'tokens/s':>14}{'batches':>9}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['loader']:<30}{r['tokens_per_s']:>14,.0f}{r['batches']:>9}"
              f"{r['peak_rss_mb']:>13,.0f}")


if __name__ == "__main__":
    run_main(main)
