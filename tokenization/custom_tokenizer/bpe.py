"""Byte-level byte pair encoding (BPE), written to be read: this file explains the algorithm.

BPE (Sennrich et al., 2016) as GPT-2 applies it to bytes:

1. Pre-tokenize. A regex cuts text into chunks: words with their leading space (" hello"),
   runs of digits, runs of punctuation, whitespace. Merges never cross a chunk boundary, so
   " dog." can never become one token with the word after it.
2. Start from bytes. A chunk is its UTF-8 bytes, ids 0-255, so every string has an encoding and
   there is no "unknown" token.
3. Train. Count every adjacent pair of ids across the corpus (a chunk seen 1,000 times counts
   1,000 times), make the most frequent pair a new token with the next id, replace that pair
   everywhere, and repeat until the vocabulary has the size asked for.
4. Encode. A chunk that is itself a token is that token. Otherwise start from its bytes and,
   while two neighbours join into a token, join the pair whose token was learned first (the
   lowest id; the leftmost of equals). This is tiktoken's rule: it looks tokens up by their
   bytes, so it also joins neighbours that training never paired but whose bytes make a token.
5. Decode. Concatenate the bytes of each token and read them as UTF-8.

This module does all five in plain Python. The fast path used for training models
(tokenization/tokenizer.py, tiktoken in Rust) computes the same ids; the tests check that on
real text, on characters of every Unicode class, and on a 20,000-letter word.
"""

from __future__ import annotations

import functools
import heapq
from collections import Counter
from collections.abc import Iterable

import regex  # like `re`, plus the Unicode classes \p{L} (letters) and \p{N} (numbers)
import tiktoken

from tokenization.tokenizer import EOT, GPT2_PATTERN

Pair = tuple[int, int]
PROPERTY = regex.compile(r"\\[pP]\{[^}]*\}")  # \p{L}, \P{N}, \p{Lu} ... in a pattern


# ---------------------------------------------------------------------- step 1: pre-tokenize

def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[bytes]:
    """Step 1: the chunks of text, as UTF-8 bytes. Concatenated, they are the text again
    (after replace_lone_surrogates)."""
    text = replace_lone_surrogates(text)
    return [chunk.encode("utf-8") for chunk in compile_like_tiktoken(pattern).findall(text)]


