"""Sources: pydocs, local txt/jsonl/parquet (FineWeb-Edu-shaped), splits, the Hub, cleaning."""

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data import sources
from data.clean_text import clean_text
from data.sources import DataError, FileSource, get_source, wikitext_articles
from tests.helpers import FIXTURES, assert_one_line_error, run_script


def test_pydocs_is_real_english_with_disjoint_fixed_splits():
    source = get_source("pydocs")
    train, val = list(source.documents("train")), list(source.documents("val"))
    assert sum(map(len, train)) > 1_000_000 and sum(map(len, val)) > 20_000
    assert not set(train) & set(val)
    assert any("Return" in doc for doc in train)
    assert list(source.documents("val")) == val


def test_hashed_split_holds_out_about_five_percent():
    share = sum(sources.hashed_split(f"doc{i}") == "val" for i in range(10_000)) / 10_000
    assert 0.03 < share < 0.07


def fineweb_rows(n: int) -> dict[str, list]:
    """Rows with FineWeb-Edu's columns."""
    return {
        "text": [f"Document number {i} explains photosynthesis in plain words." for i in range(n)],
        "id": [f"<urn:uuid:{i:08d}>" for i in range(n)],
        "dump": ["CC-MAIN-2024-10"] * n,
        "url": [f"https://example.org/{i}" for i in range(n)],
        "date": ["2024-02-20T10:00:00Z"] * n,
        "file_path": ["s3://commoncrawl/x.warc.gz"] * n,
        "language": ["en"] * n,
        "language_score": [0.97] * n,
        "token_count": [12] * n,
        "score": [i % 5 + 0.6 for i in range(n)],
        "int_score": [i % 5 + 1 for i in range(n)],
    }


def test_fineweb_edu_shaped_parquet_through_the_hub_code_path(tmp_path):
    pq.write_table(pa.table(fineweb_rows(400)), tmp_path / "part-0.parquet", row_group_size=20)
    source = get_source(str(tmp_path / "*.parquet"), min_int_score=3)
    assert isinstance(source, FileSource)  # the class that reads Hub datasets
    train, val = list(source.documents("train")), list(source.documents("val"))
    assert len(source.units("all")) == 20  # a unit per row group
    kept = {int(t.split()[2]) for t in train + val}
    assert kept == {i for i in range(400) if i % 5 + 1 >= 3}
    assert val and not set(train) & set(val)


def test_parquet_without_the_text_column_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"content": ["some text that is long enough"]}), tmp_path / "x.parquet")
    with pytest.raises(DataError, match="no column 'text'.*content"):
        list(get_source(str(tmp_path / "x.parquet")).documents("all"))
    docs = list(get_source(str(tmp_path / "x.parquet"), text_field="content").documents("all"))
    assert docs == ["some text that is long enough"]


def test_jsonl_rows_are_documents(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"body": f"row {i} with enough text to keep"}) + "\n"
                            for i in range(100)))
    docs = list(get_source(str(path), text_field="body").documents("all"))
    assert docs == [f"row {i} with enough text to keep" for i in range(100)]


def test_a_text_file_is_cut_into_line_aligned_units(tmp_path):
    lines = [f"line {i} of the book\n" for i in range(40_000)]  # 0.9 MB
    (tmp_path / "book.txt").write_text("".join(lines))
    source = get_source(str(tmp_path / "book.txt"))
    units = sorted(source.units("all"), key=lambda u: u.start)  # train's, then val's
    assert len(units) > 20 and units[0].start == 0 and units[-1].stop == len("".join(lines))
    assert all(a.stop == b.start for a, b in zip(units, units[1:]))  # contiguous, no gap
    raw = (tmp_path / "book.txt").read_bytes()
    assert all(raw[u.start - 1:u.start] == b"\n" for u in units[1:])  # each starts at a line
    train, val = list(source.documents("train")), list(source.documents("val"))
    assert "".join(d + "\n" for u in units for d in source.read(u)) == "".join(lines)
    assert val and not {line for d in val for line in d.splitlines()} & \
        {line for d in train for line in d.splitlines()}


