"""The tokenizer interface: GPT-2 against its known ids, round trips, special tokens, specs."""

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import FIXTURES
from tokenization.tokenizer import (
    EOT,
    GPT2_FILE_ENV,
    Tokenizer,
    TokenizerError,
    byte_tokenizer,
    get_tokenizer,
    tokenizer_from_tiktoken_file,
)


@pytest.fixture
def gpt2(gpt2_tiktoken_file, monkeypatch):
    monkeypatch.setenv(GPT2_FILE_ENV, str(gpt2_tiktoken_file))
    return get_tokenizer("gpt2")


def test_gpt2_known_ids(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.eot_id == 50256
    assert gpt2.n_vocab == 50257
    assert gpt2.decode([15496, 995]) == "Hello world"


def test_gpt2_from_a_path(gpt2_tiktoken_file):
    assert get_tokenizer(str(gpt2_tiktoken_file)).encode("Hello world") == [15496, 995]


def test_literal_endoftext_is_text_unless_allowed(gpt2):
    text = f"a{EOT}b"
    assert gpt2.eot_id not in gpt2.encode(text)
    assert gpt2.eot_id in gpt2.encode(text, allowed_special={EOT})
    assert gpt2.eot_id in gpt2.encode(text, allowed_special="all")
    assert gpt2.decode(gpt2.encode(text)) == text
    assert gpt2.eot_id not in gpt2.encode_batch([text])[0]


def test_bytes_tokenizer_is_utf8():
    tok = byte_tokenizer()
    assert tok.encode("hé") == [104, 195, 169]
    assert (tok.n_vocab, tok.eot_id) == (257, 256)
    assert tok.token_byte_lengths()[:3] == [1, 1, 1] and tok.token_byte_lengths()[256] == 0


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_bytes_round_trip_any_unicode(text):
    tok = byte_tokenizer()
    assert tok.decode(tok.encode(text)) == text


@functools.cache
def fixture_gpt2() -> Tokenizer:
    return tokenizer_from_tiktoken_file(FIXTURES / "gpt2.tiktoken", name="gpt2")


@pytest.mark.skipif(not (FIXTURES / "gpt2.tiktoken").exists(), reason="fixture absent")
@settings(max_examples=200, deadline=None)
@given(st.text())
def test_gpt2_round_trip_any_unicode(text):
    tok = fixture_gpt2()
    assert tok.decode(tok.encode(text)) == text


def test_spec_rebuilds_the_same_tokenizer(gpt2):
    rebuilt = Tokenizer.from_spec(gpt2.spec())
    text = "Tokenizers map text to integers, and back: ünïcödé 🙂."
    assert rebuilt.encode(text) == gpt2.encode(text)
    assert (rebuilt.name, rebuilt.n_vocab, rebuilt.eot_id) == ("gpt2", 50257, 50256)


def test_unknown_name_and_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="unknown tokenizer 'nope'"):
        get_tokenizer("nope")
    with pytest.raises(TokenizerError, match="not found"):
        get_tokenizer(str(tmp_path / "missing.tiktoken"))
    corrupt = tmp_path / "corrupt.tiktoken"
    corrupt.write_text("this is not base64 and ranks\n")
    with pytest.raises(TokenizerError, match="not a .tiktoken rank file"):
        get_tokenizer(str(corrupt))


def test_gpt2_without_network_or_file_says_how_to_fix(monkeypatch):
    monkeypatch.delenv(GPT2_FILE_ENV, raising=False)

    def offline():
        raise ConnectionError("no route to host")

    import tiktoken_ext.openai_public
    monkeypatch.setattr(tiktoken_ext.openai_public, "gpt2", offline)
    with pytest.raises(TokenizerError, match=GPT2_FILE_ENV):
        get_tokenizer("gpt2")
