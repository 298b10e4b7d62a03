"""The loaders: packing lanes over units (one global order at any split of the batch, resume in
O(1), every unit once per epoch), prepared shards by epochs, validation, and prepare.py."""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from data import prepare as prepare_module
from data.loader import (
    PREFETCH_ROWS,
    PreparedLoader,
    StreamingLoader,
    merge_states,
    permutation,
    take_batches,
    unit_tokens,
)
from data.shards import read_header, read_prepared
from data.sources import DataError, FileSource, Source, get_source
from data.validation import source_rows
from tests.helpers import run_script
from tokenization.tokenizer import EOT, Tokenizer, byte_tokenizer


def numbered_corpus(folder, n=120, words=30):
    """n text files, document i made of the marker <i> and filler, one file (one unit) each."""
    folder.mkdir(exist_ok=True)
    for i in range(n):
        filler = " ".join(f"w{i}x{j}" for j in range(words))
        (folder / f"{i:04d}.txt").write_text(f"<{i}> {filler}")
    return get_source(str(folder))


def markers(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"<(\d+)>", text)]


class CountingSource(Source):
    """A source that appends every unit it reads to a file (worker processes included)."""

    def __init__(self, inner: Source, log: Path) -> None:
        self.inner, self.log, self.name = inner, log, inner.name

    def units(self, split):
        return self.inner.units(split)

    def _read(self, unit, piece, stream):
        with open(self.log, "a") as f:
            f.write(f"{unit.path}|{unit.index}|{unit.start}|{piece}\n")
        return self.inner.read(unit, piece, stream)

    def fingerprint(self, split):
        return self.inner.fingerprint(split)

    def reads(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


def steps(loaders, accumulation: int, n: int) -> list[torch.Tensor]:
    """n optimizer steps' global rows (inputs), ranks in order, each rank's micro-batches in
    order: the rows a step trains on, however the batch is split."""
    out = []
    for _ in range(n):
        out.append(torch.cat([loader.next_batch()[0] for loader in loaders
                              for _ in range(accumulation)]))
    return out


def split_loaders(make, batch: int, accumulation: int, world: int) -> list:
    return [make(batch_size=batch, accumulation=accumulation, rank=r, world_size=world)
            for r in range(world)]


def test_packing_loses_and_repeats_nothing(tmp_path):
    source = numbered_corpus(tmp_path, n=60)
    tok = byte_tokenizer()
    loader = StreamingLoader(source, tok, block_size=16, batch_size=3, split="all", repeat=False)
    batches = take_batches(loader, 10_000)
    seen = []
    for lane in range(3):
        xs = torch.cat([x[lane] for x, _ in batches]).tolist()
        ys = torch.cat([y[lane] for _, y in batches]).tolist()
        assert xs[1:] == ys[:-1]  # targets are the inputs shifted by one, across row boundaries
        stream = xs + ys[-1:]
        assert stream[0] == tok.eot_id  # a lane is whole documents, each after <|endoftext|>
        docs = tok.decode(stream).split(EOT)[1:]
        all_docs = {markers(d)[0]: d for d in source.documents("all")}
        for text in docs[:-1]:  # every complete document intact
            assert text == all_docs[markers(text)[0]]
        seen += [markers(text)[0] for text in docs if markers(text)]
    assert len(seen) == len(set(seen))  # no document in two lanes
    assert len(seen) >= 60 - 3  # all but the lanes' unfinished last documents


def test_units_are_read_in_a_seeded_order_one_lane_per_row(tmp_path):
    source = numbered_corpus(tmp_path, n=50)
    tok = byte_tokenizer()
    order = permutation(len(source.units("all")), seed=7, epoch=0)
    loader = StreamingLoader(source, tok, block_size=8, batch_size=5, split="all", seed=7)
    x, _ = loader.next_batch()
    units = source.units("all")
    for lane in range(5):  # lane g starts at offset 0 of unit S[g]
        first = unit_tokens(source, units[order[lane]], tok)[:8]
        assert x[lane].tolist() == first.tolist()
    assert len({tuple(row.tolist()) for row in x}) == 5


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_resumes_with_the_same_batches(tmp_path, workers):
    source = numbered_corpus(tmp_path, n=40)
    tok = byte_tokenizer()

    def loader():
        return StreamingLoader(source, tok, block_size=32, batch_size=2, accumulation=2,
                               workers=workers, seed=3)

    uninterrupted = loader()
    expected = take_batches(uninterrupted, 80)  # several epochs of the data
    first = loader()
    take_batches(first, 26)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected[26:], take_batches(resumed, 54), strict=True):
        assert torch.equal(rx, x) and torch.equal(ry, y)
    for each in (uninterrupted, first, resumed):
        each.close()


