"""Text sources behind one interface: `get_source(spec).documents(split)` yields cleaned texts.

| spec | source |
| --- | --- |
| `pydocs` | the Python documentation shipped with the interpreter (offline) |
| `fineweb-edu` | HuggingFaceFW/fineweb-edu, streamed (config `sample-10BT` unless given) |
| `wikitext-103` | WikiText-103 (raw), streamed; its lines grouped back into articles |
| a path, folder or glob | local `.txt` (a document per file), `.jsonl`/`.parquet` (one per row) |
| `ORG/NAME` | any other Hub dataset with a text column, streamed |

Splits: `train`, `val` (held out, fixed, disjoint from train), `test` where the dataset has one,
and `all`. How `val` is chosen:
- the dataset's own validation split when it has one (WikiText-103);
- Hub datasets without one: their first VAL_DOCS documents;
- pydocs and local rows: 5% of documents, chosen by a hash of the text (or id), so the choice
  never depends on order, sharding or how many documents were read;
- fewer than 20 local text files: the last 5% of each file's lines.

Documents are streamed, never all held in memory, and cleaned by data.clean_text (documents too
short after cleaning are skipped).
"""

from __future__ import annotations

import glob
import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from data.clean_text import clean_text
from data.pydocs import pydocs_documents
from transformer_setup.cli import UserError

SPLITS = ("train", "val", "test", "all")
VAL_PERCENT = 5
VAL_DOCS = 1000  # held-out documents of a Hub dataset that has no validation split
FEW_TEXT_FILES = 20
TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}


class DataError(UserError):
    pass


def hashed_split(key: str) -> str:
    """'val' for VAL_PERCENT% of keys, 'train' for the rest; stable across runs and machines."""
    return "val" if zlib.crc32(key.encode("utf-8")) % 100 < VAL_PERCENT else "train"


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split not in allowed:
        raise DataError(f"{name} has no {split!r} split (it has {', '.join(allowed)})")


def _cleaned(texts: Iterator[str]) -> Iterator[str]:
    for text in texts:
        cleaned = clean_text(text)
        if cleaned is not None:
            yield cleaned


class Source:
    """A named stream of documents with fixed splits."""

    name: str = "source"
    splits: tuple[str, ...] = ("train", "val", "all")

    def documents(self, split: str) -> Iterator[str]:
        """The cleaned documents of split, always in the same order."""
        _check_split(split, self.splits, self.name)
        return _cleaned(self._raw(split))

    def _raw(self, split: str) -> Iterator[str]:
        raise NotImplementedError


class PydocsSource(Source):
    name = "pydocs"

    def _raw(self, split: str) -> Iterator[str]:
        for doc_id, text in pydocs_documents():
            if split == "all" or hashed_split(doc_id) == split:
                yield text


