"""`pydocs`: the Python documentation that ships with the interpreter, as an offline corpus.

Two parts, both real English prose about programming, needing no network:
- the pydoc topics (`pydoc_data.topics`): the language reference's sections, ~0.5 MB;
- the docstrings of the standard library's modules, classes and functions, read from the
  source files with `ast` (nothing is imported, so no module's import side effects run), ~1.5 MB.

Each pydoc topic is one document; each module's docstrings, joined, are another. The exact text
depends on the Python version that runs it.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
import sysconfig
from pathlib import Path

CACHE_VERSION = 1  # bump when the extraction below changes

# Folders of the standard library that are tests, tools or GUI demos rather than documentation.
SKIPPED_PARTS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3",
                 "turtledemo", "ensurepip", "__pycache__"}


def _topic_documents() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package it separately
        return []
    return [(f"topic:{name}", text.strip()) for name, text in sorted(topics.items())]


def _module_docstrings(path: Path) -> str:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return ""
    parts = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                title = "" if isinstance(node, ast.Module) else f"{node.name}\n"
                parts.append(title + doc.strip())
    return "\n\n".join(parts)


def cache_folder() -> Path:
    """The project's cache folder (XDG_CACHE_HOME, else ~/.cache)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt-pretrain"


def write_cache(path: Path, text: str) -> None:
    """Best effort and atomic: concurrent writers (ranks) never leave a torn file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: compute again next time


def _cache_path() -> Path:
    """One cache file per interpreter: the corpus depends on the Python version and its stdlib."""
    root = cache_folder()
    stdlib = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha256(f"{sys.version}|{stdlib}|{CACHE_VERSION}".encode()).hexdigest()[:16]
    return root / f"pydocs-{key}.json"


@functools.lru_cache(maxsize=1)
def pydocs_documents() -> tuple[tuple[str, str], ...]:
    """(document id, text) pairs in a fixed order. Parsing the standard library takes a few
    seconds, so the result is cached on disk (best effort)."""
    cache = _cache_path()
    try:
        return tuple(tuple(doc) for doc in json.loads(cache.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        pass
    docs = _build_documents()
    write_cache(cache, json.dumps(docs))
    return docs


def _build_documents() -> tuple[tuple[str, str], ...]:
    docs = _topic_documents()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if SKIPPED_PARTS.intersection(relative.parts):
            continue
        text = _module_docstrings(path)
        if text:
            docs.append((f"module:{relative.with_suffix('').as_posix()}", text))
    return tuple(docs)