def test_any_split_of_the_global_batch_trains_on_identical_rows(tmp_path):
    source = numbered_corpus(tmp_path, n=70)
    tok = byte_tokenizer()

    def make(**split):
        return StreamingLoader(source, tok, block_size=16, seed=5, **split)

    reference = steps(split_loaders(make, 8, 1, 1), 1, 12)  # 8 rows per step
    for batch, accumulation, world in [(1, 8, 1), (4, 2, 1), (4, 1, 2), (2, 2, 2), (1, 1, 8)]:
        rows = steps(split_loaders(make, batch, accumulation, world), accumulation, 12)
        for step, expected in zip(rows, reference, strict=True):
            assert torch.equal(step, expected), (batch, accumulation, world)


def test_resume_on_another_number_of_processes(tmp_path):
    source = numbered_corpus(tmp_path, n=70)
    tok = byte_tokenizer()

    def make(**split):
        return StreamingLoader(source, tok, block_size=16, seed=5, **split)

    reference = steps(split_loaders(make, 2, 2, 2), 2, 20)
    before = split_loaders(make, 2, 2, 2)  # 2 processes x 2 micro-batches of 2 rows ...
    steps(before, 2, 7)
    state = merge_states([loader.state_dict() for loader in before])
    after = make(batch_size=2, accumulation=4)  # ... then 1 process x 4 micro-batches
    after.load_state_dict(state)
    for step, expected in zip(steps([after], 4, 13), reference[7:], strict=True):
        assert torch.equal(step, expected)


def test_a_changed_global_batch_seed_or_source_is_refused(tmp_path):
    source = numbered_corpus(tmp_path / "a", n=30)
    tok = byte_tokenizer()
    loader = StreamingLoader(source, tok, block_size=16, batch_size=4, seed=1)
    loader.next_batch()
    state = loader.state_dict()
    with pytest.raises(DataError, match="global batch is 4 rows per step, this run's is 8"):
        StreamingLoader(source, tok, 16, batch_size=4, accumulation=2, seed=1) \
            .load_state_dict(state)
    with pytest.raises(DataError, match="seed 1, this run has 2"):
        StreamingLoader(source, tok, 16, batch_size=4, seed=2).load_state_dict(state)
    other = numbered_corpus(tmp_path / "b", n=31)
    with pytest.raises(DataError, match="resume with the same --data"):
        StreamingLoader(other, tok, 16, batch_size=4, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="not from prepared shards"):
        PreparedLoader([np.arange(100, dtype=np.uint16)], 16, 4, seed=1).load_state_dict(state)


def test_every_unit_is_read_once_per_epoch_by_4_ranks_x_2_workers(tmp_path):
    inner = numbered_corpus(tmp_path / "src", n=90)
    source = CountingSource(inner, tmp_path / "reads.log")
    tok = byte_tokenizer()
    loaders = [StreamingLoader(source, tok, block_size=8, batch_size=2, rank=r, world_size=4,
                               workers=2, seed=9, repeat=False) for r in range(4)]
    for loader in loaders:
        take_batches(loader, 10_000)  # until the first lane reaches the end of the epoch,
        for lane in loader.lanes:  # then every other lane to its own end
            while lane.row(9, 8) is not None:
                pass
        loader.close()
    reads = source.reads()
    units = inner.units("train")
    assert len(reads) == len(units) and len(set(reads)) == len(units)


