"""One tokenizer interface for the whole project.

Every tokenizer here is byte-level BPE run by tiktoken (Rust): a pre-tokenization regex, a table of
mergeable byte strings ranked by merge order, and special tokens. The kinds differ only in the
table:
- `gpt2`: GPT-2's 50,256 ranks plus <|endoftext|> = 50256;
- `bytes`: the 256 single bytes plus <|endoftext|> = 256 (no file needed);
- a `.tiktoken` file of ranks (GPT-2's pattern and <|endoftext|> after the last rank).

`spec()` returns the whole table as plain values, so a checkpoint carries its tokenizer and needs
no file at inference time; `Tokenizer.from_spec` rebuilds it.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any, Literal

import tiktoken
from tiktoken.load import load_tiktoken_bpe
from tiktoken_ext.openai_public import r50k_pat_str

from transformer_setup.cli import UserError

EOT = "<|endoftext|>"
GPT2_PATTERN = r50k_pat_str  # GPT-2's pre-tokenization regex
GPT2_FILE_ENV = "GPT2_TIKTOKEN_FILE"  # a local gpt2.tiktoken, for machines without network


class TokenizerError(UserError):
    pass


class Tokenizer:
    """Byte-level BPE: encode text to ids and back. Wraps a tiktoken Encoding."""

    def __init__(self, name: str, ranks: dict[bytes, int], special_tokens: dict[str, int],
                 pattern: str = GPT2_PATTERN) -> None:
        if EOT not in special_tokens:
            raise TokenizerError(f"tokenizer {name!r} has no {EOT} token")
        self.name = name
        self.pattern = pattern
        self.special_tokens = dict(special_tokens)
        self._encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks,
                                           special_tokens=special_tokens)
        self._ranks = ranks

    # ------------------------------------------------------------------ encoding and decoding

    @property
    def n_vocab(self) -> int:
        """Number of ids: ranks plus special tokens (the model's vocab_size)."""
        return self._encoding.n_vocab

    @property
    def eot_id(self) -> int:
        return self.special_tokens[EOT]

    def encode(self, text: str,
               allowed_special: Collection[str] | Literal["all"] = ()) -> list[int]:
        """Ids of text. Special-token strings in the text are ordinary text unless allowed."""
        allowed = allowed_special if allowed_special == "all" else set(allowed_special)
        return self._encoding.encode(text, allowed_special=allowed, disallowed_special=())

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        """Ids of many texts at once, in parallel threads; special-token strings are text."""
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids; an incomplete UTF-8 sequence becomes U+FFFD."""
        return self._encoding.decode(list(ids), errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        return self._encoding.decode_bytes(list(ids))

    def token_byte_lengths(self) -> list[int]:
        """Bytes of text behind each id (0 for special tokens), for bits-per-byte."""
        lengths = [0] * self.n_vocab
        for token, rank in self._ranks.items():
            lengths[rank] = len(token)
        return lengths

    # ------------------------------------------------------------------ persistence

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer, as plain values (checkpoint-safe)."""
        by_rank = sorted(self._ranks.items(), key=lambda item: item[1])
        if [rank for _, rank in by_rank] != list(range(len(by_rank))):
            raise TokenizerError(f"tokenizer {self.name!r} has gaps in its ranks")
        return {"name": self.name, "pattern": self.pattern,
                "ranks": [token for token, _ in by_rank],
                "special_tokens": dict(self.special_tokens)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Tokenizer:
        try:
            ranks = {token: rank for rank, token in enumerate(spec["ranks"])}
            return cls(spec["name"], ranks, spec["special_tokens"], spec["pattern"])
        except (KeyError, TypeError, ValueError) as err:
            raise TokenizerError(f"invalid tokenizer spec ({err})") from None

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, n_vocab={self.n_vocab})"


# ---------------------------------------------------------------------- the kinds

def byte_tokenizer() -> Tokenizer:
    """Raw UTF-8 bytes: ids 0-255 are the bytes, 256 is <|endoftext|>."""
    return Tokenizer("bytes", {bytes([i]): i for i in range(256)}, {EOT: 256})


def tokenizer_from_tiktoken_file(path: str | Path, name: str | None = None) -> Tokenizer:
    """A `.tiktoken` file of ranks (base64 token, rank per line); <|endoftext|> follows them."""
    path = Path(path)
    try:
        ranks = load_tiktoken_bpe(str(path))
    except FileNotFoundError:
        raise TokenizerError(f"tokenizer file not found: {path}") from None
    except (ValueError, UnicodeDecodeError, OSError) as err:
        raise TokenizerError(f"{path} is not a .tiktoken rank file ({err})") from None
    if not ranks:
        raise TokenizerError(f"{path} holds no tokens")
    return Tokenizer(name or path.stem, ranks, {EOT: len(ranks)})


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2's BPE: from $GPT2_TIKTOKEN_FILE if set, else fetched (and cached) as tiktoken does."""
    local = os.environ.get(GPT2_FILE_ENV)
    if local:
        return tokenizer_from_tiktoken_file(local, name="gpt2")
    from tiktoken_ext import openai_public

    try:
        params = openai_public.gpt2()  # downloads once, then reads tiktoken's cache
    except Exception as err:  # requests/urllib errors of many kinds: all mean "could not fetch"
        raise TokenizerError(
            f"could not fetch GPT-2's BPE files ({type(err).__name__}); with no network, set "
            f"{GPT2_FILE_ENV} to a local gpt2.tiktoken file, or pass its path as --tokenizer, "
            "or use --tokenizer bytes") from None
    return Tokenizer("gpt2", params["mergeable_ranks"], params["special_tokens"],
                     params["pat_str"])


def get_tokenizer(name_or_path: str) -> Tokenizer:
    """`gpt2`, `bytes`, or a path to a `.tiktoken` file."""
    if name_or_path == "gpt2":
        return gpt2_tokenizer()
    if name_or_path == "bytes":
        return byte_tokenizer()
    path = Path(name_or_path)
    if path.suffix == ".tiktoken" or path.is_file():
        return tokenizer_from_tiktoken_file(path)
    raise TokenizerError(f"unknown tokenizer {name_or_path!r}: use gpt2, bytes, "
                         "or the path of a .tiktoken file")
