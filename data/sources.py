"""Text sources as fixed lists of addressable units: `get_source(spec)`.

| spec | source |
| --- | --- |
| `pydocs` | the Python documentation shipped with the interpreter (offline) |
| `fineweb-edu` | HuggingFaceFW/fineweb-edu on the Hub (config `sample-10BT` unless given) |
| `wikitext-103` | WikiText-103 (raw) on the Hub; its lines grouped back into articles |
| a path, folder or glob | local `.txt`, `.jsonl` or `.parquet` files |
| `ORG/NAME` | any other Hub dataset with parquet or jsonl files and a text column |

A source is read as an ordered, fixed list of **units**, each opened directly without reading
what comes before it: a parquet row group (or a slice of one), a line-aligned byte range of a
`.txt` or `.jsonl` file, or one pydocs document. `source.units(split)` lists them and
`source.read(unit)` returns the unit's cleaned documents. Local files and Hub files are the same
code over a different fsspec filesystem (`HfFileSystem` reads Hub files by HTTP range requests),
so tests of local files test the Hub path.

Splits: `train`, `val` (held out, fixed, disjoint from train), `test` where the dataset has one,
and `all`. `val` is the dataset's own validation split when it has one; otherwise a fixed set of
held-out units spread evenly over the list (5%, at least 1, at most MAX_VAL_UNITS); pydocs holds
out 5% of its documents by a hash of their names.

Documents are cleaned by data.clean_text (documents too short after cleaning are dropped). A text
unit of a `.txt` file is one document: it starts at a line and is marked as a fresh start.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import json
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.clean_text import clean_text
from data.pydocs import cache_folder, pydocs_documents, write_cache
from transformer_setup.cli import UserError

SPLITS = ("train", "val", "test", "all")
VAL_PERCENT = 5
MAX_VAL_UNITS = 16  # enough held-out text for any eval_iters x global batch we ship
# Small sources are cut finer so that every row of a global batch (288 for the 1b preset) reads
# different text: text and jsonl into about TARGET_UNITS byte ranges, parquet row groups into
# slices while a source has fewer than SLICE_BELOW row groups (each slice decodes its row group).
TARGET_UNITS = 4096
SLICE_BELOW = 1024
MIN_UNIT_BYTES = 1 << 10
MAX_UNIT_BYTES = 8 << 20  # what one packing lane holds decoded, at most (text and jsonl)
BOUNDARY_SEARCH = 1 << 20  # how far a byte-range boundary looks for the next line start
BOUNDARY_WINDOW = 16 << 10  # read in windows this big (each a range request on the Hub)
HUB_RETRIES = 3  # tries after the first, HUB_RETRY_SECONDS x 1, 2, 4 apart
HUB_RETRY_SECONDS = 2.0
TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
NATIVE_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val",
                 "dev": "val", "test": "test"}


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


def held_out(units: list[Unit]) -> set[int]:
    """Indices of the validation units: 5% (1 to MAX_VAL_UNITS) spread evenly over the list, so
    validation samples the whole source rather than its first file."""
    if len(units) < 2:
        return set()
    count = min(MAX_VAL_UNITS, max(1, math.ceil(len(units) * VAL_PERCENT / 100)))
    return {(i + 1) * len(units) // count - 1 for i in range(count)}


@dataclass(frozen=True)
class Unit:
    """One addressable piece of a source: file `path` and, for parquet, row group `index` with
    rows [start, stop); for text and jsonl, bytes [start, stop); for pydocs, a document name."""

    path: str
    index: int = 0
    start: int = 0
    stop: int = 0

    def describe(self) -> str:
        if self.stop == 0:
            return self.path
        what = "bytes" if self.index < 0 else f"row group {self.index}, rows"
        return f"{self.path} ({what} {self.start}-{self.stop})"


class Source:
    """A named, fixed list of units per split, and a way to read each."""

    name: str = "source"
    local: bool = True  # scored whole by evaluation (a user's own files)

    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "all")

    def units(self, split: str) -> list[Unit]:
        raise NotImplementedError

    def read(self, unit: Unit) -> list[str]:
        """The cleaned documents of one unit."""
        raise NotImplementedError

    def documents(self, split: str) -> Iterator[str]:
        """Every cleaned document of split, unit by unit, always in the same order."""
        for unit in self.units(split):
            yield from self.read(unit)

    def fingerprint(self, split: str) -> str:
        """A hash of the split's unit list: equal fingerprints, the same units in the same order."""
        digest = hashlib.sha256()
        for unit in self.units(split):
            digest.update(f"{Path(unit.path).name}|{unit.index}|{unit.start}|{unit.stop}\n"
                          .encode())
        return digest.hexdigest()[:16]