def test_a_line_longer_than_a_unit_is_cut_at_a_character(tmp_path):
    text = "é" * 600_000  # one line of 1.2 MB of two-byte characters
    (tmp_path / "one.txt").write_text(text)
    source = get_source(str(tmp_path / "one.txt"))
    assert len(source.units("all")) > 30
    units = sorted(source.units("all"), key=lambda u: u.start)
    assert "".join(d for u in units for d in source.read(u)) == text  # no character cut in two


def test_jsonl_units_hold_whole_rows(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": f"row {i} with enough text to keep\u2028"
                                                f" and a separator inside"}) + "\n"
                            for i in range(20_000)))
    source = get_source(str(path))
    assert len(source.units("all")) > 30
    assert len(list(source.documents("all"))) == 20_000


def test_a_jsonl_row_longer_than_any_unit_is_read_whole(tmp_path):
    path = tmp_path / "books.jsonl"
    rows = [f"short row {i} " + "x" * 3000 for i in range(600)]
    rows.insert(300, "the long row " + "y" * 3_000_000)  # 3 MB, like a book in a code corpus
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    source = get_source(str(path))
    units = source.units("all")
    assert len(units) > 20 and max(u.stop - u.start for u in units) > 3_000_000
    read = [d for u in units for d in source.read(u)]
    assert sorted(read) == sorted(rows)  # every row once, none cut


def test_many_text_files_split_by_units(tmp_path):
    for i in range(60):
        (tmp_path / f"{i:03d}.txt").write_text(f"file {i}: " + "words " * 10)
    source = get_source(str(tmp_path))
    train, val = list(source.documents("train")), list(source.documents("val"))
    assert len(train) + len(val) == 60 and len(val) == 3 and not set(train) & set(val)
    assert [Path(u.path).name for u in source.units("val")] == ["019.txt", "039.txt", "059.txt"]


def test_a_source_too_small_to_hold_out_names_val_data(tmp_path):
    (tmp_path / "tiny.txt").write_text("a single short document of a few words")
    with pytest.raises(DataError, match="too small.*--val_data"):
        get_source(str(tmp_path / "tiny.txt")).units("val")


def test_a_corrupt_unit_is_named(tmp_path):
    pq.write_table(pa.table(fineweb_rows(50)), tmp_path / "x.parquet")
    source = get_source(str(tmp_path / "x.parquet"))
    units = source.units("all")
    data = bytearray((tmp_path / "x.parquet").read_bytes())
    data[8:400] = b"\xff" * 392  # the first column chunk's pages
    (tmp_path / "x.parquet").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"cannot read .*x\.parquet \(row group 0"):
        source.read(units[0])


@pytest.mark.parametrize("spec, fragment", [
    ("nope", "unknown data source 'nope'"),
    ("corpus/*.txt", "matches no files"),
    ("missing.txt", "file not found"),
])
def test_bad_specs_are_clear_errors(spec, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=fragment):
        get_source(spec)


def test_mixed_or_empty_folders_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="holds no"):
        get_source(str(tmp_path))
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.jsonl").write_text("{}")
    with pytest.raises(DataError, match="one kind"):
        get_source(str(tmp_path))


def test_unknown_split():
    with pytest.raises(DataError, match="no 'test' split"):
        list(get_source("pydocs").documents("test"))


def test_unreachable_hub_is_one_line_quickly(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}  # nothing listens there
    start = time.monotonic()
    result = run_script("models/gpt.py", "--preset", "tiny", "--data", "fineweb-edu",
                        "--out_dir", str(tmp_path / "o"), cwd=tmp_path, env=env)
    assert_one_line_error(result, "cannot reach dataset 'HuggingFaceFW/fineweb-edu'", "pydocs")
    assert time.monotonic() - start < 60


