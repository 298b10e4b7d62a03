"""The fixed held-out set (the same tokens at any split of the batch, refused when too small,
never compared across sets on resume) and --val_data that never trains on its own text."""

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data import prepare as prepare_module
from data.shards import read_prepared
from data.sources import DataError, document_key, get_source
from data.validation import validation_set
from models.distributed import Distributed
from models.trainer import make_loaders, rank_share
from tests.helpers import FIXTURES, assert_one_line_error, run_script
from tokenization.tokenizer import byte_tokenizer, tokenizer_from_tiktoken_file
from transformer_setup.params import build_configs


def prose(path, paragraphs: int, tag: str = "") -> None:
    """A text file of distinct paragraphs (each names its number, so overlaps are visible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"Paragraph {tag}{i}: the river carries silt to the delta, where "
                            f"farmers plant rice in spring and harvest in autumn.\n"
                            for i in range(paragraphs)))


def loaders(tmp_path, **overrides):
    _, tc = build_configs("tiny", {"out_dir": str(tmp_path / "run"), "data_workers": 0,
                                   "batch_size": 8, "accumulation_steps": 1, **overrides})
    return make_loaders(tc, byte_tokenizer(), 128, tc.accumulation_steps, torch.device("cpu"))


def training_documents(train) -> list[str]:
    """Every document the training loader's units hold (read as the workers read them)."""
    source = train.reader.source
    return [d for u in train.units for j in range(u.pieces) for d in source.read(u, j)]


# ----------------------------------------------------------------------------- a fixed set

def test_validation_rows_do_not_depend_on_processes_or_micro_batch(tmp_path):
    prose(tmp_path / "book.txt", 8000)  # 1.1 MB
    rows = {}
    for batch, accumulation in [(1, 8), (8, 1), (3, 4)]:
        train, val, _ = loaders(tmp_path, data=str(tmp_path / "book.txt"), batch_size=batch,
                                accumulation_steps=accumulation, eval_iters=2)
        train.close()
        rows[batch, accumulation] = val.rows
        assert val.identity["tokens"] == 2 * 32 * 128
    assert all(np.array_equal(r, rows[1, 8]) for r in rows.values())
    table = torch.from_numpy(rows[1, 8])
    for world in (1, 2, 8):  # every rank its share, the same number of micro-batches each
        for batch_size in (1, 5, 64):
            shares = [rank_share(table, batch_size, Distributed(r, r, world))
                      for r in range(world)]
            assert len({len(s) for s in shares}) == 1
            scored = torch.cat([b for s in shares for b in s])
            scored = scored[(scored[:, 1:] >= 0).any(dim=1)]  # padding rows score nothing
            assert torch.equal(scored, table)


def test_a_small_held_out_split_gives_the_rows_or_one_line(tmp_path, gpt2_tiktoken_file):
    text = (FIXTURES / "wikitext-2" / "valid.txt").read_text()[:1_100_000]
    (tmp_path / "wiki.txt").write_text(text)
    source = get_source(str(tmp_path / "wiki.txt"))
    held = sum(u.stop - u.start for u in source.units("val"))
    assert 0.04 < held / len(text.encode()) < 0.06  # the documented 5%
    gpt2 = tokenizer_from_tiktoken_file(gpt2_tiktoken_file, "gpt2")
    val = validation_set(str(tmp_path / "wiki.txt"), None, source, gpt2, 1024, 10 * 1024, {})
    assert val.rows.shape == (10, 1025)
    result = run_script("models/gpt.py", "--preset", "1b", "--n_layer", "1", "--n_embd", "64",
                        "--n_head", "2", "--ffn_hidden", "128", "--device", "cpu",
                        "--batch_size", "2", "--data", str(tmp_path / "wiki.txt"),
                        "--tokenizer", str(gpt2_tiktoken_file), "--out_dir",
                        str(tmp_path / "run"), "--data_workers", "0", cwd=tmp_path)
    assert_one_line_error(result, "validation text of", "fewer than the 4,194,305 asked for",
                          "--val_tokens")


