"""The data loaders: tokens per second and memory, resume time against position, and how many
times each byte is read when many ranks and workers share a source.

    python scripts/benchmark_data.py --tokenizer gpt2 --data pydocs
    python scripts/benchmark_data.py --tokenizer bytes --sections resume,amplification --json

Sections:
- `speed`: streaming (0 workers: in the training process; N: N worker processes) and prepared
  shards (after data/prepare.py, timed separately), each for --seconds after a warm-up batch;
  peak memory is the process high-water mark (children included for worker processes).
- `resume`: a generated parquet folder of --documents documents; a loader is resumed at
  documents 10^3, 10^4, 10^5 of the stream and the time to its first batch is measured.
- `amplification`: --ranks x --workers readers each take their rows of every global batch for
  one epoch of a generated jsonl corpus; bytes read by all readers / bytes of the corpus.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from data import prepare
from data.loader import PreparedLoader, StreamingLoader, take_batches
from data.sources import get_source
from tokenization.tokenizer import get_tokenizer
from transformer_setup.cli import (
    ArgumentParser,
    nonnegative_int,
    positive_float,
    positive_int,
    run_main,
)

SECTIONS = ("speed", "resume", "amplification")


def peak_rss_mb() -> float:
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, children_kb) / 1024


def tokens_per_second(loader, tokens_per_batch: int, seconds: float) -> tuple[float, int]:
    loader.next_batch()  # warm-up: workers started, first units read
    batches, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        loader.next_batch()
        batches += 1
    return batches * tokens_per_batch / (time.perf_counter() - start), batches


def speed_rows(data: str, tokenizer_name: str, batch_size: int, block_size: int,
               seconds: float, worker_counts: list[int]) -> list[dict]:
    """tokens/s and peak memory of streaming (per worker count), prepare.py and prepared."""
    tokenizer = get_tokenizer(tokenizer_name)
    source = get_source(data)
    per_batch = batch_size * block_size
    rows = []
    for workers in worker_counts:
        loader = StreamingLoader(source, tokenizer, block_size, batch_size, workers=workers)
        rate, batches = tokens_per_second(loader, per_batch, seconds)
        loader.close()
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
        loader = PreparedLoader.from_folder(folder, "train", tokenizer, block_size, batch_size)
        rate, batches = tokens_per_second(loader, per_batch, seconds)
        rows.append({"loader": "prepared (memory-mapped)", "tokens_per_s": rate,
                     "batches": batches, "peak_rss_mb": peak_rss_mb()})
    return rows


# ----------------------------------------------------------------------------- generated data

def write_parquet_corpus(folder: Path, documents: int, per_file: int = 1000,
                         row_group: int = 100) -> None:
    """FineWeb-like parquet files of ~80-word documents, `row_group` documents per row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    words = [f"word{i}" for i in range(5000)]
    for f in range(0, documents, per_file):
        texts = [f"doc {f + i}: " + " ".join(rng.choice(words) for _ in range(80))
                 for i in range(min(per_file, documents - f))]
        pq.write_table(pa.table({"text": texts}), folder / f"{f // per_file:05d}.parquet",
                       row_group_size=row_group)


def resume_rows(tokenizer_name: str, documents: int, batch_size: int, block_size: int
                ) -> list[dict]:
    """Seconds from load_state_dict to the first batch, at several positions of the stream."""
    tokenizer = get_tokenizer(tokenizer_name)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_parquet_corpus(Path(folder), documents)
        source = get_source(folder)
        per_unit = documents / len(source.units("all"))
        for position in (10**3, 10**4, 10**5):
            if position > documents:
                break
            loader = StreamingLoader(source, tokenizer, block_size, batch_size)
            state = loader.state_dict()  # every lane k units in: `position` documents read
            k = int(position / per_unit / batch_size)
            state["lanes"] = {g: [k, 0] for g in state["lanes"]}
            start = time.perf_counter()
            loader.load_state_dict(state)
            loader.next_batch()
            rows.append({"position_documents": position,
                         "resume_seconds": time.perf_counter() - start})
    return rows


def amplification_rows(tokenizer_name: str, ranks: int, workers: int) -> list[dict]:
    """One epoch read by `ranks` loaders with `workers` worker processes each: the bytes of
    every unit requested from the workers, over the bytes of the corpus."""
    tokenizer = get_tokenizer(tokenizer_name)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "corpus.jsonl"
        rng = random.Random(0)
        with open(path, "w") as f:
            for i in range(20_000):
                f.write(json.dumps({"text": f"row {i}: " + "x" * rng.randrange(100, 900)}) + "\n")
        source = get_source(str(path))
        units = source.units("train")
        corpus, read = sum(u.stop - u.start for u in units), 0
        for rank in range(ranks):
            loader = StreamingLoader(source, tokenizer, 64, batch_size=4, rank=rank,
                                     world_size=ranks, workers=workers, repeat=False)
            request = loader.reader.request

            def counted(unit, request=request):
                nonlocal read
                read += 0 if unit is None else units[unit].stop - units[unit].start
                return request(unit)

            loader.reader.request = counted
            take_batches(loader, 10**9)
            loader.close()
        return [{"readers": f"{ranks} ranks x {workers} workers", "amplification": read / corpus}]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="pydocs")
    parser.add_argument("--tokenizer", default="gpt2")
    parser.add_argument("--batch_size", type=positive_int, default=72)
    parser.add_argument("--block_size", type=positive_int, default=1024)
    parser.add_argument("--seconds", type=positive_float, default=10.0)
    parser.add_argument("--workers", type=nonnegative_int, nargs="+", default=[0, 1, 2],
                        help="streaming worker counts to measure")
    parser.add_argument("--documents", type=positive_int, default=100_000,
                        help="documents in the generated parquet folder (resume)")
    parser.add_argument("--ranks", type=positive_int, default=8,
                        help="simulated ranks (amplification)")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if set(sections) - set(SECTIONS):
        parser.error(f"--sections: choose from {', '.join(SECTIONS)}")
    out: dict[str, list[dict]] = {}
    if "speed" in sections:
        out["speed"] = speed_rows(args.data, args.tokenizer, args.batch_size, args.block_size,
                                  args.seconds, args.workers)
    if "resume" in sections:
        out["resume"] = resume_rows(args.tokenizer, args.documents, args.batch_size,
                                    args.block_size)
    if "amplification" in sections:
        out["amplification"] = amplification_rows(args.tokenizer, args.ranks, 2)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    if "speed" in out:
        print(f"data {args.data}, tokenizer {args.tokenizer}, batch {args.batch_size} x "
              f"{args.block_size} tokens")
        print(f"{'loader':<30}{'tokens/s':>14}{'batches':>9}{'peak RSS MB':>13}")
        for r in out["speed"]:
            print(f"{r['loader']:<30}{r['tokens_per_s']:>14,.0f}{r['batches']:>9}"
                  f"{r['peak_rss_mb']:>13,.0f}")
    for r in out.get("resume", []):
        print(f"resume at document {r['position_documents']:>7,}: {r['resume_seconds']:.3f} s")
    for r in out.get("amplification", []):
        print(f"read amplification, {r['readers']}: {r['amplification']:.3f}")


if __name__ == "__main__":
    run_main(main)
