"""Packing, the streaming and prepared loaders (exact resume, sharding), and prepare.py."""

import os
import re

import numpy as np
import pytest
import torch

from data import prepare as prepare_module
from data.loader import PackedDocuments, PreparedLoader, StreamingLoader, take_batches
from data.shards import read_header, read_prepared
from data.sources import DataError, TextFilesSource, get_source
from tests.helpers import assert_one_line_error, run_script
from tokenization.tokenizer import EOT, Tokenizer, byte_tokenizer


def numbered_corpus(folder, n=120, words=30):
    """n text files, document i made of the marker <i> and filler, one file each."""
    folder.mkdir(exist_ok=True)
    for i in range(n):
        filler = " ".join(f"w{i}x{j}" for j in range(words))
        (folder / f"{i:04d}.txt").write_text(f"<{i}> {filler}")
    return get_source(str(folder))


def markers(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"<(\d+)>", text)]


def row_streams(batches, rows: int) -> list[tuple[list[int], list[int]]]:
    """For each batch row: its inputs and its targets, concatenated over batches."""
    return [(torch.cat([x[b] for x, _ in batches]).tolist(),
             torch.cat([y[b] for _, y in batches]).tolist()) for b in range(rows)]


def test_packing_loses_and_repeats_nothing(tmp_path):
    source = numbered_corpus(tmp_path, n=60)
    tok = byte_tokenizer()
    loader = StreamingLoader(source, tok, block_size=16, batch_size=3, split="all", repeat=False)
    streams = row_streams(take_batches(loader, 10_000), rows=3)
    seen = []
    for xs, ys in streams:
        assert xs[1:] == ys[:-1]  # targets are the inputs shifted by one, across row boundaries
        lane = xs + ys[-1:]
        assert lane[0] == tok.eot_id  # a row stream is whole documents, each after <|endoftext|>
        docs = tok.decode(lane).split(EOT)[1:]
        for text in docs[:-1]:  # every complete document, intact
            assert tok.encode(text) == tok.encode(f"<{markers(text)[0]}> ") + \
                tok.encode(text)[len(tok.encode(f"<{markers(text)[0]}> ")):]
        seen += [markers(text)[0] for text in docs if markers(text)]
    assert len(seen) == len(set(seen))  # no document in two rows
    assert set(seen) >= set(range(60)) - set(range(54, 60))  # all but the last few, unfinished
    all_docs = {markers(d)[0]: d for d in source.documents("all")}
    for xs, ys in streams:
        for text in tok.decode(xs + ys[-1:]).split(EOT)[1:-1]:
            assert text == all_docs[markers(text)[0]]


@pytest.mark.parametrize("workers", [0, 2])
def test_streaming_resumes_with_the_same_batches(tmp_path, workers):
    source = numbered_corpus(tmp_path, n=40)
    tok = byte_tokenizer()

    def loader():
        return StreamingLoader(source, tok, block_size=32, batch_size=2, workers=workers)

    uninterrupted = loader()
    expected = take_batches(uninterrupted, 60)  # several passes over the data
    first = loader()
    take_batches(first, 25)
    state = first.state_dict()
    resumed = loader()
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(expected[25:], take_batches(resumed, 35), strict=True):
        assert torch.equal(rx, x) and torch.equal(ry, y)


def test_ranks_and_workers_read_disjoint_documents_and_cover_all(tmp_path):
    source = numbered_corpus(tmp_path, n=50)
    tok = byte_tokenizer()
    seen: list[int] = []
    world, workers = 2, 3
    for rank in range(world):
        dataset = PackedDocuments(source, "all", tok, 8, 1, rank, world, workers, repeat=False)
        for shard in range(rank * workers, (rank + 1) * workers):
            for _, _, text in dataset._shard_documents(shard, world * workers, 0, 0):
                seen += markers(text)
    assert sorted(seen) == list(range(50))  # each document read once, by exactly one reader