def test_wikitext_lines_are_grouped_into_articles():
    lines = [" = Alpha = \n", " \n", " Alpha is first . \n", " = = History = = \n",
             " Old . \n", " = Beta = \n", " Beta is second . \n"]
    articles = list(wikitext_articles(iter(lines)))
    assert len(articles) == 2
    assert articles[0].startswith(" = Alpha =") and "History" in articles[0]
    assert articles[1].startswith(" = Beta =")


@pytest.mark.skipif(not (FIXTURES / "wikitext-2").exists(), reason="fixture absent")
def test_wikitext_fixture_reads_and_cleans():
    (text,) = get_source(str(FIXTURES / "wikitext-2" / "test.txt")).documents("all")
    assert " @-@ " not in text and " @,@ " not in text
    assert "is an English film , television and theatre actor" in text


@pytest.mark.parametrize("raw, cleaned", [
    ("Cafe\u0301 au lait, twenty chars", "Café au lait, twenty chars"),  # NFC
    ("line one\r\nline two\rline three", "line one\nline two\nline three"),
    ("bell\x07 and null\x00 and bom\ufeff gone here", "bell and null and bom gone here"),
    ("state @-@ of @-@ the @-@ art , 1 @,@ 000 and 3 @.@ 5", "state-of-the-art , 1,000 and 3.5"),
    ("  trailing   \n\n\n\n\nspaces and blank lines  ", "trailing\n\nspaces and blank lines"),
    ("\tindented code\n\tstays indented", "indented code\n\tstays indented"),
])
def test_each_cleaning_rule(raw, cleaned):
    assert clean_text(raw, min_chars=1) == cleaned


def test_short_and_empty_documents_are_dropped():
    assert clean_text("") is None
    assert clean_text("   \n\n  ") is None
    assert clean_text("too short") is None
    assert clean_text("long enough to be a document") is not None


def test_an_empty_source_is_one_clear_line(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    result = run_script("models/gpt.py", "--preset", "tiny", "--data", str(tmp_path / "empty.txt"),
                        "--data_workers", "0", "--out_dir", str(tmp_path / "o"), cwd=tmp_path)
    assert_one_line_error(result, "has no", "documents")


def test_the_pydocs_cache_equals_a_fresh_parse(tmp_path, monkeypatch):
    from data import pydocs

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    pydocs.pydocs_documents.cache_clear()
    try:
        first = pydocs.pydocs_documents()  # parses and writes the cache
        assert pydocs._cache_path().parent == tmp_path / "gpt-pretrain"
        assert pydocs._cache_path().exists()
        pydocs.pydocs_documents.cache_clear()
        assert pydocs.pydocs_documents() == first == pydocs._build_documents()
    finally:
        pydocs.pydocs_documents.cache_clear()


def test_units_never_exceed_the_largest_a_lane_should_hold(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "TARGET_UNITS", 4)  # as a 40 GB source would with 4,096
    monkeypatch.setattr(sources, "MAX_UNIT_BYTES", 64 << 10)
    (tmp_path / "big.txt").write_text("".join(f"line {i} of many\n" for i in range(120_000)))
    units = get_source(str(tmp_path / "big.txt")).units("all")
    assert len(units) > 20 and max(u.stop - u.start for u in units) <= (64 << 10) + 100


def test_listing_reads_little_of_files_with_few_cuts_and_long_rows_once(tmp_path, monkeypatch):
    read = []
    real = sources._read_range
    monkeypatch.setattr(sources, "_read_range",
                        lambda fs, path, a, b: read.append(b - a) or real(fs, path, a, b))
    real_at = sources._read_at
    monkeypatch.setattr(sources, "_read_at", lambda f, a, n: read.append(n) or real_at(f, a, n))
    monkeypatch.setattr(sources, "TARGET_UNITS", 64)  # sparse cuts: ~94 KB apart
    rows = [f"row {i} " + "z" * 3000 for i in range(1000)]
    rows.insert(500, "the long row " + "y" * 3_000_000)
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    units = get_source(str(path)).units("all")
    assert len(units) > 30 and sum(read) < 2 * path.stat().st_size  # not once per cut
    assert sorted(d for u in units for d in get_source(str(path)).read(u)) == sorted(rows)