def replace_lone_surrogates(text: str) -> str:
    """What tiktoken does with a Python string that is not valid Unicode: a surrogate pair
    ("\\ud83d\\ude00") becomes its character, a lone surrogate ("\\ud800") U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


@functools.lru_cache(maxsize=8)
def compile_like_tiktoken(pattern: str) -> regex.Pattern:
    """The pattern for the `regex` module, with each \\p{...} class spelled out as the
    characters tiktoken's regex engine puts in it.

    The two engines follow different Unicode versions (with regex 2026.11.19 and tiktoken 0.14.0,
    17,144 letters are letters to `regex` only), so "\\U00010940's" would split differently.
    Rather than trust a version, we ask tiktoken: one pass over every code point.
    (\\s is Unicode's White_Space in both; a test checks GPT-2's classes on every code point.)
    """
    def spelled_out(match: regex.Match, inside_class: bool) -> str:
        ranges = tiktoken_class(match.group())
        return ranges if inside_class else f"[{ranges}]"

    out, inside_class, i = [], False, 0
    while i < len(pattern):
        prop = PROPERTY.match(pattern, i)
        if prop:
            out.append(spelled_out(prop, inside_class))
            i = prop.end()
            continue
        step = pattern[i:i + 2] if pattern[i] == "\\" else pattern[i]  # an escape is 2 chars
        if step == "[" and not inside_class:
            inside_class = True
        elif step == "]" and inside_class:
            inside_class = False
        out.append(step)
        i += len(step)
    return regex.compile("".join(out))


@functools.lru_cache(maxsize=32)
def tiktoken_class(prop: str) -> str:
    """The characters tiktoken matches with prop (such as \\p{L}), as ranges for a [...] class:
    a tiktoken encoder whose pattern is prop alone keeps exactly those characters of a text."""
    probe = tiktoken.Encoding(f"probe {prop}", pat_str=prop, special_tokens={},
                              mergeable_ranks={bytes([b]): b for b in range(256)})
    every_character = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)
    kept = [ord(c) for c in probe.decode(probe.encode_ordinary(every_character))]
    ranges, start = [], 0
    for i in range(1, len(kept) + 1):
        if i == len(kept) or kept[i] != kept[i - 1] + 1:  # a run of consecutive code points ends
            first, last = kept[start], kept[i - 1]
            ranges.append(f"\\U{first:08x}" + (f"-\\U{last:08x}" if last > first else ""))
            start = i
    return "".join(ranges)


# ---------------------------------------------------------------------- step 3: training

def count_pairs(words: dict[tuple[int, ...], int]) -> Counter[Pair]:
    """How often each adjacent pair of ids occurs, each word weighted by its count."""
    counts: Counter[Pair] = Counter()
    for word, count in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += count
    return counts


def merge(ids: tuple[int, ...] | list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every occurrence of pair in ids, left to right, by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


# ---------------------------------------------------------------------- step 4: encoding

def join_by_rank(chunk: bytes, rank_of: dict[bytes, int]) -> list[bytes]:
    """Step 4 on the bytes of one chunk: while two neighbouring parts join into a token (a key
    of rank_of), join the pair whose token has the lowest rank, the leftmost of equals.

    Rescanning every pair after each join would cost O(n) per join, O(n^2) per chunk (a
    20,000-letter word is 20,000 parts to start with). Instead the parts are a linked list and
    the pairs that join wait in a heap ordered by (rank, position): a join removes one part and
    looks up the two new pairs around it, so a chunk costs O(n log n).
    """
    parts: list[bytes | None] = [chunk[i:i + 1] for i in range(len(chunk))]
    after = list(range(1, len(parts))) + [-1]  # index of the next live part; -1: none
    before = list(range(-1, len(parts) - 1))  # index of the previous live part; -1: none
    heap: list[tuple[int, int, bytes]] = []

    def push_pair_at(i: int) -> None:
        """Queue the pair (part i, its next part) if the two join into a token."""
        if i >= 0 and after[i] >= 0:
            joined = parts[i] + parts[after[i]]
            if joined in rank_of:
                heapq.heappush(heap, (rank_of[joined], i, joined))

    for i in range(len(parts) - 1):
        push_pair_at(i)
    while heap:
        _, i, joined = heapq.heappop(heap)
        j = after[i]
        if parts[i] is None or j < 0 or parts[i] + parts[j] != joined:
            continue  # stale: one of the two parts has joined something else since
        parts[i], parts[j] = joined, None
        after[i] = after[j]
        if after[j] >= 0:
            before[after[j]] = i
        push_pair_at(before[i])
        push_pair_at(i)
    return [part for part in parts if part is not None]


class BytePairEncoding:
    """A vocabulary: the 256 bytes, then one token per merge, then special tokens."""

    cache_size = 1 << 16  # chunks whose ids are remembered (least recently used go first)

    def __init__(self, merges: dict[Pair, int], special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_PATTERN, byte_ids: list[int] | None = None) -> None:
        self.merges = merges  # (left id, right id) -> id of the merged token, in learning order
        self.pattern = pattern
        # The id of each byte value: 0-255 in byte order here; GPT-2 numbers them differently.
        self.byte_ids = byte_ids or list(range(256))
        self.vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}  # id -> its bytes
        for (left, right), new_id in sorted(merges.items(), key=lambda item: item[1]):
            self.vocab[new_id] = self.vocab[left] + self.vocab[right]
        self.rank_of = {token: i for i, token in self.vocab.items()}  # bytes -> id
        if special_tokens is None:
            special_tokens = {EOT: 256 + len(merges)}
        self.special_tokens = special_tokens
        # Real text repeats its chunks a lot; a bounded cache keeps memory flat on any corpus.
        self._encode_cached = functools.lru_cache(maxsize=self.cache_size)(self._encode_chunk)

    # ------------------------------------------------------------------ step 3: training

    @classmethod
    def train(cls, documents: Iterable[str], vocab_size: int,
              pattern: str = GPT2_PATTERN) -> BytePairEncoding:
        """Learn vocab_size - 257 merges (256 bytes and <|endoftext|> come for free).

        Every step recounts all pairs, which is simple and fine for a small corpus; the fast
        trainer (train_tokenizer.py) updates only the counts a merge changes.
        """
        n_merges = vocab_size - 257
        if n_merges < 0:
            raise ValueError(f"vocab_size must be at least 257, got {vocab_size}")
        chunk_counts = Counter(chunk for doc in documents for chunk in pretokenize(doc, pattern))
        words = {tuple(chunk): count for chunk, count in chunk_counts.items()}
        merges: dict[Pair, int] = {}
        for new_id in range(256, 256 + n_merges):
            counts = count_pairs(words)
            if not counts:
                break  # every word is a single token already
            # The most frequent pair; ties go to the smallest ids so training is deterministic.
            best = max(counts, key=lambda pair: (counts[pair], -pair[0], -pair[1]))
            merges[best] = new_id
            words = {tuple(merge(word, best, new_id)): count for word, count in words.items()}
        return cls(merges, {EOT: 256 + len(merges)}, pattern)

    # ------------------------------------------------------------------ steps 4 and 5

    def encode_chunk(self, chunk: bytes) -> list[int]:
        """Step 4 on one chunk."""
        return list(self._encode_cached(chunk))

    def _encode_chunk(self, chunk: bytes) -> tuple[int, ...]:
        if chunk in self.rank_of:  # the whole chunk is a token: tiktoken looks this up first
            return (self.rank_of[chunk],)
        return tuple(self.rank_of[part] for part in join_by_rank(chunk, self.rank_of))

    def encode(self, text: str) -> list[int]:
        """Ids of text. Special-token strings in it are ordinary text, as in the fast path."""
        return [i for chunk in pretokenize(text, self.pattern) for i in self.encode_chunk(chunk)]

    def decode(self, ids: Iterable[int]) -> str:
        specials = {i: s.encode("utf-8") for s, i in self.special_tokens.items()}
        data = b"".join(specials[i] if i in specials else self.vocab[i] for i in ids)
        return data.decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ bridges to the fast path

    def ranks(self) -> dict[bytes, int]:
        """The token table as tiktoken wants it: bytes -> id, ids in learning order."""
        return dict(self.rank_of)

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], special_tokens: dict[str, int],
                   pattern: str = GPT2_PATTERN) -> BytePairEncoding:
        """Recover the merges from a rank table (such as GPT-2's, which publishes only ranks).

        Take the tokens in rank order. Joining a token's bytes with the tokens of lower rank
        (step 4) stops at exactly two parts: the pair whose merge made this token.
        """
        by_rank = sorted(ranks.items(), key=lambda item: item[1])
        singles = {token: rank for token, rank in by_rank if len(token) == 1}
        if len(singles) != 256:
            raise ValueError("a byte-level vocabulary must contain all 256 single bytes")
        byte_ids = [singles[bytes([b])] for b in range(256)]
        bpe = cls({}, special_tokens, pattern, byte_ids)
        for token, rank in by_rank:
            if len(token) == 1:
                continue
            parts = join_by_rank(token, bpe.rank_of)  # rank_of holds the lower ranks only
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two tokens")
            bpe.merges[(bpe.rank_of[parts[0]], bpe.rank_of[parts[1]])] = rank
            bpe.vocab[rank] = token
            bpe.rank_of[token] = rank
        return bpe
