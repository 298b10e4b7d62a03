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
4. Encode. On a new chunk, apply the learned merges in the order they were learned: of all
   adjacent pairs that are merges, merge the one learned first; repeat until none is left.
5. Decode. Concatenate the bytes of each token and read them as UTF-8.

This module does all five in plain Python. The fast path used for training models
(tokenization/tokenizer.py, tiktoken in Rust) computes the same ids; the tests check that on
real text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import regex  # like `re`, plus the Unicode classes \p{L} (letters) and \p{N} (numbers)

from tokenization.tokenizer import EOT, GPT2_PATTERN

Pair = tuple[int, int]


def pretokenize(text: str, pattern: str = GPT2_PATTERN) -> list[bytes]:
    """Step 1: the chunks of text, as UTF-8 bytes. Concatenated, they are the text again."""
    return [chunk.encode("utf-8") for chunk in regex.findall(pattern, text)]


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


class BytePairEncoding:
    """A vocabulary: the 256 bytes, then one token per merge, then special tokens."""

    def __init__(self, merges: dict[Pair, int], special_tokens: dict[str, int] | None = None,
                 pattern: str = GPT2_PATTERN, byte_ids: list[int] | None = None) -> None:
        self.merges = merges  # (left id, right id) -> id of the merged token, in learning order
        self.pattern = pattern
        # The id of each byte value: 0-255 in byte order here; GPT-2 numbers them differently.
        self.byte_ids = byte_ids or list(range(256))
        self.vocab = {i: bytes([b]) for b, i in enumerate(self.byte_ids)}  # id -> its bytes
        for (left, right), new_id in sorted(merges.items(), key=lambda item: item[1]):
            self.vocab[new_id] = self.vocab[left] + self.vocab[right]
        if special_tokens is None:
            special_tokens = {EOT: 256 + len(merges)}
        self.special_tokens = special_tokens
        self._cache: dict[bytes, list[int]] = {}  # chunks repeat a lot in real text

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
        """Step 4 on one chunk: apply the earliest-learned merge present, until none is."""
        if chunk in self._cache:
            return self._cache[chunk]
        ids = [self.byte_ids[b] for b in chunk]
        while len(ids) >= 2:
            pair = min(zip(ids, ids[1:]), key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break
            ids = merge(ids, pair, self.merges[pair])
        self._cache[chunk] = ids
        return ids

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
        return {token: i for i, token in self.vocab.items()}

    @classmethod
    def from_ranks(cls, ranks: dict[bytes, int], special_tokens: dict[str, int],
                   pattern: str = GPT2_PATTERN) -> BytePairEncoding:
        """Recover the merges from a rank table (such as GPT-2's, which publishes only ranks).

        Take the tokens in rank order. Encoding a token's bytes with the merges recovered so far
        (all of lower rank) stops at exactly two pieces: the pair whose merge made this token.
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
            bpe._cache.clear()
            pieces = bpe.encode_chunk(token)
            if len(pieces) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is not a merge of two tokens")
            bpe.merges[(pieces[0], pieces[1])] = rank
            bpe.vocab[rank] = token
        bpe._cache.clear()
        return bpe