@dataclass
class TextFilesSource(Source):
    """Local .txt files, one document per file, in sorted path order."""

    paths: list[Path]

    @property
    def name(self) -> str:  # type: ignore[override]
        return str(self.paths[0]) if len(self.paths) == 1 else f"{len(self.paths)} text files"

    def _raw(self, split: str) -> Iterator[str]:
        by_tail = len(self.paths) < FEW_TEXT_FILES
        for path in self.paths:
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError as err:
                raise DataError(f"cannot read {path} ({err.strerror})") from None
            if split == "all":
                yield text
            elif by_tail:  # a few big files: hold out the end of each
                lines = text.splitlines(keepends=True)
                cut = len(lines) - max(1, len(lines) * VAL_PERCENT // 100)
                yield "".join(lines[:cut] if split == "train" else lines[cut:])
            elif hashed_split(text) == split:
                yield text


def _hub_reachable(repo_id: str) -> None:
    """One quick request, so that no network means one clear line, not minutes of retries."""
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(repo_id, timeout=15)
    except Exception as err:  # connection, DNS, HTTP 404/401: all end here
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(f"cannot reach dataset {repo_id!r} on the Hugging Face Hub ({reason}); "
                        "use local files (--data 'corpus/*.parquet') or --data pydocs") from None


@dataclass
class DatasetSource(Source):
    """Rows streamed by the `datasets` library: a Hub dataset, or local jsonl/parquet files.

    The same code reads both, so a local parquet file with FineWeb-Edu's columns exercises the
    Hub path. min_int_score keeps rows whose `int_score` (FineWeb-Edu's 0-5 quality score) is at
    least that; articles=True groups WikiText's one-line rows back into articles.
    """

    path: str  # Hub id, or a builder name ("json", "parquet") with data_files
    config: str | None = None
    data_files: list[str] | None = None
    text_field: str = "text"
    min_int_score: int | None = None
    articles: bool = False

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.path if self.data_files is None else f"{len(self.data_files)} {self.path} files"

    @property
    def on_hub(self) -> bool:
        return self.data_files is None

    def _load(self):
        import datasets

        if self.on_hub:
            _hub_reachable(self.path)
        datasets.disable_progress_bars()
        try:
            return datasets.load_dataset(self.path, name=self.config, data_files=self.data_files,
                                         streaming=True)
        except (FileNotFoundError, ValueError, ConnectionError) as err:
            reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
            raise DataError(f"cannot open dataset {self.name!r} ({reason})") from None

    def documents(self, split: str) -> Iterator[str]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return _cleaned(self._raw(split))

    def _rows(self, stream) -> Iterator[str]:
        for row in stream:
            if self.text_field not in row:
                raise DataError(f"{self.name} has no column {self.text_field!r} (columns: "
                                f"{', '.join(row)}); choose one with --text_field")
            if self.min_int_score is not None:
                if "int_score" not in row:
                    raise DataError(f"{self.name} has no int_score column for --min_int_score")
                if row["int_score"] < self.min_int_score:
                    continue
            text = row[self.text_field]
            if isinstance(text, str):
                yield text

    def _split_texts(self, split: str) -> Iterator[str]:
        streams = self._load()
        native_val = next((s for s in ("validation", "valid", "val") if s in streams), None)
        if split == "all":
            yield from itertools.chain.from_iterable(self._rows(s) for s in streams.values())
        elif split == "test":
            if "test" not in streams:
                raise DataError(f"{self.name} has no test split")
            yield from self._rows(streams["test"])
        elif native_val is not None:
            yield from self._rows(streams[native_val if split == "val" else "train"])
        elif self.on_hub:  # the first VAL_DOCS documents are held out
            docs = self._rows(streams["train"])
            yield from itertools.islice(docs, VAL_DOCS) if split == "val" else \
                itertools.islice(docs, VAL_DOCS, None)
        else:
            yield from (t for t in self._rows(streams["train"]) if hashed_split(t) == split)

    def _raw(self, split: str) -> Iterator[str]:
        texts = self._split_texts(split)
        return wikitext_articles(texts) if self.articles else texts


def wikitext_articles(lines: Iterator[str]) -> Iterator[str]:
    """WikiText stores one line per row; an article starts at a top-level heading " = T = "."""
    article: list[str] = []
    for line in lines:
        stripped = line.strip()
        is_title = stripped.startswith("= ") and stripped.endswith(" =") and \
            not stripped.startswith("= =")
        if is_title and article:
            yield "".join(article)
            article = []
        article.append(line if line.endswith("\n") else line + "\n")
    if article:
        yield "".join(article)


def local_files(spec: str) -> list[Path] | None:
    """The files a local spec names (a file, a folder, or a glob), or None if it names none."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = [p for p in sorted(path.rglob("*")) if p.suffix in TEXT_SUFFIXES and p.is_file()]
        if not files:
            raise DataError(f"folder {spec} holds no .txt, .jsonl or .parquet files")
        return files
    if path.is_file():
        return [path]
    if any(c in spec for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(str(path), recursive=True)) if Path(p).is_file()]
        if not files:
            raise DataError(f"{spec!r} matches no files")
        return files
    if path.suffix in TEXT_SUFFIXES or spec.startswith((".", "/", "~")):
        raise DataError(f"file not found: {spec}")
    return None


def get_source(spec: str, text_field: str = "text", data_config: str | None = None,
               min_int_score: int | None = None) -> Source:
    """A source from a dataset name, a local path or glob, or a Hub dataset id."""
    if spec == "pydocs":
        return PydocsSource()
    if spec == "fineweb-edu":
        return DatasetSource("HuggingFaceFW/fineweb-edu", config=data_config or "sample-10BT",
                             text_field=text_field, min_int_score=min_int_score)
    if spec == "wikitext-103":
        return DatasetSource("Salesforce/wikitext", config=data_config or "wikitext-103-raw-v1",
                             articles=True)
    files = local_files(spec)
    if files is not None:
        kinds = {TEXT_SUFFIXES.get(p.suffix) for p in files}
        if None in kinds or len(kinds) > 1:
            raise DataError(f"{spec!r}: use files of one kind, .txt, .jsonl or .parquet "
                            f"(found {', '.join(sorted({p.suffix or '(none)' for p in files}))})")
        kind = kinds.pop()
        if kind == "text":
            return TextFilesSource(files)
        return DatasetSource(kind, data_files=[str(p) for p in files], text_field=text_field,
                             min_int_score=min_int_score)
    if spec.count("/") == 1 and all(spec.split("/")):
        return DatasetSource(spec, config=data_config, text_field=text_field,
                             min_int_score=min_int_score)
    raise DataError(f"unknown data source {spec!r}: use pydocs, fineweb-edu, wikitext-103, "
                    "a local path or glob, or a Hub dataset id (ORG/NAME)")


def add_source_arguments(parser) -> None:
    """The options that choose what a source reads, shared by every script taking --data."""
    parser.add_argument("--text_field", default="text", help="column of jsonl/parquet/Hub rows")
    parser.add_argument("--data_config", default=None, help="Hub dataset configuration")
    parser.add_argument("--min_int_score", type=int, default=None,
                        help="FineWeb-Edu: keep documents with int_score >= this")


def source_from_args(args) -> Source:
    return get_source(args.data, args.text_field, args.data_config, args.min_int_score)
