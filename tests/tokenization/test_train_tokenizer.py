"""train_tokenizer.py: a sample across the whole source, read in full before any merge."""

import json

import pytest
from tqdm import tqdm

from data.sources import DataError, get_source
from tests.helpers import assert_one_line_error, run_script
from tokenization import train_tokenizer
from tokenization.tokenizer import get_tokenizer


def corpus(folder, files=20, lines=60):
    """files .jsonl files whose documents name their file: `file 7 line 3 ...`."""
    folder.mkdir()
    for f in range(files):
        rows = [{"text": f"file {f} line {i}: " + "the quick brown fox jumps over the lazy dog "
                 * 3} for i in range(lines)]
        (folder / f"part-{f:02d}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def test_the_text_is_sampled_across_the_whole_source(tmp_path):
    source = get_source(str(corpus(tmp_path / "c", files=80)))  # a unit per file
    everything = sum(map(len, source.documents("train")))
    with tqdm(disable=True) as progress:
        texts, chars = train_tokenizer.sample_text(source, everything // 4, 0, progress)
    assert everything // 4 == chars == sum(len(t.decode()) for t in texts)
    files = {int(t.decode().split()[1]) for t in texts}
    assert len(files) >= 15 and max(files) >= 60, files  # not the first quarter of the files
    with tqdm(disable=True) as progress:
        again, _ = train_tokenizer.sample_text(source, everything // 4, 0, progress)
    assert again == texts  # seeded


@pytest.mark.parametrize("failure", [DataError("part-09.jsonl: line 3 is not JSON"),
                                     KeyboardInterrupt()])
def test_a_read_error_or_ctrl_c_stops_before_any_merge(tmp_path, monkeypatch, failure):
    """The trainer used to take the text lazily: an error in the middle of reading surfaced only
    after the merges had run on the partial text (minutes to hours at FineWeb scale)."""
    source = get_source(str(corpus(tmp_path / "c")))
    reads, trained = [], []

    def read(unit, piece=0, stream=None):
        reads.append(unit)
        if len(reads) == 10:
            raise failure
        return type(source).read(source, unit, piece, stream)

    monkeypatch.setattr(source, "read", read)
    monkeypatch.setattr(train_tokenizer, "source_from_args", lambda args: source)
    real_train = train_tokenizer.train_bpe
    monkeypatch.setattr(train_tokenizer, "train_bpe",
                        lambda *args, **kwargs: trained.append(1) or real_train(*args, **kwargs))
    with pytest.raises(type(failure)):
        train_tokenizer.main(["--data", "unused", "--vocab_size", "300",
                              "--out", str(tmp_path / "tok")])
    assert len(reads) == 10 and not trained and not (tmp_path / "tok").exists()


def test_a_corrupt_file_is_one_line_and_writes_nothing(tmp_path):
    folder = corpus(tmp_path / "c")
    part = folder / "part-07.jsonl"  # every line broken, each keeping its length (and units)
    part.write_text(part.read_text().replace('{"text"', '["text"'))
    result = run_script("tokenization/train_tokenizer.py", "--data", str(folder),
                        "--vocab_size", "300", "--out", str(tmp_path / "tok"), cwd=tmp_path)
    assert_one_line_error(result, "part-07.jsonl", "not JSON")
    assert not (tmp_path / "tok").exists()


def test_an_existing_out_is_kept_unless_overwrite(tmp_path):
    folder = corpus(tmp_path / "c", files=4)
    out = tmp_path / "tok"
    args = ["tokenization/train_tokenizer.py", "--data", str(folder), "--vocab_size", "300",
            "--out", str(out)]
    assert run_script(*args, cwd=tmp_path).returncode == 0
    before = (out / "tokenizer.json").read_bytes()
    assert_one_line_error(run_script(*args, "--vocab_size", "280", cwd=tmp_path),
                          "already exists", "--overwrite")
    assert (out / "tokenizer.json").read_bytes() == before
    result = run_script(*args, "--vocab_size", "280", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert get_tokenizer(str(out)).n_vocab == 280 and "peak memory" in result.stdout
