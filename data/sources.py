"""Text sources behind one interface: `get_source(spec).documents(split)` yields document texts.

Every source has a fixed validation split, disjoint from training: a document belongs to it when
a hash of its id falls in the first VAL_PERCENT of 100 buckets, so membership never depends on
the order or the number of documents read.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from data.pydocs import pydocs_documents
from transformer_setup.cli import UserError

SPLITS = ("train", "val")
VAL_PERCENT = 5


class DataError(UserError):
    pass


def split_of(doc_id: str) -> str:
    return "val" if zlib.crc32(doc_id.encode("utf-8")) % 100 < VAL_PERCENT else "train"


@dataclass(frozen=True)
class PydocsSource:
    name: str = "pydocs"

    def documents(self, split: str) -> Iterator[str]:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        for doc_id, text in pydocs_documents():
            if split_of(doc_id) == split:
                yield text


SOURCES = {"pydocs": PydocsSource}


def get_source(spec: str) -> PydocsSource:
    """A source by name (see data/README.md)."""
    if spec in SOURCES:
        return SOURCES[spec]()
    raise DataError(f"unknown data source {spec!r}; available: {', '.join(SOURCES)}")