def test_resume_at_a_late_position_opens_one_unit_per_lane(tmp_path):
    inner = numbered_corpus(tmp_path / "src", n=64, words=600)  # 64 units of ~5 KB
    source = CountingSource(inner, tmp_path / "reads.log")
    tok = byte_tokenizer()
    loader = StreamingLoader(source, tok, block_size=8, batch_size=4, seed=2)
    take_batches(loader, 2500)  # 20,000 tokens into every lane: several units in
    state = loader.state_dict()
    assert all(k >= 3 for k, _, _ in state["lanes"].values())
    reads_before = len(source.reads())
    resumed = StreamingLoader(source, tok, block_size=8, batch_size=4, seed=2)
    resumed.load_state_dict(state)
    resumed.next_batch()
    opened = len(source.reads()) - reads_before
    units = inner.units("train")
    expected = 0
    for g, (k, _, p) in state["lanes"].items():  # its unit; the next too if nearly done
        remaining = len(unit_tokens(inner, units[loader.order[g + 4 * k]], tok)) - p - 8
        expected += 1 + (remaining < PREFETCH_ROWS * 9)
    assert opened == expected <= 8
    assert reads_before >= 16


def test_one_text_file_gives_a_batch_of_different_rows(tmp_path):
    path = tmp_path / "corpus.txt"
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    lines = [" ".join(rng.choice(words, 12)) for _ in range(16_000)]
    path.write_text("\n".join(f"{i}: {line}" for i, line in enumerate(lines)) + "\n")
    assert path.stat().st_size > 1_000_000
    source = get_source(str(path))
    assert len(source.units("train")) > 20 and source.units("val")
    loader = StreamingLoader(source, byte_tokenizer(), block_size=64, batch_size=12)
    for x, _ in take_batches(loader, 20):
        assert len({tuple(row.tolist()) for row in x}) == 12


def test_worker_processes_follow_the_same_order(tmp_path):
    source = numbered_corpus(tmp_path, n=60, words=5)
    tok = byte_tokenizer()
    inline = take_batches(StreamingLoader(source, tok, 8, 3, "all", workers=0, seed=4), 50)
    pool = StreamingLoader(source, tok, 8, 3, "all", workers=2, seed=4)
    for (x, _), (px, _) in zip(inline, take_batches(pool, 50), strict=True):
        assert torch.equal(x, px)
    pool.close()


def test_validation_is_the_held_out_units_in_order(tmp_path):
    source = numbered_corpus(tmp_path, n=200)
    tok = byte_tokenizer()
    rows = source_rows(source, "val", tok, block_size=8, rows=12)
    assert rows.shape == (12, 9)
    stream = np.concatenate([unit_tokens(source, u, tok) for u in source.units("val")])
    assert rows[:, :-1].reshape(-1).tolist() == stream[:96].tolist()
    assert rows[:-1, -1].tolist() == rows[1:, 0].tolist()  # consecutive rows share a token
    val_ids = {markers(d)[0] for d in source.documents("val")}
    assert val_ids and not val_ids & {markers(d)[0] for d in source.documents("train")}


def test_prepared_epoch_covers_every_block_once_and_any_split_is_the_same():
    shards = [np.arange(1000, dtype=np.uint16), np.arange(5000, 5500, dtype=np.uint16)]
    blocks = 999 // 16 + 499 // 16

    def make(**split):
        return PreparedLoader(shards, 16, seed=3, **split)

    reference = steps(split_loaders(make, 4, 1, 1), 1, 30)
    expected = [i * 16 for i in range(999 // 16)] + [5000 + i * 16 for i in range(499 // 16)]
    one_epoch = [int(row[0]) for step in steps(split_loaders(make, 1, 1, 1), 1, blocks)
                 for row in step]
    assert sorted(one_epoch) == sorted(expected)  # every block exactly once
    for step in reference:  # inputs are consecutive ids: a block never crosses shards
        assert torch.all(step[:, 1:] - step[:, :-1] == 1)
    for batch, accumulation, world in [(2, 2, 1), (1, 1, 4), (2, 1, 2)]:
        rows = steps(split_loaders(make, batch, accumulation, world), accumulation, 30)
        assert all(torch.equal(a, b) for a, b in zip(rows, reference, strict=True))


def test_prepared_loader_resumes_on_another_split():
    shards = [np.arange(3000, dtype=np.uint16)]

    def make(**split):
        return PreparedLoader(shards, 16, seed=3, **split)

    reference = steps([make(batch_size=4)], 1, 60)  # several epochs
    first = split_loaders(make, 1, 2, 2)
    steps(first, 2, 23)
    state = merge_states([loader.state_dict() for loader in first])
    assert state["epoch"] == 23 * 4 // (2999 // 16) and state["position"] == 92
    resumed = make(batch_size=4)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(steps([resumed], 1, 37), reference[23:],
                                                 strict=True))


def run_prepare(source_dir, out, *extra):
    prepare_module.main(["--data", str(source_dir), "--tokenizer", "bytes", "--out", str(out),
                         "--shard_tokens", "2000", "--workers", "2", *extra])


def test_prepare_interrupted_and_restarted_writes_the_same_shards(tmp_path, monkeypatch):
    numbered_corpus(tmp_path / "src", n=120)
    run_prepare(tmp_path / "src", tmp_path / "whole")

    real_write, written = prepare_module.write_shard, []

    def crash_after_three(path, tokens, header):
        if len(written) == 3:
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, tokens, header)

    monkeypatch.setattr(prepare_module, "write_shard", crash_after_three)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path / "src", tmp_path / "resumed")
    monkeypatch.undo()
    assert not (tmp_path / "resumed" / "meta.json").exists()
    run_prepare(tmp_path / "src", tmp_path / "resumed")
    whole = sorted(p.name for p in (tmp_path / "whole").glob("*.bin"))
    assert len(whole) > 4
    assert whole == sorted(p.name for p in (tmp_path / "resumed").glob("*.bin"))
    for name in whole:
        assert (tmp_path / "whole" / name).read_bytes() == \
            (tmp_path / "resumed" / name).read_bytes()


