"""The Hub path for real, offline: HfApi and HfFileSystem talk to a local stand-in server
(tests/hub_server.py) through HF_ENDPOINT, and every byte they fetch is counted."""

import contextlib
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from data import sources
from data.loader import StreamingLoader, take_batches
from data.sources import DataError, FileSource, get_source
from tests.helpers import assert_one_line_error, run_script
from tests.hub_server import HubServer, pointed_at
from tokenization.tokenizer import byte_tokenizer

CARD = """---
configs:
- config_name: sample-10BT
  data_files:
  - split: train
    path: sample/10BT/*
- config_name: tiny
  data_files:
  - split: train
    path: tiny/train-*
  - split: validation
    path: tiny/validation-*
---
# A FineWeb-Edu look-alike
"""


def write_parquet(path, first: int, rows: int, row_group: int) -> None:
    texts = [f"Document {i} explains photosynthesis in plain words, step by step."
             for i in range(first, first + rows)]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts, "int_score": [i % 5 + 1 for i in range(rows)]}),
                   path, row_group_size=row_group)


@contextlib.contextmanager
def serve(repo, repo_id: str, monkeypatch, cache):
    """Serve folder `repo` as dataset repo_id, with every Hub client pointed at it."""
    with HubServer(repo, repo_id) as server, pointed_at(server, cache):
        server.repo = repo
        yield server


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A dataset repository HuggingFaceFW/fineweb-edu with two configurations, served locally."""
    repo = tmp_path / "repo"
    for f in range(3):
        write_parquet(repo / "sample/10BT" / f"{f:03d}_00000.parquet", f * 2000, 2000, 5)
    write_parquet(repo / "tiny/train-00000-of-00001.parquet", 0, 300, 30)
    write_parquet(repo / "tiny/validation-00000-of-00001.parquet", 10_000, 60, 30)
    (repo / "README.md").write_text(CARD)
    with serve(repo, "HuggingFaceFW/fineweb-edu", monkeypatch, tmp_path / "cache") as server:
        yield server


def test_wikitext_103_is_read_as_articles_through_the_same_path(tmp_path, monkeypatch):
    repo = tmp_path / "wikitext"
    folder = repo / "wikitext-103-raw-v1"
    folder.mkdir(parents=True)
    for split, first in (("train", 0), ("validation", 100), ("test", 200)):
        lines = []
        for article in range(first, first + 30):
            lines += [f" = Article {article} = \n", " \n", f" It is article {article} . \n",
                      " = = Section = = \n", " More words about it , 1 @,@ 000 of them . \n"]
        pq.write_table(pa.table({"text": lines}), folder / f"{split}-00000-of-00001.parquet",
                       row_group_size=50)
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: wikitext-103-raw-v1\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: wikitext-103-raw-v1/{s}-*\n"
                  for s in ("train", "validation", "test")) + "---\n")
    with serve(repo, "Salesforce/wikitext", monkeypatch, tmp_path / "cache"):
        source = get_source("wikitext-103")
        val, test = list(source.documents("val")), list(source.documents("test"))
    assert len(val) == 30 and val[0].startswith("= Article 100 =") and "1,000" in val[0]
    assert "= = Section = =" in val[0] and test[-1].startswith("= Article 229 =")


def numbers(docs) -> list[int]:
    return [int(d.split()[1]) for d in docs]


def test_fineweb_edu_is_read_by_row_group_through_hffilesystem(hub):
    source = get_source("fineweb-edu", min_int_score=3)
    assert isinstance(source, FileSource) and source.on_hub
    units = source.units("all")
    assert len(units) == 3 * 400 and {u.stop - u.start for u in units} == {5}  # row groups
    assert all(u.path.startswith("datasets/HuggingFaceFW/fineweb-edu@") for u in units)
    train, val = numbers(source.documents("train")), numbers(source.documents("val"))
    assert sorted(train + val) == [i for i in range(6000) if i % 2000 % 5 + 1 >= 3]
    assert len(source.units("val")) == 60 and not set(train) & set(val)  # 5% of 1,200
    local = get_source(str(hub.repo / "sample/10BT/*.parquet"), min_int_score=3)
    assert numbers(local.documents("val")) == val  # the same code over the local disk


def test_a_native_validation_split_is_used(hub):
    source = get_source("fineweb-edu", data_config="tiny")
    assert numbers(source.documents("val")) == list(range(10_000, 10_060))
    assert numbers(source.documents("train")) == list(range(300))


def test_an_epoch_over_8_ranks_x_2_workers_fetches_each_byte_once(hub):
    source = get_source("fineweb-edu")
    source.units("train")  # listing reads each file's footer once
    hub.bytes_sent.clear()
    tok = byte_tokenizer()
    for rank in range(8):
        loader = StreamingLoader(source, tok, block_size=64, batch_size=2, rank=rank,
                                 world_size=8, workers=2, repeat=False)
        take_batches(loader, 100_000)
        loader.close()
    needed = 0  # the text column's bytes of every train row group, each once
    for unit in source.units("train"):
        meta = pq.ParquetFile(hub.repo / unit.path.split("@")[1].split("/", 1)[1]).metadata
        needed += meta.row_group(unit.index).column(0).total_compressed_size
    sent = sum(hub.bytes_sent.values())
    assert set(hub.bytes_sent) == {f"sample/10BT/{f:03d}_00000.parquet" for f in range(3)}
    assert sent == needed  # footers came with the listing, inherited by the workers


def test_units_are_listed_once_per_machine(hub):
    get_source("fineweb-edu").units("train")
    listed = len(hub.requests)
    get_source("fineweb-edu").units("train")
    reads = [r for r in hub.requests[listed:] if r.endswith(".parquet")]
    assert not reads  # the second listing comes from the cache


def test_unknown_configuration_and_unreadable_units_are_one_line(hub, monkeypatch):
    with pytest.raises(DataError, match="no configuration 'nope' \\(it has sample-10BT, tiny\\)"):
        get_source("fineweb-edu", data_config="nope")
    source = get_source("fineweb-edu", data_config="tiny")
    units = source.units("train")
    monkeypatch.setattr(sources, "HUB_RETRY_SECONDS", 0.0)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)
    hub.__exit__()  # the Hub goes away mid-run
    with pytest.raises(DataError, match="cannot read .*row group 0.* after 4 tries"):
        source.read(units[0])


def test_training_streams_from_the_hub(hub, tmp_path):
    result = run_script("models/gpt.py", "--preset", "tiny", "--data", "fineweb-edu",
                        "--data_config", "tiny", "--max_iters", "3", "--batch_size", "4",
                        "--accumulation_steps", "1",
                        "--block_size", "32", "--eval_iters", "1", "--sample_tokens", "0",
                        "--out_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    units = len(get_source("fineweb-edu", data_config="tiny").units("train"))
    assert f"HuggingFaceFW/fineweb-edu, {units} units streamed into 4 lanes" in result.stdout
    state = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["data"]
    assert state["kind"] == "lanes" and len(state["lanes"]) == 4


def test_a_missing_dataset_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with HubServer(tmp_path / "empty", "org/other") as server:
        env = {**os.environ, "HF_ENDPOINT": server.endpoint}
        result = run_script("models/gpt.py", "--preset", "tiny", "--data", "org/missing",
                            "--out_dir", str(tmp_path / "o"), cwd=tmp_path, env=env)
    assert_one_line_error(result, "cannot reach dataset 'org/missing'")


def test_hellaswag_rows_come_from_the_hubs_validation_split(tmp_path, monkeypatch):
    from evaluation.hellaswag_scoring import read_rows

    repo = tmp_path / "hellaswag"
    (repo / "data").mkdir(parents=True)
    rows = {"ctx": [f"context {i}" for i in range(12)],
            "endings": [[f"ending {i}.{j}" for j in range(4)] for i in range(12)],
            "label": [str(i % 4) for i in range(12)]}
    pq.write_table(pa.table(rows), repo / "data" / "validation-00000-of-00001.parquet")
    pq.write_table(pa.table(rows), repo / "data" / "train-00000-of-00001.parquet")
    with serve(repo, "Rowan/hellaswag", monkeypatch, tmp_path / "cache"):
        found = list(read_rows("hellaswag"))
    assert [r["ctx"] for r in found] == rows["ctx"] and found[3]["endings"][1] == "ending 3.1"


def test_a_job_starts_with_one_listing_and_no_footer_per_rank(hub):
    """8 ranks x 2 workers: rank 0 lists and reads the held-out rows, the others receive the
    listing (as make_loaders broadcasts it), and nobody fetches a footer again."""
    import pickle

    from data.validation import validation_set

    tok = byte_tokenizer()
    source = get_source("fineweb-edu").listed()
    validation_set("fineweb-edu", None, source, tok, 64, 2048, {})
    listing = len(hub.requests)
    sizes = {p.relative_to(hub.repo).as_posix(): p.stat().st_size
             for p in hub.repo.rglob("*.parquet")}
    for rank in range(8):
        copy = pickle.loads(pickle.dumps(source)).load_footers()  # as make_loaders
        loader = StreamingLoader(copy, tok, block_size=64, batch_size=2, rank=rank,
                                 world_size=8, workers=2)
        loader.next_batch()
        loader.close()
    reads = hub.requests[listing:]
    tails = [r for r in reads for name, size in sizes.items()
             if name in r and r.endswith(f"-{size - 1}")]
    assert not tails  # footers: read once, at the listing
    assert all("/resolve/" in r and "bytes=" in r for r in reads)  # row groups' text only
    assert len(set(reads)) == len(reads) >= 16  # each lane's units, none fetched twice
    assert listing <= 20  # revision, card, file listing, 3 footers, the held-out row groups


def test_the_hub_revision_is_pinned_for_the_run_and_a_new_one_is_refused(tmp_path):
    old, new = tmp_path / "v1", tmp_path / "v2"
    for folder, first in ((old, 0), (new, 50_000)):
        for f in range(2):
            write_parquet(folder / "data" / f"train-{f:05d}-of-00002.parquet",
                          first + f * 3000, 3000, 100)
    first_sha, second_sha = "1" * 40, "2" * 40
    with HubServer(old, "org/corpus", revisions={first_sha: old}) as server:
        env = {**os.environ, "HF_ENDPOINT": server.endpoint,
               "XDG_CACHE_HOME": str(tmp_path / "cache")}
        run = ["--preset", "tiny", "--data", "org/corpus", "--max_iters", "2",
               "--batch_size", "4", "--val_tokens", "1024", "--sample_tokens", "0",
               "--data_workers", "0", "--out_dir", str(tmp_path / "run")]
        result = run_script("models/gpt.py", *run, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        assert f"at revision {first_sha}" in result.stdout
        state = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)["data"]
        assert state["revision"] == first_sha
        server.revisions[second_sha] = new  # the dataset is rewritten: main moves on
        server.main = second_sha
        resumed = run_script("models/gpt.py", *run, "--max_iters", "4", "--resume",
                             cwd=tmp_path, env=env)
        assert resumed.returncode == 0, resumed.stderr
        assert f"at revision {first_sha}" in resumed.stdout  # pinned, not main
        moved = run_script("models/gpt.py", *run[:3], f"org/corpus@{second_sha}", *run[4:],
                           "--max_iters", "6", "--resume", cwd=tmp_path, env=env)
        assert_one_line_error(moved, first_sha, second_sha, "cannot resume")
        named = run_script("models/gpt.py", *run[:3], f"org/corpus@{first_sha}", *run[4:],
                           "--max_iters", "6", "--resume", cwd=tmp_path, env=env)
        assert named.returncode == 0, named.stderr
        run[3] = "org/corpus@main"  # a branch: resolved to its commit, then compared
        branch_run = [*run[:-1], str(tmp_path / "on-main")]
        started = run_script("models/gpt.py", *branch_run, cwd=tmp_path, env=env)
        assert started.returncode == 0 and second_sha in started.stdout, started.stderr
        again = run_script("models/gpt.py", *branch_run, "--max_iters", "4", "--resume",
                           cwd=tmp_path, env=env)
        assert again.returncode == 0, again.stderr


def test_row_groups_below_min_int_score_are_never_fetched(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / "sample/10BT").mkdir(parents=True)
    scores = [1 + (i // 50) % 5 for i in range(1000)]  # each row group of 50 one score
    texts = [f"Document {i} scored {s} for its teaching value." for i, s in enumerate(scores)]
    pq.write_table(pa.table({"text": texts, "int_score": scores}),
                   repo / "sample/10BT/000_00000.parquet", row_group_size=50)
    (repo / "README.md").write_text(CARD)
    with serve(repo, "HuggingFaceFW/fineweb-edu", monkeypatch, tmp_path / "cache") as server:
        source = get_source("fineweb-edu", min_int_score=4)
        assert len(source.units("all")) == 8  # 2 of the 5 scores: the footer's statistics
        server.bytes_sent.clear()
        kept = [d for d in source.documents("all")]
    assert len(kept) == 400 and all(int(d.split()[3]) >= 4 for d in kept)
    meta = pq.ParquetFile(repo / "sample/10BT/000_00000.parquet").metadata
    needed = sum(meta.row_group(u.index).column(0).total_compressed_size +
                 meta.row_group(u.index).column(1).total_compressed_size
                 for u in source.units("all"))
    assert sum(server.bytes_sent.values()) == needed
