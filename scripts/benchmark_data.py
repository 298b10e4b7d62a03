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
- `hub`: one epoch of FineWeb-shaped parquet (6 files x 2,000 documents in 1, 8 or 100 row groups
  per file) streamed from the test suite's stand-in Hub by 2 ranks x 2 workers: bytes fetched
  over the bytes of the text column; then the requests before the first batch of 8 ranks x 2
  workers (rank 0 lists and reads the held-out rows, the others get the listing, as
  `make_loaders` does).
- `decode`: parquet rows decoded over rows handed to lanes (16 rows per step), until every lane
  has read one unit whole, for single-row-group files (small ones, and big ones read in pieces
  with fewer files than rows, so lanes share them), 10-row-group files and FineWeb's layout (one
  process, so that one counter sees every read).
- `rows`: a 1 MB single-document .txt at the tiny preset's 32 rows x 128 bytes and at the 1b
  preset's 288 rows x 1,024 GPT-2 tokens: the share of rows with a break (an <|endoftext|> after
  their first token) and the median longest unbroken stretch per row.
- `prepare_resume`: data/prepare.py interrupted at 10% and at 90% of a generated corpus, then
  restarted: seconds from the restart to its first new shard.
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

SECTIONS = ("speed", "resume", "amplification", "hub", "decode", "rows", "prepare_resume")


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
                         row_group: int = 100, words: int = 80) -> None:
    """FineWeb-like parquet files of `words`-word documents, `row_group` documents per row
    group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    vocabulary = [f"word{i}" for i in range(5000)]
    for f in range(0, documents, per_file):
        texts = [f"doc {f + i}: " + " ".join(rng.choice(vocabulary) for _ in range(words))
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
            state["lanes"] = {g: [k, 0, 0] for g in state["lanes"]}
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

            def counted(lane, unit, piece=0, request=request):
                nonlocal read
                read += 0 if unit is None else units[unit].stop - units[unit].start
                return request(lane, unit, piece)

            loader.reader.request = counted
            take_batches(loader, 10**9)
            loader.close()
        return [{"readers": f"{ranks} ranks x {workers} workers", "amplification": read / corpus}]


# ----------------------------------------------------------------------------- layouts

def write_layout(folder: Path, files: int, documents: int, row_groups: int,
                 words: int = 60) -> None:
    """`files` FineWeb-like parquet files of `documents` documents in `row_groups` row groups."""
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet_corpus(folder, files * documents, per_file=documents,
                         row_group=-(-documents // row_groups), words=words)


def drain(loader, block_size: int) -> None:
    """One whole epoch of a loader that does not repeat: every lane to its own end."""
    take_batches(loader, 10**9)
    for lane in loader.lanes or []:
        while lane.row(block_size + 1, block_size) is not None:
            pass


def one_round(loader) -> None:
    """Until every lane has read its first unit whole: with fewer units than lanes, lanes
    share units (at different starting places), as training does."""
    loader.next_batch()
    while any(lane.k < 1 for lane in loader.lanes):
        loader.next_batch()


def received(source):
    """A source as another rank has it: unpickled from rank 0's broadcast, footers read from
    this machine's listing cache (as make_loaders does)."""
    import pickle

    return pickle.loads(pickle.dumps(source)).load_footers()


def hub_rows(workers: int = 2) -> list[dict]:
    from data.validation import validation_set
    from tests.hub_server import HubServer, pointed_at

    tokenizer = get_tokenizer("bytes")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for row_groups in (1, 8, 100):
            repo = Path(folder) / f"repo-{row_groups}"
            write_layout(repo / "sample/10BT", 6, 2000, row_groups)
            (repo / "README.md").write_text(HUB_CARD)
            with HubServer(repo, "HuggingFaceFW/fineweb-edu") as hub, \
                    pointed_at(hub, Path(folder) / f"cache-{row_groups}"):
                source = get_source("fineweb-edu").listed()
                validation_set("fineweb-edu", None, source, tokenizer, 64, 4096, {})
                listing = len(hub.requests)
                for rank in range(8):  # the first batch of 8 ranks
                    loader = StreamingLoader(received(source), tokenizer, 64, 2, rank=rank,
                                             world_size=8, workers=workers)
                    loader.next_batch()
                    loader.close()
                first_batch = len(hub.requests)
                hub.bytes_sent.clear()
                for rank in range(2):  # one epoch of 2 ranks
                    loader = StreamingLoader(received(source), tokenizer, 64, 8, rank=rank,
                                             world_size=2, workers=workers, repeat=False)
                    drain(loader, 64)
                    loader.close()
                needed = text_column_bytes(repo, source.units("train"))
                rows.append({"row_groups_per_file": row_groups, "files": 6,
                             "requests_listing": listing,
                             "requests_before_first_batch_8x2": first_batch,
                             "epoch_bytes_fetched": sum(hub.bytes_sent.values()),
                             "text_column_bytes": needed,
                             "fetch_amplification": sum(hub.bytes_sent.values()) / needed})
    return rows


HUB_CARD = """---
configs:
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
---
"""


def text_column_bytes(repo: Path, units) -> int:
    import pyarrow.parquet as pq

    total = 0
    for unit in units:
        name = unit.path.split("@", 1)[1].split("/", 1)[1]
        total += pq.ParquetFile(repo / name).metadata.row_group(unit.index).column(0) \
            .total_compressed_size
    return total