def test_worker_processes_read_disjoint_documents(tmp_path):
    source = numbered_corpus(tmp_path, n=60, words=5)
    tok = byte_tokenizer()
    loader = StreamingLoader(source, tok, block_size=8, batch_size=2, split="all", workers=2,
                             repeat=False)
    per_worker: dict[int, list[list[int]]] = {0: [], 1: []}
    for x, _, state in loader._start():  # the DataLoader itself, with its worker processes
        per_worker[state["role"]].append(x)
    found = []
    for batches in per_worker.values():
        for b in range(2):
            found += markers(tok.decode(torch.cat([x[b] for x in batches]).tolist()))
    assert len(found) == len(set(found)) >= 52  # only the tails of the last rows are missing


def test_prepared_loader_resumes_and_is_seeded():
    shards = [np.arange(1000, dtype=np.uint16), np.arange(5000, 5500, dtype=np.uint16)]
    run = PreparedLoader(shards, 16, 4, seed=3)
    expected = take_batches(run, 8)
    assert all(torch.equal(y[:, :-1], x[:, 1:]) for x, y in expected)
    first = PreparedLoader(shards, 16, 4, seed=3)
    take_batches(first, 5)
    resumed = PreparedLoader(shards, 16, 4, seed=99)
    resumed.load_state_dict(first.state_dict())
    for (x, _), (rx, _) in zip(expected[5:], take_batches(resumed, 3), strict=True):
        assert torch.equal(rx, x)
    for x, _ in expected:  # a block never crosses from one shard into the next
        assert torch.all(x[:, 1:] - x[:, :-1] == 1)


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
    source = TextFilesSource([tmp_path / "a.txt"])
    (tmp_path / "a.txt").write_text("some text to tokenize into shards\n" * 40)
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
                        "--max_iters", "2", "--eval_iters", "1", "--batch_size", "2",
                        "--sample_tokens", "0", "--out_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "prepared shards" in result.stdout
    wrong = run_script("models/gpt.py", "--preset", "tiny", "--data", str(tmp_path / "shards"),
                       "--tokenizer", "gpt2", "--out_dir", str(tmp_path / "run2"), cwd=tmp_path,
                       env={**os.environ, "GPT2_TIKTOKEN_FILE": str(tmp_path / "x")})
    assert wrong.returncode != 0


def test_prepare_bad_input(tmp_path):
    result = run_script("data/prepare.py", "--data", str(tmp_path / "none*.txt"), "--tokenizer",
                        "bytes", "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert_one_line_error(result, "matches no files")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux")
def test_streaming_a_large_source_keeps_memory_flat(tmp_path):
    for i in range(40):  # 40 files x 1 MB
        text = f"file {i} " + "lorem ipsum dolor sit amet " * 38_000
        (tmp_path / f"{i:03d}.txt").write_text(text)
    loader = StreamingLoader(get_source(str(tmp_path)), byte_tokenizer(), block_size=1024,
                             batch_size=32, split="all", repeat=False)
    take_batches(loader, 60)  # about 2 MB in: buffers at their working size
    early = rss_bytes()
    total = sum(1 for _ in loader)  # read the rest, keeping nothing
    assert total > 800  # ~30 MB of text (the lanes' last rows are dropped)
    assert rss_bytes() - early < 40 * 2**20


def test_one_lane_packs_consecutive_rows_and_fits_small_splits(tmp_path):
    source = numbered_corpus(tmp_path, n=3)  # fewer documents than rows
    tok = byte_tokenizer()
    loader = StreamingLoader(source, tok, block_size=8, batch_size=4, split="all", repeat=False,
                             lanes=1)
    batches = take_batches(loader, 100)
    assert batches
    stream = [t for d in source.documents("all") for t in [tok.eot_id, *tok.encode(d)]]
    xs = torch.cat([x.reshape(-1) for x, _ in batches]).tolist()
    assert xs == stream[:len(xs)]