def test_prepared_tokens_equal_the_stream_and_load_for_training(tmp_path):
    source = numbered_corpus(tmp_path / "src", n=80)
    run_prepare(tmp_path / "src", tmp_path / "out")
    tok = byte_tokenizer()
    shards = read_prepared(tmp_path / "out", "train", tok)
    assert shards[0].dtype == np.uint16
    expected = [t for d in source.documents("train") for t in [tok.eot_id, *tok.encode(d)]]
    assert np.concatenate(shards).tolist() == expected
    header = read_header(tmp_path / "out" / "train_000000.bin")
    assert header["tokenizer"] == "bytes" and header["dtype"] == "uint16"


def test_uint32_when_the_vocabulary_exceeds_uint16(tmp_path):
    ranks = {bytes([i]): i for i in range(256)}
    ranks.update({b"\xff\xfe" + i.to_bytes(3, "big"): 256 + i for i in range(70_000 - 256)})
    big = Tokenizer("big", ranks, {EOT: 70_000})
    (tmp_path / "a.txt").write_text("some text to tokenize into shards\n" * 400)
    source = get_source(str(tmp_path / "a.txt"))
    assert isinstance(source, FileSource)
    folder = tmp_path / "out"
    folder.mkdir()
    prepare_module.prepare_split(source, "train", big, folder, 10_000, 1)
    header = read_header(folder / "train_000000.bin")
    assert header["dtype"] == "uint32"


def test_shards_of_another_tokenizer_are_refused(tmp_path):
    numbered_corpus(tmp_path / "src", n=40)
    run_prepare(tmp_path / "src", tmp_path / "out")
    other = Tokenizer("other", {bytes([i]): i for i in range(256)}, {EOT: 256}, pattern=r"\S+|\s+")
    with pytest.raises(DataError, match="written with tokenizer 'bytes'.*--tokenizer bytes"):
        read_prepared(tmp_path / "out", "train", other)


