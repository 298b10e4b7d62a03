"""Tokenizer folders made elsewhere: loaded only when we give the ids `tokenizers` gives."""

import json

import pytest
from tokenizers import Tokenizer as RustTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer

from tests.helpers import FIXTURES, assert_one_line_error, run_script
from tokenization.tokenizer import EOT, Tokenizer, TokenizerError, get_tokenizer

TEXT = (FIXTURES / "wikitext-2" / "valid.txt")


def text() -> str:
    if not TEXT.exists():
        pytest.skip(f"fixture {TEXT} is absent")
    return TEXT.read_text(encoding="utf-8")[:300_000]


def bpe_folder(folder, trainer_specials=(), normalizer=None, add_prefix_space=False,
               post_processor=None, added=()):
    """The usual `tokenizers` recipe: ByteLevel BPE trained on WikiText-2, <|endoftext|> added
    after training unless trainer_specials puts special tokens first."""
    bpe = RustTokenizer(models.BPE())
    if normalizer:
        bpe.normalizer = normalizer
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    bpe.decoder = decoders.ByteLevel()
    if post_processor:
        bpe.post_processor = post_processor
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=list(trainer_specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    bpe.train_from_iterator(text().split("\n \n"), trainer)
    if EOT not in trainer_specials:
        bpe.add_special_tokens([EOT])
    if added:
        bpe.add_tokens(list(added))
    folder.mkdir()
    bpe.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize("post_processor", [None, processors.TemplateProcessing(single="$A")])
def test_a_folder_we_reproduce_loads_with_the_ids_of_tokenizers(tmp_path, post_processor):
    """The usual recipe; and with the template of the text alone that transformers 5 writes."""
    folder = bpe_folder(tmp_path / "plain", post_processor=post_processor)
    ours = get_tokenizer(str(folder))
    theirs = RustTokenizer.from_file(str(folder / "tokenizer.json"))
    sample = text()[:100_000]
    assert ours.encode(sample) == theirs.encode(sample, add_special_tokens=False).ids
    assert (ours.n_vocab, ours.eot_id) == (501, 500)  # the trainer's 500, then ours


@pytest.mark.parametrize("options, what", [
    (dict(normalizer=normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])),
     "normalizer (NFKC+Lowercase)"),
    (dict(add_prefix_space=True), "add_prefix_space"),
    (dict(trainer_specials=[EOT]), f"{EOT} = 0"),
    (dict(added=["hello"]), "added tokens that are not special (hello)"),
    (dict(post_processor=processors.TemplateProcessing(single=f"{EOT} $A",
                                                       special_tokens=[(EOT, 0)])),
     "post-processor (TemplateProcessing)"),
])
def test_a_folder_we_do_not_reproduce_is_refused_naming_what(tmp_path, options, what):
    folder = bpe_folder(tmp_path / "theirs", **options)
    with pytest.raises(TokenizerError, match="we load only|do not implement") as err:
        get_tokenizer(str(folder))
    assert what in str(err.value) and "\n" not in str(err.value)


def test_a_normalizer_folder_is_one_line_on_the_command_line(tmp_path):
    folder = bpe_folder(tmp_path / "nfkc", normalizer=normalizers.NFKC())
    result = run_script("models/gpt.py", "--preset", "tiny", "--tokenizer", str(folder),
                        "--max_iters", "1", "--out_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert_one_line_error(result, "normalizer (NFKC)")


def test_what_slips_past_the_checks_is_caught_by_the_probe(tmp_path):
    """Merges listed in another order than the ids: tokenizers follows the list, tiktoken the
    ids. Nothing in the file's structure says so; the probe strings do."""
    folder = bpe_folder(tmp_path / "reordered")
    spec = json.loads((folder / "tokenizer.json").read_text())
    spec["model"]["merges"].reverse()
    (folder / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(TokenizerError, match="the tokenizers library encodes .* we would as"):
        get_tokenizer(str(folder))


def test_special_tokens_outside_our_layout_are_refused_not_renumbered():
    ranks = {bytes([i]): i + 1 for i in range(256)}  # ids 1-256, <|endoftext|> = 0
    with pytest.raises(TokenizerError, match="<|endoftext|> = 0: a layout we do not implement"):
        Tokenizer("eot-first", ranks, {EOT: 0})


def test_save_keeps_the_id_of_every_special_token(tmp_path):
    """Special tokens given out of id order were numbered in the order given, one onto the
    other's id; save() must write the ids we encode with."""
    ranks = {bytes([i]): i for i in range(256)}
    tok = Tokenizer("two-specials", ranks, {EOT: 257, "<|pad|>": 256})
    tok.save(tmp_path / "saved")
    assert get_tokenizer(str(tmp_path / "saved")).special_tokens == {EOT: 257, "<|pad|>": 256}
    hf = AutoTokenizer.from_pretrained(tmp_path / "saved")
    assert hf.convert_tokens_to_ids([EOT, "<|pad|>"]) == [257, 256]


def test_gpt2s_own_tokenizer_json_loads_as_gpt2(gpt2_tiktoken_file, tmp_path):
    """GPT-2's tokenizer.json as the Hub has it (ByteLevel pre-tokenizer with its built-in regex,
    only the merges training chose, <|endoftext|> inside the vocabulary): the most common folder
    made elsewhere must still load, as gpt2."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    from tokenization.custom_tokenizer import BytePairEncoding
    from tokenization.tokenizer import tokenizer_from_tiktoken_file

    fast = tokenizer_from_tiktoken_file(gpt2_tiktoken_file, name="gpt2")
    readable = BytePairEncoding.from_ranks(fast.ranks, fast.special_tokens)
    chars = bytes_to_unicode()

    def spelled(token: bytes) -> str:
        return "".join(chars[b] for b in token)

    vocab = {spelled(token): rank for token, rank in fast.ranks.items()} | {EOT: 50256}
    merges = [(spelled(readable.vocab[a]), spelled(readable.vocab[b]))
              for (a, b), _ in sorted(readable.merges.items(), key=lambda item: item[1])]
    gpt2 = RustTokenizer(models.BPE(vocab, merges))
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    gpt2.post_processor = processors.ByteLevel(trim_offsets=False)
    gpt2.decoder = decoders.ByteLevel()
    gpt2.add_special_tokens([EOT])
    (tmp_path / "gpt2").mkdir()
    gpt2.save(str(tmp_path / "gpt2" / "tokenizer.json"))
    loaded = get_tokenizer(str(tmp_path / "gpt2"))
    assert loaded.name == "gpt2" and loaded.fingerprint() == fast.fingerprint()
