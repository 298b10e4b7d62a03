"""Command-line plumbing shared by every entry script.

A user mistake (bad flag, bad value, missing file) is reported as one line on stderr with a
non-zero exit; tracebacks are for bugs. Code raises UserError (or a subclass) for the former.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Callable
from typing import Any, NoReturn


class UserError(Exception):
    """Something the user can fix: the message says what and, where it helps, how."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage stays under --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _number(kind: type, test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: parse with `kind`, refuse what fails `test` (NaN and inf included)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages and metavars
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
finite_float = _number(float, lambda v: True, "a finite number")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive number")
probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def _field_type(cls: type, field: dataclasses.Field) -> tuple[type, bool]:
    """The concrete type of a dataclass field (int for `int | None`), and whether it takes None."""
    hint = typing.get_type_hints(cls)[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return next(a for a in typing.get_args(hint) if a is not type(None)), True
    return hint, False


def _or_none(kind: type) -> Callable[[str], Any]:
    """`auto` or `none` for an optional field (its automatic choice), else a value of kind."""
    def parse(text: str) -> Any:
        return None if text.lower() in ("auto", "none") else kind(text)
    parse.__name__ = kind.__name__
    return parse


def field_comments(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the class's source (and the comment lines right below
    it): the configs document their fields once, and --help shows the same words."""
    comments: dict[str, str] = {}
    current = None
    for line in inspect.getsource(cls).splitlines():
        field = re.match(r"\s{4}(\w+): [^#]*?(?:#\s*(.*))?$", line)
        more = re.match(r"\s{4}#\s*(.*)$", line)
        if field:
            current = field.group(1)
            comments[current] = field.group(2) or ""
        elif more and current:
            comments[current] += " " + more.group(1)
        else:
            current = None
    return comments


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, title: str,
                            shown: dict[str, tuple[Any, str]] | None = None) -> set[str]:
    """One --field option per dataclass field; unset options stay out of the parsed namespace.

    Booleans take an optional value: `--resume` or `--resume false`. The help of each is the
    field's comment and its default; `shown` gives other defaults to show, with where they
    come from (a preset's values). Returns the field names.
    """
    group = parser.add_argument_group(title)
    comments = field_comments(cls)
    names = set()
    for field in dataclasses.fields(cls):
        kind, optional = _field_type(cls, field)
        default = field.default if field.default is not dataclasses.MISSING else None
        source = ""
        if shown and field.name in shown:
            default, source = shown[field.name]
        value = "auto" if default is None else default
        help_text = f"{comments.get(field.name, '')} (default: {value}{source})".strip()
        help_text = help_text.replace("%", "%%")
        if kind is bool:
            group.add_argument(f"--{field.name}", type=parse_bool, nargs="?", const=True,
                               default=argparse.SUPPRESS, metavar="BOOL", help=help_text)
        else:
            group.add_argument(f"--{field.name}", type=_or_none(kind) if optional else kind,
                               default=argparse.SUPPRESS, metavar=kind.__name__.upper(),
                               help=help_text)
        names.add(field.name)
    return names


def run_main(main: Callable[[], Any]) -> NoReturn:
    """Run an entry point: UserError -> `error: ...` on stderr, exit 1; Ctrl-C -> exit 130."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