def test_resume_on_another_validation_set_starts_the_best_again(tmp_path):
    run = ["--preset", "tiny", "--max_iters", "2", "--batch_size", "4", "--sample_tokens", "0",
           "--log_interval", "1", "--eval_interval", "2", "--out_dir", str(tmp_path / "run"),
           "--data_workers", "0"]
    first = run_script("models/gpt.py", *run, "--val_tokens", "2048", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ckpt["validation"]["tokens"] == 2048 and math.isfinite(ckpt["best_val_loss"])
    again = run_script("models/gpt.py", *run, "--val_tokens", "4096", "--max_iters", "4",
                       "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "validation set differs from the checkpoint's" in again.stdout
    same = run_script("models/gpt.py", *run, "--val_tokens", "4096", "--max_iters", "6",
                      "--resume", cwd=tmp_path)
    assert "validation set differs" not in same.stdout


# ----------------------------------------------------------------------------- no leakage

def test_val_data_inside_the_training_folder_is_never_trained_on(tmp_path):
    corpus = tmp_path / "corpus"
    for name in ("a", "b", "c"):
        prose(corpus / f"{name}.txt", 600, tag=name)
    prose(corpus / "val.txt", 300, tag="v")
    (corpus / "copy_of_val.txt").write_bytes((corpus / "val.txt").read_bytes())
    train, val, _ = loaders(tmp_path, data=str(corpus), val_data=str(corpus / "val.txt"),
                            val_tokens=4096)
    documents = training_documents(train)
    train.close()
    assert {u.path.rsplit("/", 1)[1] for u in train.units} == {"a.txt", "b.txt", "c.txt"}
    val_text = (corpus / "val.txt").read_text()
    assert documents and not any("Paragraph v" in d for d in documents)
    assert not {document_key(d) for d in documents} & {document_key(val_text.strip())}


def test_val_data_with_a_hub_dataset_that_has_its_own_splits(tmp_path, monkeypatch):
    from tests.data.test_hub import serve

    repo = tmp_path / "wiki"
    (repo / "data").mkdir(parents=True)
    for split, first in (("train", 0), ("validation", 5000), ("test", 9000)):
        rows = [f"Article {i} tells of a ship that sailed to the northern islands."
                for i in range(first, first + 300)]
        pq.write_table(pa.table({"text": rows}), repo / "data" / f"{split}-00000-of-00001.parquet",
                       row_group_size=50)
    prose(tmp_path / "mine.txt", 400)
    with serve(repo, "org/wiki", monkeypatch, tmp_path / "cache"):
        train, _, _ = loaders(tmp_path, data="org/wiki", val_data=str(tmp_path / "mine.txt"),
                              val_tokens=2048)
        numbers = {int(d.split()[1]) for d in training_documents(train)}
        train.close()
    assert numbers == set(range(300))  # its own validation and test articles never train


def test_val_data_a_prepared_val_folder_of_the_same_source(tmp_path):
    data = tmp_path / "fine"
    data.mkdir()
    for f in range(2):
        rows = [f"Document {f * 1000 + i} explains photosynthesis in plain words."
                for i in range(1000)]
        pq.write_table(pa.table({"text": rows}), data / f"{f:03d}.parquet", row_group_size=50)
    prepare_module.main(["--data", str(data), "--tokenizer", "bytes", "--out",
                         str(tmp_path / "prepared"), "--workers", "1"])
    tok = byte_tokenizer()
    val_tokens = np.concatenate(read_prepared(tmp_path / "prepared", "val", tok))
    val_docs = {d for d in tok.decode(val_tokens.tolist()).split("<|endoftext|>") if d}
    assert len(val_docs) == 100  # 5% of 40 row groups of 50
    train, val, _ = loaders(tmp_path, data=str(data), val_data=str(tmp_path / "prepared"),
                            val_tokens=1024)
    documents = training_documents(train)
    train.close()
    assert len(documents) == 1900 and not set(documents) & val_docs
    assert val.covers.documents == frozenset(map(document_key, val_docs))


def test_val_data_that_is_all_of_data_is_refused(tmp_path):
    prose(tmp_path / "book.txt", 2000)
    with pytest.raises(DataError, match="covers all of --data"):
        loaders(tmp_path, data=str(tmp_path / "book.txt"), val_data=str(tmp_path / "book.txt"),
                val_tokens=1024)


def test_prepared_training_shards_refuse_their_own_source_as_val_data(tmp_path):
    prose(tmp_path / "src" / "book.txt", 4000)
    prepare_module.main(["--data", str(tmp_path / "src"), "--tokenizer", "bytes", "--out",
                         str(tmp_path / "prepared"), "--workers", "1"])
    with pytest.raises(DataError, match="prepared from"):
        loaders(tmp_path, data=str(tmp_path / "prepared"), val_data=str(tmp_path / "src"),
                val_tokens=1024)
    meta = json.loads((tmp_path / "prepared" / "meta.json").read_text())
    assert meta["splits"]["val"]["tokens"] > 0


def test_a_few_big_row_groups_hold_out_pieces_not_a_whole_group(tmp_path, monkeypatch):
    from data import sources
    for f in range(3):  # three single-row-group files, 10 pieces each
        rows = [f"Row {f}-{i} describes the tide tables of a small harbour." for i in range(2000)]
        pq.write_table(pa.table({"text": rows}), tmp_path / f"{f}.parquet")
    monkeypatch.setattr(sources, "PIECE_BYTES", 12 << 10)
    monkeypatch.setattr(sources, "MAX_VAL_BYTES", 12 << 10)
    source = get_source(str(tmp_path / "*.parquet"))
    val, train = source.units("val"), source.units("train")
    assert len(val) == 1 and val[0].start == 0 and 0 < val[0].stop < 2000  # first pieces only
    assert sum(u.nbytes for u in val) < 0.06 * sum(u.nbytes for u in source.units("all"))
    held = list(source.documents("val"))
    trained = [d for u in train for j in range(u.pieces) for d in source.read(u, j)]
    assert not set(held) & set(trained) and len(held) + len(trained) == 6000


def test_huge_shared_row_groups_say_what_each_start_costs():
    from data.sources import Unit
    from models.trainer import shared_units_note
    huge = [Unit(f"{i}.parquet", 0, 0, 10**6, 2000, 3_500_000_000) for i in range(14)]
    note = shared_units_note(huge, 288, 8)
    assert "row groups of up to 3.5 GB" in note and "data/prepare.py" in note
    assert shared_units_note(huge, 8, 1) == ""  # as many units as rows: nothing shared


def test_a_resumed_run_keeps_the_revisions_it_read():
    from models.trainer import saved_revisions
    _, tc = build_configs("tiny", {"val_data": "org/heldout"})
    saved = {"data": {"revision": "a" * 40},
             "validation": {"data": {"source": "org/heldout", "split": "all",
                                     "revision": "b" * 40}}}
    assert saved_revisions(saved, tc) == ("a" * 40, "b" * 40)
    _, other = build_configs("tiny", {"val_data": "org/other"})
    assert saved_revisions(saved, other) == ("a" * 40, None)  # another set: read it anew
