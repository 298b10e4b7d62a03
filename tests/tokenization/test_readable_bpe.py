"""The readable BPE is tiktoken on every input: Unicode tables, lone surrogates, long words."""

import random

import pytest
import regex
import tiktoken

from tests.helpers import FIXTURES
from tokenization.custom_tokenizer import BytePairEncoding
from tokenization.custom_tokenizer.bpe import compile_like_tiktoken
from tokenization.tokenizer import Tokenizer, tokenizer_from_tiktoken_file

EVERY_CHARACTER = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000)


@pytest.fixture(scope="module")
def gpt2() -> tuple[Tokenizer, BytePairEncoding]:
    path = FIXTURES / "gpt2.tiktoken"
    if not path.exists():
        pytest.skip(f"fixture {path} is absent")
    fast = tokenizer_from_tiktoken_file(path, name="gpt2")
    return fast, BytePairEncoding.from_ranks(fast.ranks, fast.special_tokens)


def tiktoken_keeps(pattern: str) -> set[str]:
    """The characters tiktoken's regex engine matches with pattern (it drops the rest)."""
    probe = tiktoken.Encoding("probe", pat_str=pattern, special_tokens={},
                              mergeable_ranks={bytes([b]): b for b in range(256)})
    return set(probe.decode(probe.encode_ordinary(EVERY_CHARACTER)))


def test_lone_surrogates_encode_as_tiktoken_does(gpt2):
    fast, readable = gpt2
    for text in ["a\ud800b", "\ud83d\ude00 smile", "x\udfff", "\ud800", "\ude00\ud83d"]:
        assert readable.encode(text) == fast.encode(text), ascii(text)
    assert fast.decode(readable.encode("a\ud800b")) == "a\ufffdb"


def test_unicode_classes_are_tiktokens_on_every_code_point():
    """GPT-2's punctuation class, [^\\s\\p{L}\\p{N}], spelled out for `regex`, keeps exactly
    the characters tiktoken keeps: its letters, numbers and white space, nested in a class."""
    pattern = r"[^\s\p{L}\p{N}]"
    assert set(compile_like_tiktoken(pattern).findall(EVERY_CHARACTER)) == tiktoken_keeps(pattern)


def test_characters_of_a_newer_unicode_split_as_in_tiktoken(gpt2):
    """`regex` follows a newer Unicode than tiktoken: thousands of characters are letters or
    numbers to one only ("\\U00010940's" split differently). Around each, the ids agree."""
    fast, readable = gpt2
    differ = set()
    for prop in (r"\p{L}", r"\p{N}"):
        differ |= set(regex.findall(prop, EVERY_CHARACTER)) ^ tiktoken_keeps(prop)
    assert len(differ) > 1000  # else the two engines agree and this tests nothing
    text = "".join(f" {c}'s a{c}1 {c}{c}. " for c in sorted(differ))
    assert readable.encode(text) == fast.encode(text)


def test_a_20000_letter_word_is_linear_and_exact(gpt2):
    """Rescanning every pair after each join took 4 s for 16,000 letters (quadratic); the heap
    looks up each new pair once: at most 3 lookups per letter, the same ids as tiktoken."""
    fast, readable = gpt2
    letters = random.Random(0)
    word = "".join(letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(20_000))

    class CountingDict(dict):
        lookups = 0

        def __contains__(self, key):
            CountingDict.lookups += 1
            return super().__contains__(key)

    readable.rank_of = CountingDict(readable.rank_of)
    try:
        ids = readable.encode(word)
    finally:
        readable.rank_of = dict(readable.rank_of)
    assert ids == fast.encode(word)
    assert len(word) - len(ids) > 5_000  # thousands of joins: the count below means something
    assert CountingDict.lookups <= 3 * len(word)


def test_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(BytePairEncoding, "cache_size", 100)
    bpe = BytePairEncoding.train(["a small corpus of words"], vocab_size=270)
    words = [" w" + "".join(chr(97 + (i // 26 ** k) % 26) for k in range(3)) for i in range(2000)]
    assert bpe.decode(bpe.encode("".join(words))) == "".join(words)
    assert bpe._encode_cached.cache_info().currsize == 100