def _cleaned(texts) -> list[str]:
    return [c for c in map(clean_text, texts) if c is not None]


# ----------------------------------------------------------------------------- pydocs

class PydocsSource(Source):
    """The offline corpus: each document is a unit; 5% held out by a hash of its name."""

    name = "pydocs"
    local = False

    def units(self, split: str) -> list[Unit]:
        _check_split(split, self.splits(), self.name)
        return [Unit(doc_id) for doc_id, _ in pydocs_documents()
                if split == "all" or hashed_split(doc_id) == split]

    def read(self, unit: Unit) -> list[str]:
        return _cleaned([_pydocs_by_name()[unit.path]])


@functools.lru_cache(maxsize=1)
def _pydocs_by_name() -> dict[str, str]:
    return dict(pydocs_documents())


# ----------------------------------------------------------------------------- files

def _kind(path: str) -> str:
    return TEXT_SUFFIXES[Path(path).suffix]


def _unit_bytes(total: int) -> int:
    """Unit size for a source of `total` bytes: about TARGET_UNITS units, within limits."""
    return min(MAX_UNIT_BYTES, max(MIN_UNIT_BYTES, total // TARGET_UNITS))


def _retrying(what: str, read):
    """read(), retried on network errors (the Hub) a few times before one clear line."""
    for attempt in range(HUB_RETRIES + 1):
        try:
            return read()
        except DataError:
            raise
        except (ConnectionError, TimeoutError) as err:
            if attempt == HUB_RETRIES:
                raise DataError(f"cannot read {what} after {HUB_RETRIES + 1} tries "
                                f"({type(err).__name__}: {str(err)[:120]})") from None
            time.sleep(HUB_RETRY_SECONDS * 2 ** attempt)
        except Exception as err:  # corrupt bytes, bad JSON, HTTP errors: all mean the same
            reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
            raise DataError(f"cannot read {what} ({reason})") from None


def _is_network_error(err: Exception) -> bool:
    name = type(err).__name__
    return isinstance(err, (ConnectionError, TimeoutError)) or "Timeout" in name or \
        "ConnectError" in name or "RemoteProtocolError" in name


def _with_network_errors(func):
    """Map httpx/requests network failures to ConnectionError so _retrying retries them."""
    def wrapped(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            if _is_network_error(err) and not isinstance(err, (ConnectionError, TimeoutError)):
                raise ConnectionError(str(err)) from err
            raise
    return wrapped


@dataclass
class FileSource(Source):
    """Parquet, jsonl or text files on a filesystem (local disk, or the Hub via HfFileSystem).

    `files` maps each split the data has natively ("train", maybe "val" and "test") to its files.
    Without a native "val", validation is held out by units (see held_out). min_int_score keeps
    rows whose `int_score` (FineWeb-Edu's 0-5 quality score) is at least that; articles=True
    groups WikiText's one-line rows back into articles (within a unit).
    """

    label: str
    files: dict[str, list[str]]
    fs: Any = None  # an fsspec filesystem; None: the local disk
    text_field: str | None = "text"  # None: rows are read whole (rows()), not as documents
    min_int_score: int | None = None
    articles: bool = False
    on_hub: bool = False
    _units: dict[str, list[Unit]] | None = field(default=None, repr=False)
    _footers: dict[str, Any] = field(default_factory=dict, repr=False)  # parquet metadata

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    @property
    def local(self) -> bool:  # type: ignore[override]
        return not self.on_hub

    def __getstate__(self) -> dict[str, Any]:  # the unit lists travel to worker processes too
        return dict(self.__dict__)

    def filesystem(self):
        if self.fs is None:
            from fsspec.implementations.local import LocalFileSystem
            self.fs = LocalFileSystem()
        return self.fs

    def splits(self) -> tuple[str, ...]:
        native = tuple(s for s in ("train", "val", "test") if s in self.files)
        return tuple(dict.fromkeys(native + ("train", "val", "all")))

    # ------------------------------------------------------------------ listing units

    def units(self, split: str) -> list[Unit]:
        _check_split(split, self.splits(), self.name)
        if self._units is None:
            self._units = self._cached_units() if self.on_hub else self._list_units()
        if not self._units["all"]:
            raise DataError(f"{self.name} has no documents (its files are empty)")
        if not self._units[split]:
            raise DataError(f"{self.name} is too small to split into train and validation "
                            f"units; give validation text with --val_data")
        return self._units[split]

    def _cached_units(self) -> dict[str, list[Unit]]:
        """Hub files are pinned to a revision, so their units can be listed once per machine
        (listing reads every parquet footer: one request per file)."""
        key = json.dumps([self.files, self.text_field, self.min_int_score], sort_keys=True)
        path = cache_folder() / f"units-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        try:
            return {s: [Unit(*u) for u in units]
                    for s, units in json.loads(path.read_text()).items()}
        except (OSError, ValueError, TypeError):
            pass
        units = self._list_units()
        write_cache(path, json.dumps({s: [[u.path, u.index, u.start, u.stop] for u in us]
                                      for s, us in units.items()}))
        return units

    def _list_units(self) -> dict[str, list[Unit]]:
        fs = self.filesystem()
        all_files = [f for files in self.files.values() for f in files]
        sizes = {f: _retrying(f, _with_network_errors(lambda f=f: fs.size(f)))
                 for f in all_files if _kind(f) != "parquet"}
        metadata = {f: self._parquet_metadata(f) for f in all_files if _kind(f) == "parquet"}
        text_bytes = sum(sizes.values()) + sum(
            self._text_bytes(m, rg) for m in metadata.values() for rg in range(m.num_row_groups))
        unit_bytes = _unit_bytes(text_bytes)
        may_slice = sum(m.num_row_groups for m in metadata.values()) < SLICE_BELOW

        def file_units(f: str) -> list[Unit]:
            if f in metadata:
                return self._row_group_units(f, metadata[f], unit_bytes, may_slice)
            return self._byte_range_units(f, sizes[f], unit_bytes)

        by_split = {split: [u for f in files for u in file_units(f)]
                    for split, files in self.files.items()}
        by_split["all"] = [u for s in ("train", "val", "test") for u in by_split.get(s, [])]
        if "val" not in by_split:  # "all" keeps the files' own order
            train = by_split["train"]
            val = held_out(train)
            by_split["val"] = [u for i, u in enumerate(train) if i in val]
            by_split["train"] = [u for i, u in enumerate(train) if i not in val]
        return by_split

    def _byte_range_units(self, path: str, size: int, unit_bytes: int) -> list[Unit]:
        """Ranges of about unit_bytes, each moved forward to start at a line."""
        cuts = [0]
        with _open(self.filesystem(), path) as f:
            for nominal in range(unit_bytes, size, unit_bytes):
                if nominal > cuts[-1]:
                    cut = _line_start(f, nominal)
                    if cuts[-1] < cut < size:
                        cuts.append(cut)
        cuts.append(size)
        return [Unit(path, -1, a, b) for a, b in zip(cuts, cuts[1:]) if b > a]

    def _parquet_metadata(self, path: str):
        """The file's footer (row groups, sizes), after checking it has the needed columns."""
        import pyarrow.parquet as pq

        def metadata():
            with _open(self.filesystem(), path) as f:
                return pq.ParquetFile(f).metadata

        meta = _retrying(path, _with_network_errors(metadata))
        self._footers[path] = meta  # reading a row group needs it: read it once
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if self.text_field is not None and self.text_field not in names:
            raise DataError(f"{path} has no column {self.text_field!r} (columns: "
                            f"{', '.join(names)}); choose one with --text_field")
        if self.min_int_score is not None and "int_score" not in names:
            raise DataError(f"{path} has no int_score column for --min_int_score")
        return meta

    def _text_bytes(self, meta, rg: int) -> int:
        """Uncompressed bytes of the text column (of every column without a text field)."""
        group = meta.row_group(rg)
        if self.text_field is None:
            return group.total_byte_size
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        return group.column(names.index(self.text_field)).total_uncompressed_size

    def _row_group_units(self, path: str, meta, unit_bytes: int, may_slice: bool) -> list[Unit]:
        """A unit per row group. In a source of fewer than SLICE_BELOW row groups, a row group
        of many bytes becomes slices of rows, so that even one big row group gives a batch's rows
        different text (see _read_row_group for what that costs)."""
        units = []
        for rg in range(meta.num_row_groups):
            rows, size = meta.row_group(rg).num_rows, self._text_bytes(meta, rg)
            pieces = max(1, min(rows, math.ceil(size / unit_bytes))) if may_slice else 1
            bounds = [rows * i // pieces for i in range(pieces + 1)]
            units += [Unit(path, rg, a, b) for a, b in zip(bounds, bounds[1:]) if b > a]
        return units

    # ------------------------------------------------------------------ reading units

    def documents(self, split: str) -> Iterator[str]:
        """As Source.documents, but consecutive units of one text file are one document again
        (a whole .txt file, read in order, is one document, as its author wrote it)."""
        run: list[Unit] = []
        for unit in self.units(split) + [None]:
            if run and (unit is None or unit.path != run[-1].path or unit.start != run[-1].stop
                        or _kind(unit.path) != "text"):
                joined = Unit(run[0].path, -1, run[0].start, run[-1].stop)
                yield from self.read(joined) if len(run) > 1 else self.read(run[0])
                run = []
            if unit is not None and _kind(unit.path) == "text":
                run.append(unit)
            elif unit is not None:
                yield from self.read(unit)

    def read(self, unit: Unit) -> list[str]:
        texts = _retrying(unit.describe(), _with_network_errors(lambda: self._texts(unit)))
        if self.articles:
            texts = list(wikitext_articles(iter(texts)))
        return _cleaned(texts)

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        """Every row of the split's jsonl or parquet units, all columns (evaluation sets)."""
        for unit in self.units(split):
            yield from _retrying(unit.describe(),
                                 _with_network_errors(lambda unit=unit: self._rows(unit, None)))

    def _texts(self, unit: Unit) -> list[str]:
        if _kind(unit.path) == "text":
            return [self._bytes(unit).decode("utf-8", errors="replace")]
        columns = [self.text_field] + (["int_score"] if self.min_int_score is not None else [])
        return self._row_texts(self._rows(unit, columns), unit)

    def _bytes(self, unit: Unit) -> bytes:
        with _open(self.filesystem(), unit.path) as f:
            f.seek(unit.start)
            return f.read(unit.stop - unit.start)

    def _rows(self, unit: Unit, columns: list[str] | None) -> list[dict[str, Any]]:
        if _kind(unit.path) == "parquet":
            table = _read_row_group(self.filesystem(), unit.path, unit.index, columns,
                                    self._footers)
            return table.slice(unit.start, unit.stop - unit.start).to_pylist()
        rows = []
        text = self._bytes(unit).decode("utf-8", errors="replace")
        for number, line in enumerate(text.split("\n"), start=1):  # not splitlines: U+2028
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise DataError(f"{unit.describe()}: line {number} of the range is not "
                                    "JSON") from None
        return rows

    def _row_texts(self, rows: list[dict], unit: Unit) -> list[str]:
        texts = []
        for row in rows:
            if self.text_field not in row:
                raise DataError(f"{unit.describe()} has no field {self.text_field!r} (fields: "
                                f"{', '.join(row)}); choose one with --text_field")
            if self.min_int_score is not None:
                score = row.get("int_score")
                if score is None:
                    raise DataError(f"{unit.describe()} has no int_score for --min_int_score")
                if score < self.min_int_score:
                    continue
            if isinstance(row[self.text_field], str):
                texts.append(row[self.text_field])
        return texts


def _open(fs, path: str):
    """A file opened for exact reads: no read-ahead, so a Hub file sends only the byte ranges
    asked for (a row group's column chunk, a unit's bytes), never a block around them."""
    return fs.open(path, "rb", cache_type="none")


def _line_start(f, offset: int) -> int:
    """The first line start at or after offset (or, with no line end within BOUNDARY_SEARCH,
    the first character start): where a byte-range unit may begin."""
    f.seek(offset - 1)
    scanned = b""
    while len(scanned) < BOUNDARY_SEARCH:
        window = f.read(BOUNDARY_WINDOW)
        newline = window.find(b"\n")
        if newline >= 0:
            return offset + len(scanned) + newline
        scanned += window
        if len(window) < BOUNDARY_WINDOW:
            break
    return offset + next((i - 1 for i in range(1, min(len(scanned), 4))
                          if scanned[i] & 0xC0 != 0x80), 0)


_last_row_group: tuple[tuple, Any] | None = None


def _read_row_group(fs, path: str, index: int, columns: list[str] | None,
                    footers: dict[str, Any]):
    """One row group. Footers are read once per file and process (the listing's are inherited
    by forked workers), and each process keeps the last row group it read: the slices of one
    big row group (a small source written as one) are decoded once, not once per slice."""
    import pyarrow.parquet as pq

    global _last_row_group
    key = (id(fs), path, index, tuple(columns or ()))
    if _last_row_group is None or _last_row_group[0] != key:
        _last_row_group = None  # free the previous one before reading the next
        with _open(fs, path) as f:
            parquet = pq.ParquetFile(f, metadata=footers.get(path))
            footers[path] = parquet.metadata
            _last_row_group = (key, parquet.read_row_group(index, columns=columns))
    return _last_row_group[1]


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


# ----------------------------------------------------------------------------- the Hub

def hub_revision(repo_id: str) -> str:
    """The dataset's current commit, in one quick request: no network means one clear line, not
    minutes of retries."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo_id, timeout=15).sha
    except Exception as err:  # connection, DNS, HTTP 404/401: all end here
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(f"cannot reach dataset {repo_id!r} on the Hugging Face Hub ({reason}); "
                        "use local files (--data 'corpus/*.parquet') or --data pydocs") from None


def hub_split_files(repo_id: str, config: str | None) -> tuple[Any, dict[str, list[str]]]:
    """The HfFileSystem and the data files of each split of a Hub dataset's configuration, pinned
    to one revision. The dataset card's `configs` say which files form which split (datasets'
    own parser reads them); without them, datasets' default file patterns decide."""
    from datasets.data_files import DataFilesDict, get_data_patterns, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, HfFileSystem, constants
    from huggingface_hub.errors import EntryNotFoundError

    revision = hub_revision(repo_id)
    fs = HfFileSystem(endpoint=constants.ENDPOINT)  # fsspec caches an instance per endpoint
    base = f"datasets/{repo_id}@{revision}"
    try:
        card = DatasetCard(fs.read_text(f"{base}/README.md", encoding="utf-8")).data
    except (FileNotFoundError, EntryNotFoundError):
        card = None
    configs = MetadataConfigs.from_dataset_card_data(card) if card is not None else {}
    if config is not None and config not in configs:
        raise DataError(f"dataset {repo_id!r} has no configuration {config!r}"
                        + (f" (it has {', '.join(configs)})" if configs else ""))
    chosen = configs.get(config) if config else next(
        (c for c in configs.values() if c.get("default")), next(iter(configs.values()), None))
    try:
        if chosen and "data_files" in chosen:
            patterns = sanitize_patterns(chosen["data_files"])
        else:
            patterns = get_data_patterns(f"hf://{base}")
        found = DataFilesDict.from_patterns(patterns, base_path=f"hf://{base}")
    except FileNotFoundError as err:
        raise DataError(f"dataset {repo_id!r}: no data files ({str(err)[:120]})") from None
    files: dict[str, list[str]] = {}
    for split, urls in found.items():
        ours = NATIVE_SPLITS.get(split, split if split in ("train", "test") else None)
        kept = [u.removeprefix("hf://") for u in urls if Path(u).suffix in TEXT_SUFFIXES]
        if ours and kept:
            files.setdefault(ours, []).extend(kept)
    if "train" not in files:
        raise DataError(f"dataset {repo_id!r} has no train split in parquet or jsonl files "
                        f"(splits: {', '.join(found) or 'none'})")
    return fs, files


def hub_source(repo_id: str, config: str | None = None, **options: Any) -> FileSource:
    fs, files = hub_split_files(repo_id, config)
    return FileSource(repo_id, files, fs=fs, on_hub=True, **options)


# ----------------------------------------------------------------------------- specs

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


def local_source(spec: str, files: list[Path], **options: Any) -> FileSource:
    kinds = {TEXT_SUFFIXES.get(p.suffix) for p in files}
    if None in kinds or len(kinds) > 1:
        raise DataError(f"{spec!r}: use files of one kind, .txt, .jsonl or .parquet "
                        f"(found {', '.join(sorted({p.suffix or '(none)' for p in files}))})")
    label = str(files[0]) if len(files) == 1 else f"{len(files)} files in {spec}"
    return FileSource(label, {"train": [str(p.resolve()) for p in files]}, **options)


def get_source(spec: str, text_field: str = "text", data_config: str | None = None,
               min_int_score: int | None = None) -> Source:
    """A source from a dataset name, a local path or glob, or a Hub dataset id."""
    options = {"text_field": text_field, "min_int_score": min_int_score}
    if spec == "pydocs":
        return PydocsSource()
    if spec == "fineweb-edu":
        return hub_source("HuggingFaceFW/fineweb-edu", data_config or "sample-10BT", **options)
    if spec == "wikitext-103":
        return hub_source("Salesforce/wikitext", data_config or "wikitext-103-raw-v1",
                          articles=True)
    files = local_files(spec)
    if files is not None:
        return local_source(spec, files, **options)
    if spec.count("/") == 1 and all(spec.split("/")):
        return hub_source(spec, data_config, **options)
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
