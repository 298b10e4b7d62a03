"""Text sources as fixed lists of addressable units: `get_source(spec)`.

| spec | source |
| --- | --- |
| `pydocs` | the Python documentation shipped with the interpreter (offline) |
| `fineweb-edu` | HuggingFaceFW/fineweb-edu on the Hub (config `sample-10BT` unless given) |
| `wikitext-103` | WikiText-103 (raw) on the Hub; its lines grouped back into articles |
| a path, folder or glob | local `.txt`, `.jsonl` or `.parquet` files |
| `ORG/NAME` | any other Hub dataset with parquet or jsonl files and a text column |

A Hub spec may name a revision, `ORG/NAME@REVISION` (a commit, branch or tag); without one the
newest commit is resolved once and the source is pinned to it (`source.revision`).

A source is read as an ordered, fixed list of **units**, each opened directly without reading
what comes before it: a parquet row group, a line-aligned byte range of a `.txt` or `.jsonl`
file (whole rows, however long), or one pydocs document. A row group holding more than
PIECE_BYTES of text is read in **pieces** (consecutive row ranges): pieces read in order are
one decoding stream (`stream=` names it), so a big row group is decoded once, a piece at a time,
and never held whole. `source.units(split)` lists the units and `source.read(unit, piece)`
returns one piece's cleaned documents. Local files and Hub files are the same code over a
different fsspec filesystem (`HfFileSystem` reads Hub files by HTTP range requests), so tests of
local files test the Hub path.

Splits: `train`, `val` (held out, fixed, disjoint from train), `test` where the dataset has one,
and `all`. `val` is the dataset's own validation split when it has one; otherwise a fixed set of
held-out units spread evenly over the list: VAL_PERCENT% of them (at least 1), at most
MAX_VAL_BYTES of text; pydocs holds out 5% of its documents by a hash of their names.

Documents are cleaned by data.clean_text (documents too short after cleaning are dropped). A text
unit of a `.txt` file is one document; `documents()` joins the units of one file back into the
file's text (evaluation scores a file as the text it is).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import glob
import hashlib
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from data.clean_text import clean_text
from data.pydocs import cache_folder, pydocs_documents, write_cache
from transformer_setup.cli import UserError

SPLITS = ("train", "val", "test", "all")
VAL_PERCENT = 5
MAX_VAL_BYTES = 64 << 20  # held out at most (~16M GPT-2 tokens): a big source loses little
# Text and jsonl are cut into about TARGET_UNITS byte ranges, so that every row of a global
# batch (288 for the 1b preset) reads different text; a unit is never smaller than a few
# 1,024-token blocks of English (MIN_UNIT_BYTES), nor bigger than one lane should hold.
TARGET_UNITS = 4096
MIN_UNIT_BYTES = 32 << 10
MAX_UNIT_BYTES = 8 << 20
MIN_SLICE_BYTES = 1 << 10  # a small source is held out by ranges this fine, then merged
MAX_VAL_RUNS = 16  # held-out units come in at most this many runs of neighbours
PIECE_BYTES = 8 << 20  # parquet: the text of a big row group is decoded this much at a time
STREAM_BUFFER = 1 << 20  # bytes per read while streaming a row group (an HTTP range request)
WHOLE_FILE_BYTES = 16 << 20  # a text file up to this size is read once to find its cuts
FIRST_WINDOW = 4 << 10  # a cut looks for the next line end from here, doubling the window
TEXT_SEARCH = 1 << 20  # in a .txt, a cut with no line end this far moves to a character
LIST_THREADS = 8  # footers and cuts read in parallel (each an HTTP request on the Hub)
# Open row-group streams one process keeps: one per lane reading a big row group (the 1b
# preset on one GPU routes 144 lanes to each of 2 workers); each holds a file and ~1-2 MB.
MAX_CURSORS = 1024
HUB_RETRIES = 3  # tries after the first, HUB_RETRY_SECONDS x 1, 2, 4 apart
HUB_RETRY_SECONDS = 2.0
TEXT_SUFFIXES = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
NATIVE_SPLITS = {"train": "train", "validation": "val", "valid": "val", "val": "val",
                 "dev": "val", "test": "test"}
DATASETS = {"fineweb-edu": "HuggingFaceFW/fineweb-edu", "wikitext-103": "Salesforce/wikitext"}


class DataError(UserError):
    pass


def hashed_split(key: str) -> str:
    """'val' for VAL_PERCENT% of keys, 'train' for the rest; stable across runs and machines."""
    return "val" if zlib.crc32(key.encode("utf-8")) % 100 < VAL_PERCENT else "train"


def document_key(text: str) -> bytes:
    """A short hash of a cleaned document: what --val_data's exclusion compares."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _check_split(split: str, allowed: tuple[str, ...], name: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if split not in allowed:
        raise DataError(f"{name} has no {split!r} split (it has {', '.join(allowed)})")