def test_training_reads_prepared_shards(tmp_path):
    numbered_corpus(tmp_path / "src", n=200)
    result = run_script("data/prepare.py", "--data", str(tmp_path / "src"), "--tokenizer",
                        "bytes", "--out", str(tmp_path / "shards"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "train:" in result.stdout and "val:" in result.stdout
    result = run_script("models/gpt.py", "--preset", "tiny", "--data", str(tmp_path / "shards"),
                        "--max_iters", "2", "--val_tokens", "512", "--batch_size", "2",
                        "--accumulation_steps", "1", "--sample_tokens", "0", "--out_dir",
                        str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prepared shards" in result.stdout
    wrong = run_script("models/gpt.py", "--preset", "tiny", "--data", str(tmp_path / "shards"),
                       "--tokenizer", "gpt2", "--out_dir", str(tmp_path / "run2"), cwd=tmp_path,
                       env={**os.environ, "GPT2_TIKTOKEN_FILE": str(tmp_path / "x")})
    assert wrong.returncode != 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux")
def test_streaming_a_large_source_keeps_memory_flat(tmp_path):
    for i in range(40):  # 40 files x 1 MB
        text = f"file {i} " + "lorem ipsum dolor sit amet\n" * 38_000
        (tmp_path / f"{i:03d}.txt").write_text(text)
    loader = StreamingLoader(get_source(str(tmp_path)), byte_tokenizer(), block_size=1024,
                             batch_size=32, split="all", repeat=False)
    take_batches(loader, 60)  # about 2 MB in: buffers at their working size
    early = rss_bytes()
    total = sum(1 for _ in loader)  # read the rest, keeping nothing
    assert total > 800  # ~40 MB of text
    assert rss_bytes() - early < 40 * 2**20


# ----------------------------------------------------------------------------- layouts

def longest_run_without(row: list[int], token: int) -> int:
    best = run = 0
    for t in row:
        run = 0 if t == token else run + 1
        best = max(best, run)
    return best


def test_rows_of_a_one_megabyte_text_are_contiguous_text(tmp_path):
    path = tmp_path / "book.txt"  # one document: a row breaks only where a unit ends
    path.write_text("".join(f"Sentence {i} of a long novel about a lighthouse keeper.\n"
                            for i in range(18_000)))
    assert path.stat().st_size > 1_000_000
    tok = byte_tokenizer()
    loader = StreamingLoader(get_source(str(path)), tok, block_size=128, batch_size=32)
    rows = [row.tolist() for x, y in take_batches(loader, 40)
            for row in torch.cat([x, y[:, -1:]], dim=1)]
    stretches = sorted(longest_run_without(r, tok.eot_id) for r in rows)
    assert stretches[len(stretches) // 2] == 129  # the median row is one stretch of text
    breaks = sum(tok.eot_id in r[1:] for r in rows)  # a row may begin a document
    assert breaks / len(rows) < 0.02


def test_fewer_units_than_rows_still_give_distinct_rows(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("".join(f"Line {i} of a short story.\n" for i in range(3_600)))  # 100 KB
    source = get_source(str(path))
    assert len(source.units("train")) < 288
    loader = StreamingLoader(source, byte_tokenizer(), block_size=64, batch_size=288)
    for x, _ in take_batches(loader, 3):
        assert len({tuple(row.tolist()) for row in x}) == 288


def test_a_three_megabyte_jsonl_row_among_small_ones_trains(tmp_path):
    import json
    path = tmp_path / "code.jsonl"
    rows = [f"def f{i}(x):\n    return x + {i}\n" * 80 for i in range(400)]  # ~3 KB each
    rows.insert(200, "# a vendored library\n" + "x = 1\n" * 500_000)  # 3 MB
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    loader = StreamingLoader(get_source(str(path)), byte_tokenizer(), block_size=256,
                             batch_size=8, split="all", repeat=False)
    tokens = sum(x.numel() for x, _ in take_batches(loader, 100_000))
    for lane in loader.lanes:  # every lane to the end of the epoch: no unreadable unit
        while lane.row(257, 256) is not None:
            tokens += 256
    assert tokens > 0.99 * sum(len(r.encode()) + 1 for r in rows)  # each row after an eot


def test_a_big_row_group_is_decoded_about_once(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data import sources
    for f in range(4):  # one row group per file, as pandas writes small files
        rows = [f"Row {f}-{i}: a measured sentence about tides and the moon." for i in range(3000)]
        pq.write_table(pa.table({"text": rows}), tmp_path / f"{f}.parquet")
    monkeypatch.setattr(sources, "PIECE_BYTES", 16 << 10)  # ~10 pieces per row group
    source = get_source(str(tmp_path / "*.parquet"))
    units = source.units("all")
    assert len(units) == 4 and all(u.pieces >= 8 for u in units)
    sources.READ_STATS.clear()
    loader = StreamingLoader(source, byte_tokenizer(), block_size=64, batch_size=12,
                             split="all")  # 12 lanes share 4 row groups
    take_batches(loader, 4000)  # each lane through several units
    stats = sources.READ_STATS
    assert stats["delivered_rows"] > 3 * 4 * 3000
    assert stats["decoded_rows"] / stats["delivered_rows"] <= 1.5


def test_prepare_resumed_at_90_percent_reads_only_what_is_left(tmp_path, monkeypatch):
    numbered_corpus(tmp_path / "src", n=100, words=60)  # 95 train units
    log = tmp_path / "reads.log"
    real_read = FileSource._read

    def logged(self, unit, piece, stream):  # inherited by the forked workers
        with open(log, "a") as f:
            f.write(f"{unit.path}\n")
        return real_read(self, unit, piece, stream)

    monkeypatch.setattr(FileSource, "_read", logged)
    real_write, written = prepare_module.write_shard, []

    def crash_at_90_percent(path, tokens, header):
        if path.name.startswith("train") and len(written) == 5 + 86:  # 5 val shards first
            raise KeyboardInterrupt
        written.append(path)
        real_write(path, tokens, header)

    monkeypatch.setattr(prepare_module, "write_shard", crash_at_90_percent)
    with pytest.raises(KeyboardInterrupt):
        run_prepare(tmp_path / "src", tmp_path / "out", "--shard_tokens", "300")
    monkeypatch.setattr(prepare_module, "write_shard", real_write)
    done = read_header(tmp_path / "out" / "train_000085.bin")["end_item"]
    log.unlink()
    run_prepare(tmp_path / "src", tmp_path / "out", "--shard_tokens", "300")
    units = get_source(str(tmp_path / "src")).units("train")
    reread = log.read_text().splitlines()
    assert done == 86 and done / len(units) > 0.9
    assert sorted(reread) == sorted(u.path for u in units[done:])  # nothing before it


def test_shards_are_checksummed_once(tmp_path, monkeypatch):
    from data import shards
    numbered_corpus(tmp_path / "src", n=40)
    run_prepare(tmp_path / "src", tmp_path / "out")
    tok = byte_tokenizer()
    calls = []
    real = shards.checksum
    monkeypatch.setattr(shards, "checksum", lambda data: calls.append(1) or real(data))
    read_prepared(tmp_path / "out", "train", tok)  # prepare.py recorded the checksums
    assert not calls
    (tmp_path / "out" / ".verified.json").unlink()  # a folder copied elsewhere: checked once
    first = read_prepared(tmp_path / "out", "train", tok)
    assert len(calls) == len(first)
    calls.clear()
    read_prepared(tmp_path / "out", "train", tok)  # a restart: sizes and headers only
    assert not calls
    path = tmp_path / "out" / "train_000000.bin"
    path.write_bytes(path.read_bytes())  # touched: checked in full again
    read_prepared(tmp_path / "out", "train", tok)
    assert len(calls) == 1


def test_a_missing_shard_is_one_line(tmp_path):
    numbered_corpus(tmp_path / "src", n=40)
    run_prepare(tmp_path / "src", tmp_path / "out")
    meta_path = tmp_path / "out" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["splits"]["train"]["shards"] += 1  # names a shard it does not list
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="does not list the train shards it counts"):
        read_prepared(tmp_path / "out", "train", byte_tokenizer())
    meta["splits"]["train"]["shards"] -= 1
    meta_path.write_text(json.dumps(meta))
    (tmp_path / "out" / "train_000002.bin").unlink()
    with pytest.raises(DataError, match="train_000002.bin is missing"):
        read_prepared(tmp_path / "out", "train", byte_tokenizer())


def test_prepare_restarted_on_a_changed_source_is_refused(tmp_path, monkeypatch):
    numbered_corpus(tmp_path / "src", n=60)
    with interrupted(monkeypatch, after=4):  # 1 val shard, 3 of 6 train shards
        run_prepare(tmp_path / "src", tmp_path / "out")
    (tmp_path / "src" / "0060.txt").write_text("<60> a file added in between " * 20)
    with pytest.raises(DataError, match="units changed since|listing of it \\(files added"):
        run_prepare(tmp_path / "src", tmp_path / "out")
    run_prepare(tmp_path / "src", tmp_path / "out", "--overwrite")  # the way out it names


def interrupted(monkeypatch, after: int):
    """prepare.py stopped (KeyboardInterrupt) after `after` shards; a context manager."""
    import contextlib

    real, written = prepare_module.write_shard, []

    def write(path, tokens, header):
        if len(written) == after:
            raise KeyboardInterrupt
        written.append(path)
        real(path, tokens, header)

    @contextlib.contextmanager
    def stopped():
        monkeypatch.setattr(prepare_module, "write_shard", write)
        with pytest.raises(KeyboardInterrupt):
            yield
        monkeypatch.setattr(prepare_module, "write_shard", real)

    return stopped()