def decode_rows() -> list[dict]:
    from data import sources

    tokenizer = get_tokenizer("bytes")
    layouts = [("1 row group per file, 8 small files", 8, 2000, 1, 60),
               ("1 row group per file, 4 files of ~25 MB (4 pieces each), 16 rows", 4, 60_000,
                1, 60),
               ("10 row groups per file, 8 files", 8, 2000, 10, 60),
               ("FineWeb layout: 1,000 documents per row group, 4 files", 4, 10_000, 10, 60)]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, files, documents, row_groups, words in layouts:
            path = Path(folder) / name.split(",")[0].replace(" ", "-") / str(files)
            write_layout(path, files, documents, row_groups, words)
            source = get_source(str(path))
            sources.READ_STATS.clear()
            loader = StreamingLoader(source, tokenizer, 128, 16, split="all")
            one_round(loader)
            loader.close()
            stats = sources.READ_STATS
            rows.append({"layout": name, "units": len(source.units("all")),
                         "pieces": sum(u.pieces for u in source.units("all")),
                         "rows_decoded": stats["decoded_rows"],
                         "rows_handed_out": stats["delivered_rows"],
                         "decode_amplification": stats["decoded_rows"] / stats["delivered_rows"]})
    return rows


def one_megabyte_book(path: Path) -> None:
    rng = random.Random(1)
    words = ("the keeper climbed the stair and lit the lamp while the sea broke on the rocks "
             "below and gulls cried over the harbour where boats rocked at anchor").split()
    with open(path, "w") as f:
        while f.tell() < 1_000_000:
            f.write(" ".join(rng.choice(words) for _ in range(rng.randrange(8, 30))) + ".\n")


def layout_rows() -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        book = Path(folder) / "book.txt"
        one_megabyte_book(book)
        for preset, tokenizer_name, lanes, block_size in (("tiny", "bytes", 32, 128),
                                                          ("1b", "gpt2", 288, 1024)):
            tokenizer = get_tokenizer(tokenizer_name)
            source = get_source(str(book))
            loader = StreamingLoader(source, tokenizer, block_size, lanes)
            stretches, breaks, count = [], 0, 0
            for x, y in take_batches(loader, 10):
                for row in torch_rows(x, y):
                    eots = [i for i, t in enumerate(row) if t == tokenizer.eot_id]
                    breaks += any(i > 0 for i in eots)
                    bounds = [-1] + eots + [len(row)]
                    stretches.append(max(b - a - 1 for a, b in zip(bounds, bounds[1:])))
                    count += 1
            loader.close()
            rows.append({"preset": preset, "rows_per_step": lanes, "block_size": block_size,
                         "units": len(source.units("train")),
                         "rows_with_a_break": breaks / count,
                         "median_stretch_tokens": sorted(stretches)[len(stretches) // 2]})
    return rows


def torch_rows(x, y) -> list[list[int]]:
    import torch

    return torch.cat([x, y[:, -1:]], dim=1).tolist()


def prepare_resume_rows(workers: int = 2) -> list[dict]:
    """Restart after 10% and 90% of the shards: seconds until the first new shard."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "corpus"
        write_layout(data, 40, 2000, 20, words=80)  # 800 row groups
        for share in (0.1, 0.9):
            out = Path(folder) / f"out-{share}"
            args = ["--data", str(data), "--tokenizer", "bytes", "--out", str(out),
                    "--shard_tokens", "200000", "--workers", str(workers)]
            total = 800 * 100 * 600 // 200_000  # about: rows x bytes per row / shard size
            with interrupted_after(int(share * total)):
                try:
                    prepare.main(args)
                except KeyboardInterrupt:
                    pass
            with interrupted_after(0) as timer:
                try:
                    prepare.main(args)
                except KeyboardInterrupt:
                    pass
            rows.append({"interrupted_at": f"{share:.0%} of the shards",
                         "seconds_to_first_new_shard": timer.seconds})
    return rows


class interrupted_after(contextlib.ContextDecorator):
    """prepare.py's shard writer, stopping (KeyboardInterrupt) before shard n+1 is written;
    `seconds`: from entering to that moment."""

    def __init__(self, shards: int) -> None:
        self.shards, self.seconds = shards, 0.0

    def __enter__(self):
        self.real, self.start, written = prepare.write_shard, time.perf_counter(), []

        def write(path, tokens, header):
            if path.name.startswith("train") and len(written) >= self.shards:
                self.seconds = time.perf_counter() - self.start
                raise KeyboardInterrupt
            written.append(path)
            self.real(path, tokens, header)

        prepare.write_shard = write
        return self

    def __exit__(self, *exc) -> None:
        prepare.write_shard = self.real


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
    for name, rows in (("hub", hub_rows), ("decode", decode_rows), ("rows", layout_rows),
                       ("prepare_resume", prepare_resume_rows)):
        if name in sections:
            out[name] = rows()
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
    for name in ("hub", "decode", "rows", "prepare_resume"):
        for r in out.get(name, []):
            print(f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                          for k, v in r.items()))


if __name__ == "__main__":
    run_main(main)