def held_out(units: list[Unit]) -> set[int]:
    """Indices of the validation units: VAL_PERCENT% of them (at least 1, at most MAX_VAL_BYTES
    of text), in up to MAX_VAL_RUNS runs of consecutive units spread evenly over the list, so
    validation samples the whole source rather than its first file, and the training text
    between runs stays in long stretches."""
    if len(units) < 2:
        return set()
    mean_bytes = max(1.0, sum(u.nbytes for u in units) / len(units))
    count = min(math.ceil(len(units) * VAL_PERCENT / 100),
                max(1, int(MAX_VAL_BYTES // mean_bytes)))
    runs = min(count, MAX_VAL_RUNS)
    chosen = set()
    for r in range(runs):
        end = (r + 1) * len(units) // runs  # each run ends where an evenly spread point is
        length = (r + 1) * count // runs - r * count // runs
        chosen.update(range(end - length, end))
    return chosen


def split_held_out(units: list[Unit]) -> tuple[list[Unit], list[Unit]]:
    """(train, val) units of a source without a validation split of its own. Where whole
    units would hold out more than the documented share (a few big row groups), the first
    pieces of one big row group in the middle of the source are held out instead."""
    chosen = held_out(units)
    train = [u for i, u in enumerate(units) if i not in chosen]
    val = [u for i, u in enumerate(units) if i in chosen]
    total = sum(u.nbytes for u in units)
    limit = min(MAX_VAL_BYTES, total * VAL_PERCENT / 100)
    big = [i for i, u in enumerate(units) if u.pieces > 1]
    if big and (not val or sum(u.nbytes for u in val) > 2 * limit):
        i = big[len(big) // 2]
        unit = units[i]
        count = int(limit // (unit.nbytes / unit.pieces))
        if 0 < count < unit.pieces:
            cut = unit.start + count * unit.piece_rows
            share = unit.nbytes * count // unit.pieces
            head = replace(unit, stop=cut, nbytes=share)
            rest = replace(unit, start=cut, nbytes=unit.nbytes - share)
            return units[:i] + [rest] + units[i + 1:], [head]
    return train, val


def merged(units: list[Unit], unit_bytes: int) -> list[Unit]:
    """Adjacent byte ranges of one text or jsonl file joined into units of up to unit_bytes
    (the ranges a source is held out by are finer than the units it trains on)."""
    out: list[Unit] = []
    for unit in units:
        last = out[-1] if out else None
        if last is not None and unit.index < 0 and last.index < 0 and \
                last.path == unit.path and last.stop == unit.start and \
                last.nbytes + unit.nbytes <= unit_bytes:
            out[-1] = Unit(last.path, -1, last.start, unit.stop, nbytes=unit.stop - last.start)
        else:
            out.append(unit)
    return out


@dataclass(frozen=True)
class Unit:
    """One addressable piece of a source: file `path` and, for parquet, row group `index` with
    rows [start, stop), read `piece_rows` rows at a time (0: at once); for text and jsonl
    (index -1), bytes [start, stop); for pydocs, a document name. `nbytes`: its text's size."""

    path: str
    index: int = 0
    start: int = 0
    stop: int = 0
    piece_rows: int = 0
    nbytes: int = 0

    @property
    def pieces(self) -> int:
        if self.piece_rows <= 0:
            return 1
        return max(1, math.ceil((self.stop - self.start) / self.piece_rows))

    def describe(self, piece: int = 0) -> str:
        if self.stop == 0:
            return self.path
        if self.index < 0:
            return f"{self.path} (bytes {self.start}-{self.stop})"
        where = f" piece {piece + 1} of {self.pieces}" if self.pieces > 1 else ""
        return f"{self.path} (row group {self.index}{where})"


class Source:
    """A named, fixed list of units per split, and a way to read each."""

    name: str = "source"
    local: bool = True  # scored whole by evaluation (a user's own files)
    revision: str | None = None  # the Hub commit a Hub source is pinned to
    excluded: frozenset[bytes] = frozenset()  # document_keys never yielded (--val_data's text)

    def splits(self) -> tuple[str, ...]:
        return ("train", "val", "all")

    def units(self, split: str) -> list[Unit]:
        raise NotImplementedError

    def _read(self, unit: Unit, piece: int, stream: Any) -> list[str]:
        raise NotImplementedError

    def read(self, unit: Unit, piece: int = 0, stream: Any = None) -> list[str]:
        """The cleaned documents of one piece of a unit. Pieces of a unit read in order under
        one `stream` name continue one decoding (a lane passes its row number)."""
        documents = self._read(unit, piece, stream)
        if self.excluded:
            documents = [d for d in documents if document_key(d) not in self.excluded]
        return documents

    def documents(self, split: str) -> Iterator[str]:
        """Every cleaned document of split, unit by unit, always in the same order."""
        for unit in self.units(split):
            for piece in range(unit.pieces):
                yield from self.read(unit, piece, stream="documents")

    def listed(self) -> Source:
        """This source with its units listed (what rank 0 hands the other ranks)."""
        self.units("all")
        return self

    def fingerprint(self, split: str) -> str:
        """A hash of the split's unit list (names, places, sizes): equal fingerprints, the same
        units in the same order."""
        digest = hashlib.sha256()
        for u in self.units(split):
            digest.update(f"{Path(u.path).name}|{u.index}|{u.start}|{u.stop}|{u.piece_rows}|"
                          f"{u.nbytes}\n".encode())
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
        return [Unit(doc_id, nbytes=len(text.encode())) for doc_id, text in pydocs_documents()
                if split == "all" or hashed_split(doc_id) == split]

    def _read(self, unit: Unit, piece: int, stream: Any) -> list[str]:
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


def _reading(what: str, func: Callable[[], Any]) -> Any:
    return _retrying(what, _with_network_errors(func))


def _parallel(func: Callable, items: list) -> list:
    """func over items in threads (each a request on the Hub), results in order."""
    if len(items) <= 1:
        return [func(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(min(LIST_THREADS, len(items))) as pool:
        return list(pool.map(func, items))


@dataclass
class FileSource(Source):
    """Parquet, jsonl or text files on a filesystem (local disk, or the Hub via HfFileSystem).

    `files` maps each split the data has natively ("train", maybe "val" and "test") to its files.
    Without a native "val", validation is held out by units (see held_out). min_int_score keeps
    rows whose `int_score` (FineWeb-Edu's 0-5 quality score) is at least that; articles=True
    groups WikiText's one-line rows back into articles (within a piece).
    """

    label: str
    files: dict[str, list[str]]
    fs: Any = None  # an fsspec filesystem; None: the local disk
    text_field: str | None = "text"  # None: rows are read whole (rows()), not as documents
    min_int_score: int | None = None
    articles: bool = False
    on_hub: bool = False
    revision: str | None = None  # type: ignore[assignment]
    excluded: frozenset[bytes] = frozenset()  # type: ignore[assignment]
    _units: dict[str, list[Unit]] | None = field(default=None, repr=False)
    _footers: dict[str, Any] = field(default_factory=dict, repr=False)  # parquet metadata

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label

    @property
    def local(self) -> bool:  # type: ignore[override]
        return not self.on_hub

    def __getstate__(self) -> dict[str, Any]:
        """The unit lists travel (rank 0 to the others); footers do not: each process reads
        them once, from this machine's listing cache where it can (load_footers)."""
        return {**self.__dict__, "_footers": {}}

    def load_footers(self) -> FileSource:
        """Every parquet file's footer in this process, before its workers fork (they inherit
        them): from the machine's listing cache (a Hub source listed here), else read, in
        parallel threads, once per file."""
        paths = [f for fs in self.files.values() for f in fs if _kind(f) == "parquet"]
        if self.on_hub and any(path not in self._footers for path in paths):
            try:
                cached = json.loads((self._cache_folder() / "units.json").read_text())["footers"]
                self._footers.update({path: _read_footer(self._cache_folder() /
                                                         f"footer-{i}.parquet")
                                      for i, path in enumerate(cached) if path in paths})
            except (OSError, ValueError, KeyError, TypeError):
                pass
        _parallel(self._parquet_metadata, [p for p in paths if p not in self._footers])
        return self

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

    def _cache_folder(self) -> Path:
        key = json.dumps([self.files, self.text_field, self.min_int_score], sort_keys=True)
        return cache_folder() / f"units-{hashlib.sha256(key.encode()).hexdigest()[:16]}"

    def _cached_units(self) -> dict[str, list[Unit]]:
        """Hub files are pinned to a revision, so their units and parquet footers are listed
        once per machine (listing reads every footer: a request or two per file)."""
        folder = self._cache_folder()
        try:
            listed = json.loads((folder / "units.json").read_text())
            footers = {path: _read_footer(folder / f"footer-{i}.parquet")
                       for i, path in enumerate(listed["footers"])}
            units = {s: [Unit(*u) for u in us] for s, us in listed["units"].items()}
            self._footers.update(footers)
            return units
        except (OSError, ValueError, TypeError, KeyError):
            pass
        units = self._list_units()
        _write_listing(folder, units, self._footers)
        return units

    def _list_units(self) -> dict[str, list[Unit]]:
        all_files = [f for files in self.files.values() for f in files]
        parquet = [f for f in all_files if _kind(f) == "parquet"]
        text = [f for f in all_files if _kind(f) != "parquet"]
        fs = self.filesystem()
        metadata = dict(zip(parquet, _parallel(self._parquet_metadata, parquet)))
        sizes = dict(zip(text, _parallel(
            lambda f: _reading(f, lambda: fs.size(f)), text)))
        text_bytes = sum(sizes.values()) + sum(
            self._text_bytes(m, rg) for m in metadata.values() for rg in range(m.num_row_groups))
        slice_bytes = min(MAX_UNIT_BYTES, max(MIN_SLICE_BYTES, text_bytes // TARGET_UNITS))
        file_units = {f: self._row_group_units(f, metadata[f]) for f in parquet}
        file_units.update(zip(text, _parallel(
            lambda f: self._byte_range_units(f, sizes[f], slice_bytes), text)))
        by_split = {split: [u for f in files for u in file_units[f]]
                    for split, files in self.files.items()}
        by_split["all"] = [u for s in ("train", "val", "test") for u in by_split.get(s, [])]
        if "val" not in by_split:  # "all" keeps the files' own order
            by_split["train"], by_split["val"] = split_held_out(by_split["train"])
        unit_bytes = _unit_bytes(text_bytes)
        return {split: merged(units, unit_bytes) for split, units in by_split.items()}

    def _byte_range_units(self, path: str, size: int, slice_bytes: int) -> list[Unit]:
        """Ranges of about slice_bytes, each moved forward to start at a line (a jsonl cut
        always does: rows are read whole, however long). Where the cuts are dense, the file is
        read once; otherwise each cut reads a small window, in parallel, and the few cuts whose
        window holds no line end are then searched in order, each starting where an earlier
        search ended (a long row is scanned once, not once per cut inside it)."""
        whole_lines = _kind(path) == "json"
        nominal = list(range(slice_bytes, size, slice_bytes))
        if not nominal:
            return [Unit(path, -1, 0, size, nbytes=size)] if size else []
        fs = self.filesystem()
        if 2 * len(nominal) * FIRST_WINDOW >= size:
            data = _reading(path, lambda: _read_range(fs, path, 0, size))
            found = [_line_start(lambda at, n: data[at:at + n], n, size, whole_lines)
                     for n in nominal]
        else:
            found = self._cuts(path, size, nominal, whole_lines)
        cuts = [0] + sorted({c for c in found if 0 < c < size}) + [size]
        return [Unit(path, -1, a, b, nbytes=b - a) for a, b in zip(cuts, cuts[1:])]

    def _cuts(self, path: str, size: int, nominal: list[int], whole_lines: bool) -> list[int]:
        fs = self.filesystem()

        def window(n: int) -> int | None:  # a line end within FIRST_WINDOW, or None
            chunk = _read_range(fs, path, n - 1, min(size, n - 1 + FIRST_WINDOW))
            newline = chunk.find(b"\n")
            return n + newline if newline >= 0 else None

        found = _parallel(lambda n: _reading(f"{path} (cut at byte {n})",
                                             lambda: window(n)), nominal)
        searched = 0  # every cut below this resolves to it: a long line already searched
        for i, n in enumerate(nominal):
            if found[i] is not None:
                continue
            if n <= searched:
                found[i] = searched
                continue

            def search(n: int = n) -> int:
                with _open(fs, path) as f:
                    return _line_start(lambda at, k: _read_at(f, at, k), n, size, whole_lines)

            found[i] = searched = _reading(f"{path} (cut at byte {n})", search)
        return found

    def _parquet_metadata(self, path: str):
        """The file's footer (row groups, sizes), after checking it has the needed columns."""
        import pyarrow.parquet as pq

        def metadata():
            with _open(self.filesystem(), path) as f:
                return pq.ParquetFile(f).metadata

        meta = _reading(path, metadata)
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
        return group.column(_column_index(meta, self.text_field)).total_uncompressed_size

    def _row_group_units(self, path: str, meta) -> list[Unit]:
        """A unit per row group, read in pieces of about PIECE_BYTES of text when bigger; row
        groups whose int_score statistics show no row reaching --min_int_score are left out."""
        units = []
        for rg in range(meta.num_row_groups):
            rows, size = meta.row_group(rg).num_rows, self._text_bytes(meta, rg)
            if rows == 0 or self._all_below_min_score(meta, rg):
                continue
            pieces = min(rows, math.ceil(size / PIECE_BYTES))
            units.append(Unit(path, rg, 0, rows, math.ceil(rows / pieces) if pieces > 1 else 0,
                              size))
        return units

    def _all_below_min_score(self, meta, rg: int) -> bool:
        if self.min_int_score is None:
            return False
        stats = meta.row_group(rg).column(_column_index(meta, "int_score")).statistics
        return stats is not None and stats.has_min_max and stats.max < self.min_int_score

    # ------------------------------------------------------------------ reading units

    def documents(self, split: str) -> Iterator[str]:
        """As Source.documents, but consecutive units of one text file are one document again
        (a whole .txt file, read in order, is one document, as its author wrote it)."""
        run: list[Unit] = []
        for unit in self.units(split) + [None]:
            if run and (unit is None or unit.path != run[-1].path or unit.start != run[-1].stop
                        or _kind(unit.path) != "text"):
                joined = Unit(run[0].path, -1, run[0].start, run[-1].stop)
                yield from self.read(joined)
                run = []
            if unit is not None and _kind(unit.path) == "text":
                run.append(unit)
            elif unit is not None:
                for piece in range(unit.pieces):
                    yield from self.read(unit, piece, stream="documents")

    def _read(self, unit: Unit, piece: int, stream: Any) -> list[str]:
        texts = _reading(unit.describe(piece), lambda: self._texts(unit, piece, stream))
        if self.articles:
            texts = list(wikitext_articles(iter(texts)))
        return _cleaned(texts)

    def rows(self, split: str) -> Iterator[dict[str, Any]]:
        """Every row of the split's jsonl or parquet units, all columns (evaluation sets)."""
        for unit in self.units(split):
            for piece in range(unit.pieces):
                yield from _reading(unit.describe(piece),
                                    lambda u=unit, j=piece: self._rows(u, j, None, "rows"))

    def _texts(self, unit: Unit, piece: int, stream: Any) -> list[str]:
        if _kind(unit.path) == "text":
            return [_read_range(self.filesystem(), unit.path, unit.start, unit.stop)
                    .decode("utf-8", errors="replace")]
        columns = [self.text_field] + (["int_score"] if self.min_int_score is not None else [])
        return self._row_texts(self._rows(unit, piece, columns, stream), unit)

    def _rows(self, unit: Unit, piece: int, columns: list[str] | None,
              stream: Any) -> list[dict[str, Any]]:
        if _kind(unit.path) == "parquet":
            if unit.piece_rows == 0:  # a whole row group, read at once
                return _read_row_group(self, unit, columns).to_pylist()
            return _read_piece(self, unit, piece, columns, stream).to_pylist()
        rows = []
        text = _read_range(self.filesystem(), unit.path, unit.start, unit.stop).decode(
            "utf-8", errors="replace")
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

    # ------------------------------------------------------------------ sharing and leakage

    def without_files(self, covered: set[str]) -> FileSource:
        """A copy without the files whose key (file_key) is in covered; unlisted again."""
        files = {split: [f for f in fs if file_key(f) not in covered]
                 for split, fs in self.files.items()}
        return replace(self, files={s: fs for s, fs in files.items() if fs}, _units=None)


def _column_index(meta, name: str) -> int:
    return [meta.schema.column(i).name for i in range(meta.num_columns)].index(name)


def file_key(path: str) -> str:
    """A file's identity whatever revision it was read at (Hub paths carry `@REVISION`)."""
    head, _, rest = path.partition("@")
    return f"{head}/{rest.split('/', 1)[1]}" if rest and "/" in rest else path


def _open(fs, path: str):
    """A file opened for exact reads: no read-ahead, so a Hub file sends only the byte ranges
    asked for (a row group's column chunk, a unit's bytes), never a block around them."""
    return fs.open(path, "rb", cache_type="none")


def _read_at(f, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _read_range(fs, path: str, start: int, stop: int) -> bytes:
    with _open(fs, path) as f:
        return _read_at(f, start, stop - start)


def _line_start(read_at: Callable[[int, int], bytes], offset: int, size: int,
                whole_lines: bool) -> int:
    """The first line start at or after offset, searched in growing windows. A jsonl cut
    searches to the end of the file (rows are never cut); a .txt cut with no line end within
    TEXT_SEARCH takes the first character start instead."""
    position, window = offset - 1, FIRST_WINDOW
    while position < size:
        chunk = read_at(position, window)
        newline = chunk.find(b"\n")
        if newline >= 0:
            return position + newline + 1
        position += len(chunk)
        if not chunk or (not whole_lines and position - offset >= TEXT_SEARCH):
            break
        window *= 2
    if whole_lines:
        return size
    head = read_at(offset, 4)
    return offset + next((i for i in range(len(head)) if head[i] & 0xC0 != 0x80), 0)


def _read_footer(path: Path):
    import pyarrow.parquet as pq

    return pq.read_metadata(path)


def _write_listing(folder: Path, units: dict[str, list[Unit]], footers: dict[str, Any]) -> None:
    """units.json (written last: its presence means complete) and one footer file per parquet
    file, atomically; best effort (a read-only cache lists again next time)."""
    paths = list(footers)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(paths):
            tmp = folder / f".footer-{i}.{os.getpid()}.tmp"
            footers[path].write_metadata_file(str(tmp))
            os.replace(tmp, folder / f"footer-{i}.parquet")
    except OSError:
        return
    write_cache(folder / "units.json", json.dumps(
        {"footers": paths, "units": {s: [[u.path, u.index, u.start, u.stop, u.piece_rows,
                                          u.nbytes] for u in us] for s, us in units.items()}}))


def _parquet_file(source: FileSource, f, path: str, streaming: bool = False):
    import pyarrow.parquet as pq

    options = dict(pre_buffer=False, buffer_size=STREAM_BUFFER) if streaming else {}
    parquet = pq.ParquetFile(f, metadata=source._footers.get(path), **options)
    source._footers[path] = parquet.metadata  # read once per file and process
    return parquet


# Parquet rows decoded and rows handed out, in this process: their ratio is the read
# amplification (scripts/benchmark_data.py reports it).
READ_STATS: collections.Counter[str] = collections.Counter()


def _read_row_group(source: FileSource, unit: Unit, columns: list[str] | None):
    """One whole row group (a unit of one piece): only its needed columns' bytes."""
    with _open(source.filesystem(), unit.path) as f:
        table = _parquet_file(source, f, unit.path).read_row_group(unit.index, columns=columns)
    READ_STATS["decoded_rows"] += table.num_rows
    READ_STATS["delivered_rows"] += table.num_rows
    return table


class _Cursor:
    """One row group of a parquet file, decoded as a stream of record batches of piece_rows
    rows from its first row: reading pieces in order decodes each once, and memory holds one
    piece. A unit starting at row `start` (a row group split for validation) is batches
    start // piece_rows on."""

    def __init__(self, source: FileSource, unit: Unit, columns: list[str] | None) -> None:
        self.unit, self.columns, self.next = unit, columns, 0  # next: the next batch's index
        self.file = _open(source.filesystem(), unit.path)
        parquet = _parquet_file(source, self.file, unit.path, streaming=True)
        self.batches = parquet.iter_batches(batch_size=unit.piece_rows, row_groups=[unit.index],
                                            columns=columns, use_threads=False)

    def read(self, batch_index: int):
        while self.next <= batch_index:  # batches before the one asked for: decoded, dropped
            batch = next(self.batches)
            READ_STATS["decoded_rows"] += batch.num_rows
            self.next += 1
        return batch

    def close(self) -> None:
        self.file.close()


_cursors: collections.OrderedDict[Any, _Cursor] = collections.OrderedDict()


def _read_piece(source: FileSource, unit: Unit, piece: int, columns: list[str] | None,
                stream: Any):
    """Piece `piece` of a big row group, continuing `stream`'s decoding where it can (the
    next piece of the same unit), else decoding from the row group's start."""
    key = (source.label, stream)
    wanted = unit.start // unit.piece_rows + piece
    cursor = _cursors.pop(key, None)
    if cursor is not None and (cursor.unit != unit or cursor.columns != columns or
                               cursor.next > wanted):
        cursor.close()
        cursor = None
    cursor = cursor or _Cursor(source, unit, columns)
    try:
        batch = cursor.read(wanted)
    except BaseException:
        cursor.close()
        raise
    READ_STATS["delivered_rows"] += batch.num_rows
    if piece + 1 < unit.pieces:
        _cursors[key] = cursor
        while len(_cursors) > MAX_CURSORS:
            _cursors.popitem(last=False)[1].close()
    else:
        cursor.close()
    return batch


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

def hub_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit a dataset's revision (a commit, branch or tag; None: the newest) names, in one
    quick request: no network means one clear line, not minutes of retries."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        return HfApi().dataset_info(repo_id, revision=revision, timeout=15).sha
    except RevisionNotFoundError:
        raise DataError(f"dataset {repo_id!r} has no revision {revision!r} on the Hub") from None
    except Exception as err:  # connection, DNS, HTTP 404/401: all end here
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise DataError(f"cannot reach dataset {repo_id!r} on the Hugging Face Hub ({reason}); "
                        "use local files (--data 'corpus/*.parquet') or --data pydocs") from None


def hub_split_files(repo_id: str, config: str | None, revision: str
                    ) -> tuple[Any, dict[str, list[str]]]:
    """The HfFileSystem and the data files of each split of a Hub dataset's configuration at one
    commit. The dataset card's `configs` say which files form which split (datasets' own parser
    reads them); without them, datasets' default file patterns decide."""
    from datasets.data_files import DataFilesDict, get_data_patterns, sanitize_patterns
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard, HfFileSystem, constants
    from huggingface_hub.errors import EntryNotFoundError

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


def hub_source(repo_id: str, config: str | None = None, revision: str | None = None,
               **options: Any) -> FileSource:
    """A Hub dataset pinned to the commit `revision` names (None: the newest)."""
    commit = hub_revision(repo_id, revision)
    fs, files = hub_split_files(repo_id, config, commit)
    return FileSource(repo_id, files, fs=fs, on_hub=True, revision=commit, **options)


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


def split_revision(spec: str) -> tuple[str, str | None]:
    """`ORG/NAME@REVISION` (or `fineweb-edu@REVISION`) into the name and the revision."""
    name, at, revision = spec.partition("@")
    if not at or local_files(spec) is not None:
        return spec, None
    if not revision:
        raise DataError(f"{spec!r}: name a revision after @ (a commit, branch or tag)")
    return name, revision


def get_source(spec: str, text_field: str = "text", data_config: str | None = None,
               min_int_score: int | None = None, revision: str | None = None) -> Source:
    """A source from a dataset name, a local path or glob, or a Hub dataset id (with an
    optional @REVISION: a commit, branch or tag). `revision`: the commit a resumed run reads
    (a named revision must resolve to it)."""
    options = {"text_field": text_field, "min_int_score": min_int_score}
    name, named = split_revision(spec)
    if named and revision:  # resuming: the run's commit, and a named branch, tag or commit
        commit = hub_revision(DATASETS.get(name, name), named)
        if commit != revision:
            raise DataError(f"cannot resume on {spec!r}: this run reads {name} at commit "
                            f"{revision}, and {named!r} is commit {commit}; resume without "
                            f"@{named}, or start a new run on the new revision")
    revision = revision or named
    if name == "pydocs":
        return PydocsSource()
    if name == "fineweb-edu":
        return hub_source(DATASETS[name], data_config or "sample-10BT", revision, **options)
    if name == "wikitext-103":
        return hub_source(DATASETS[name], data_config or "wikitext-103-raw-v1", revision,
                          articles=True)
    files = local_files(name)
    if files is not None:
        return local_source(name, files, **options)
    if name.count("/") == 1 and all(name.split("/")):
        return hub_source(name, data_config, revision, **options)
    raise DataError(f"unknown data source {spec!r}: use pydocs, fineweb-edu, wikitext-103, "
                    "a local path or glob, or a Hub dataset id (ORG/NAME or ORG/NAME@REVISION)")


def add_source_arguments(parser) -> None:
    """The options that choose what a source reads, shared by every script taking --data."""
    parser.add_argument("--text_field", default="text", help="column of jsonl/parquet/Hub rows")
    parser.add_argument("--data_config", default=None, help="Hub dataset configuration")
    parser.add_argument("--min_int_score", type=int, default=None,
                        help="FineWeb-Edu: keep documents with int_score >= this")


def source_from_args(args) -> Source:
    return get_source(args.data, args.text_field, args.data_config, args.min_int_score)
