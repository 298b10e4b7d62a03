"""Trained vocabularies (tokenizers trainer + transformers format) and the readable BPE."""

import json

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from data.sources import get_source
from tests.helpers import FIXTURES, assert_one_line_error, run_script
from tokenization.custom_tokenizer import BytePairEncoding
from tokenization.tokenizer import (
    EOT,
    Tokenizer,
    TokenizerError,
    byte_tokenizer,
    get_tokenizer,
    tokenizer_from_tiktoken_file,
)

WIKITEXT = FIXTURES / "wikitext-2" / "valid.txt"


def real_text() -> str:
    """Held-out English: WikiText-2 where the fixture exists, else pydocs' validation split."""
    if WIKITEXT.exists():
        return WIKITEXT.read_text(encoding="utf-8")[:400_000]
    return "\n\n".join(get_source("pydocs").documents("val"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2,000-id vocabulary trained on pydocs through the command line."""
    out = tmp_path_factory.mktemp("tok") / "pydocs-2k"
    result = run_script("tokenization/train_tokenizer.py", "--data", "pydocs", "--vocab_size",
                        "2000", "--max_chars", "1000000", "--out", str(out), cwd=out.parent)
    assert result.returncode == 0, result.stderr
    assert "2,000 ids" in result.stdout and "<|endoftext|> = 1999" in result.stdout
    return out


def test_trained_folder_loads_in_transformers_with_our_ids(trained):
    ours = get_tokenizer(str(trained))
    text = real_text()
    ids = ours.encode(text)
    assert ids == AutoTokenizer.from_pretrained(trained)(text)["input_ids"]
    assert ids == PreTrainedTokenizerFast.from_pretrained(trained)(text)["input_ids"]
    assert ours.decode(ids) == text
    assert (ours.n_vocab, ours.eot_id) == (2000, 1999)
    assert len(ids) < 0.5 * len(text.encode())  # it really compresses


def test_trained_folder_save_load_and_spec_give_the_same_ids(trained, tmp_path):
    ours = get_tokenizer(str(trained))
    ours.save(tmp_path / "copy")
    text = real_text()[:50_000]
    assert get_tokenizer(str(tmp_path / "copy")).encode(text) == ours.encode(text)
    assert Tokenizer.from_spec(ours.spec()).encode(text) == ours.encode(text)


def test_gpt2_in_transformers_format_matches_tiktoken(gpt2_tiktoken_file, tmp_path):
    gpt2 = tokenizer_from_tiktoken_file(gpt2_tiktoken_file, name="gpt2")
    gpt2.save(tmp_path / "gpt2")
    hf = AutoTokenizer.from_pretrained(tmp_path / "gpt2")
    text = (FIXTURES / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    assert hf(text)["input_ids"] == gpt2.encode(text)
    assert hf.eos_token_id == hf.bos_token_id == 50256


def test_custom_bpe_given_gpt2_merges_encodes_like_tiktoken(gpt2_tiktoken_file):
    fast = tokenizer_from_tiktoken_file(gpt2_tiktoken_file, name="gpt2")
    custom = BytePairEncoding.from_ranks(fast.ranks, fast.special_tokens)
    assert len(custom.merges) == 50_000
    text = (FIXTURES / "wikitext-2" / "test.txt").read_text(encoding="utf-8")
    assert custom.encode(text) == fast.encode(text)


def test_custom_bpe_given_trained_merges_encodes_like_the_fast_path(trained):
    fast = get_tokenizer(str(trained))
    custom = BytePairEncoding.from_ranks(fast.ranks, fast.special_tokens)
    text = real_text()
    assert custom.encode(text) == fast.encode(text)


def test_custom_bpe_trains_a_vocabulary_that_round_trips():
    docs = list(get_source("pydocs").documents("train"))[:40]
    bpe = BytePairEncoding.train(docs, vocab_size=400)
    assert len(bpe.merges) == 400 - 257 and bpe.special_tokens == {EOT: 399}
    held_out = "\n".join(get_source("pydocs").documents("val"))[:20_000] + " ünïcödé 🙂"
    ids = bpe.encode(held_out)
    assert bpe.decode(ids) == held_out
    assert len(ids) < 0.8 * len(held_out.encode())
    # The fast path, given these merges as ranks, encodes the same.
    fast = Tokenizer("custom", bpe.ranks(), bpe.special_tokens)
    assert fast.encode(held_out) == ids


def test_custom_bpe_training_is_the_textbook_algorithm():
    bpe = BytePairEncoding.train(["aaab aaab aaab"], vocab_size=259)
    # Chunks: "aaab" once, " aaab" twice. (a, a) occurs 2 + 2*2 = 6 times: merge 256.
    # Then (256, a) and (a, b) both occur 3 times; the tie goes to the smaller ids: (a, b).
    assert bpe.merges == {(97, 97): 256, (97, 98): 257}
    assert bpe.encode("aaab") == [256, 257]
    assert bpe.encode(" aab") == [32, 256, 98]


def test_a_trained_tokenizer_drives_training_and_inference(trained, tmp_path):
    result = run_script("models/gpt.py", "--preset", "tiny", "--tokenizer", str(trained),
                        "--max_iters",
                        "2", "--eval_iters", "1", "--batch_size", "2", "--accumulation_steps", "1",
                        "--out_dir",
                        str(tmp_path / "run"), "--sample_tokens", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ckpt = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert ckpt["model_config"]["vocab_size"] == 2000
    # The checkpoint alone is enough: the tokenizer folder can go away.
    moved = tmp_path / "elsewhere"
    result = run_script("models/inference.py", str(tmp_path / "run" / "latest.pt"), "--prompt",
                        "def", "--max_new_tokens", "5", "--seed", "0", cwd=moved.parent)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--vocab_size", "100"], "at least 257"),
    (["--data", "nope"], "unknown data source"),
    (["--max_chars", "0"], "--max_chars"),
])
def test_train_tokenizer_bad_input(tmp_path, args, fragment):
    base = {"--data": "pydocs", "--out": str(tmp_path / "tok"), "--vocab_size": "300"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    flat = [item for pair in base.items() for item in pair]
    assert_one_line_error(run_script("tokenization/train_tokenizer.py", *flat, cwd=tmp_path),
                          fragment)


def test_bad_tokenizer_folders_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        get_tokenizer(str(tmp_path))
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(TokenizerError, match="not a usable byte-level BPE"):
        get_tokenizer(str(tmp_path))
    byte_tokenizer().save(tmp_path / "ok")
    spec = json.loads((tmp_path / "ok" / "tokenizer.json").read_text())
    spec["added_tokens"] = []
    (tmp_path / "ok" / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="no <|endoftext|>"):
        get_tokenizer(str(tmp_path / "ok"))


def test_missing_tokenizer_folder_on_the_command_line(tmp_path):
    result = run_script("models/gpt.py", "--preset", "tiny", "--tokenizer",
                        str(tmp_path / "no-such-folder"), "--out_dir", str(tmp_path / "o"),
                        cwd=tmp_path)
    assert_one_line_error(result, "unknown tokenizer")
