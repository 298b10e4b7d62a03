"""Cleaning applied to every document before tokenization.

Each rule is a small function, applied in the order of RULES; `clean_text` returns None for a
document too short to keep. Cleaning is conservative: it removes what no one means to train on
(invisible control bytes, encoding variants, tokenizer artifacts) and keeps everything else.
"""

from __future__ import annotations

import re
import unicodedata

MIN_CHARS = 20  # documents shorter than this (after cleaning) carry no usable context


def normalize_unicode(text: str) -> str:
    """NFC: a character and its decomposed form ("é" vs "e" + U+0301) become the same code
    points, so the same word always tokenizes the same way. (NFKC would also fold ligatures and
    full-width forms, changing what the text says; we do not.)"""
    return unicodedata.normalize("NFC", text)


def normalize_newlines(text: str) -> str:
    """Windows (\\r\\n) and old Mac (\\r) line ends become \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff\ufffe\uffff]")


def remove_control_characters(text: str) -> str:
    """Control characters (C0 and C1, except tab and newline), zero-width spaces and byte-order
    marks: invisible bytes from broken extraction that would only waste tokens."""
    return _CONTROL.sub("", text)


_WIKITEXT_ARTIFACT = re.compile(r" @([-,.])@ ")


def fix_wikitext_artifacts(text: str) -> str:
    """WikiText splits numbers and hyphenated words with escaped separators: "1 @,@ 000" and
    "state @-@ of @-@ the @-@ art" become "1,000" and "state-of-the-art"."""
    return _WIKITEXT_ARTIFACT.sub(r"\1", text)


_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")


def normalize_whitespace(text: str) -> str:
    """No spaces at line ends, at most one blank line in a row, none at the start or end.
    Indentation inside lines is kept (it is meaning in code and verse)."""
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_BLANK_LINES.sub("\n\n", text)
    return text.strip()


RULES = (normalize_unicode, normalize_newlines, remove_control_characters,
         fix_wikitext_artifacts, normalize_whitespace)


def clean_text(text: str, min_chars: int = MIN_CHARS) -> str | None:
    """The cleaned document, or None when fewer than min_chars characters remain."""
    for rule in RULES:
        text = rule(text)
    return text if len(text) >= min_chars else None
