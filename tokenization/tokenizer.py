"""One tokenizer interface for the whole project.

Every tokenizer here is byte-level BPE run by tiktoken (Rust): a pre-tokenization regex, a table of
mergeable byte strings ranked by merge order, and special tokens. The kinds differ only in the
table:
- `gpt2`: GPT-2's 50,256 ranks plus <|endoftext|> = 50256;
- `bytes`: the 256 single bytes plus <|endoftext|> = 256 (no file needed);
- a `.tiktoken` file of ranks (GPT-2's pattern and <|endoftext|> after the last rank);
- a folder in transformers' format (`tokenizer.json`), as `train_tokenizer.py` and `save()` write,
  or one made elsewhere whose ids we reproduce exactly (anything else is refused by name).

`spec()` returns the whole table as plain values, so a checkpoint carries its tokenizer and needs
no file at inference time; `Tokenizer.from_spec` rebuilds it. `save(folder)` writes transformers'
format, whose `tokenizer.json` is converted from the ranks so that `AutoTokenizer` gives the same
ids as tiktoken does here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
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
        check_layout(name, ranks, special_tokens)
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
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes behind ids; an id that is not a token is a TokenizerError."""
        ids = list(ids)
        try:
            return self._encoding.decode_bytes(ids)
        except (KeyError, OverflowError):  # tiktoken's errors for ids it does not hold
            bad = next((i for i in ids if not 0 <= i < self.n_vocab), "?")
            raise TokenizerError(f"cannot decode id {bad}: tokenizer {self.name!r} has ids "
                                 f"0-{self.n_vocab - 1}") from None

    @property
    def ranks(self) -> dict[bytes, int]:
        """The mergeable tokens (every id but the special tokens) and their ids."""
        return dict(self._ranks)

    def token_byte_lengths(self) -> list[int]:
        """Bytes of text behind each id (0 for special tokens), for bits-per-byte."""
        lengths = [0] * self.n_vocab
        for token, rank in self._ranks.items():
            lengths[rank] = len(token)
        return lengths

    # ------------------------------------------------------------------ persistence

    def spec(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer, as plain values (checkpoint-safe)."""
        by_rank = sorted(self._ranks.items(), key=lambda item: item[1])  # 0..n-1: check_layout
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

    def fingerprint(self) -> str:
        """A hash of everything that decides the ids: equal fingerprints, equal encodings."""
        digest = hashlib.sha256(self.pattern.encode())
        for token, rank in sorted(self._ranks.items(), key=lambda item: item[1]):
            digest.update(rank.to_bytes(4, "little") + len(token).to_bytes(2, "little") + token)
        digest.update(json.dumps(self.special_tokens, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader and Pool workers
        return self.spec()

    def __setstate__(self, spec: dict[str, Any]) -> None:
        self.__init__(spec["name"], {t: r for r, t in enumerate(spec["ranks"])},
                      spec["special_tokens"], spec["pattern"])

    def save(self, directory: str | Path) -> None:
        """Write transformers' tokenizer files: AutoTokenizer.from_pretrained(directory) works and
        gives our ids, and get_tokenizer(directory) reads it back."""
        from transformers import PreTrainedTokenizerFast
        from transformers.convert_slow_tokenizer import TikTokenConverter

        # The converter numbers special tokens from the end of the vocabulary in the order given:
        # in id order, that is our layout (check_layout), and the check below proves it.
        specials = sorted(self.special_tokens, key=self.special_tokens.__getitem__)
        with tempfile.TemporaryDirectory() as tmp:
            ranks_file = Path(tmp) / "ranks.tiktoken"
            write_tiktoken_file(self._ranks, ranks_file)
            # Every split of a token into two tokens becomes a merge ranked by the token's rank,
            # and whole-word lookups come first (ignore_merges): tiktoken's algorithm, exactly.
            converted = TikTokenConverter(vocab_file=str(ranks_file), pattern=self.pattern,
                                          extra_special_tokens=specials).converted()
        renumbered = {t: converted.token_to_id(t) for t in specials
                      if converted.token_to_id(t) != self.special_tokens[t]}
        if renumbered:
            raise TokenizerError(f"saving tokenizer {self.name!r} would renumber its special "
                                 f"tokens ({renumbered}); nothing written")
        # <|endoftext|> also pads: batches in transformers need a pad token (the attention mask
        # hides it), and a new token would need an embedding row the model does not have.
        fast = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token=EOT, bos_token=EOT,
                                       unk_token=EOT, pad_token=EOT, model_max_length=None)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(directory))
        _name_a_class_every_version_knows(directory / "tokenizer_config.json")

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, n_vocab={self.n_vocab})"


def _name_a_class_every_version_knows(path: Path) -> None:
    """transformers 5 names its class TokenizersBackend, which 4.x cannot load;
    PreTrainedTokenizerFast reads tokenizer.json as it is in both."""
    config = json.loads(path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------- the kinds

def write_tiktoken_file(ranks: dict[bytes, int], path: str | Path) -> None:
    """tiktoken's rank file: `base64(token) rank` per line, in rank order."""
    lines = (f"{base64.b64encode(token).decode()} {rank}\n"
             for token, rank in sorted(ranks.items(), key=lambda item: item[1]))
    Path(path).write_text("".join(lines), encoding="ascii")


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


def byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes-to-printable-characters map used in tokenizer.json."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


# ---------------------------------------------------------------------- folders: only as they are

# A folder is loaded only if we give the ids the `tokenizers` library gives. The parts of a
# tokenizer.json that change ids or text and that tiktoken has no counterpart for are refused by
# name (_unsupported); then these strings, chosen to expose what slips past (casing, a word at
# the start, contractions, digits, whitespace runs, compatibility characters, other scripts,
# emoji), must encode the same in both (_probe).
PROBE_TEXTS = (
    "Hello World",
    "The year 2024: it's 3.14159, isn't it?  Yes!\n\n\tDone.\r\n",
    "don't I'LL WE'VE they'd",
    "naïve café Ünïcödé ﬁne ＡＢＣ ½ Ⅻ x²",
    "日本語のテキスト、中文和한국어 Ελληνικά русский عربى",
    "emoji 🙂👍🏽 zero\u200bwidth\u00a0nbsp   trailing   ",
    "def f(x):\n    return [x ** 2, {'a': 1}]  # comment\n",
)


def check_layout(name: str, ranks: dict[bytes, int], special_tokens: dict[str, int]) -> None:
    """Mergeable tokens take ids 0..n-1 and special tokens the ids right after: the layout that
    spec() stores and save() writes. Any other (`<|endoftext|>` at id 0, as
    BpeTrainer(special_tokens=[...]) numbers it) is refused rather than renumbered."""
    n = len(ranks)
    if sorted(special_tokens.values()) != list(range(n, n + len(special_tokens))):
        where = ", ".join(f"{token} = {i}" for token, i in special_tokens.items())
        hint = (" (add special tokens after training, not in BpeTrainer(special_tokens=...))"
                if min(special_tokens.values()) < n else "")
        raise TokenizerError(f"tokenizer {name!r}: special tokens must take the ids right after "
                             f"its {n:,} mergeable tokens (from {n:,}), here {where}: a layout we "
                             f"do not implement{hint}")
    if set(ranks.values()) != set(range(n)):
        raise TokenizerError(f"tokenizer {name!r}: its {n:,} mergeable tokens do not have the ids "
                             f"0-{n - 1:,} (gaps or repeats), a layout we do not implement")


def _types(component: dict | None) -> str:
    """The type of a tokenizer.json component, with the members of a Sequence."""
    if not component:
        return "none"
    members = component.get("normalizers") or component.get("pretokenizers") or \
        component.get("processors") or component.get("decoders")
    if component.get("type") == "Sequence" and members:
        return "+".join(_types(m) for m in members)
    return str(component.get("type"))


def _pattern_of(pre_tokenizer: dict | None) -> str:
    """The pre-tokenization regex of a byte-level tokenizer.json: GPT-2's own layout (ByteLevel
    with its built-in regex) or ours (a Split on a regex, then ByteLevel on the pieces)."""
    if not pre_tokenizer:
        raise ValueError("it has no pre-tokenizer")
    steps = pre_tokenizer.get("pretokenizers", []) if pre_tokenizer.get("type") == "Sequence" \
        else [pre_tokenizer]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return GPT2_PATTERN  # the same regex, spelled as tokenizers spells it
    if (len(steps) == 2 and steps[0].get("type") == "Split" and "Regex" in steps[0]["pattern"]
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert")
            and steps[1].get("type") == "ByteLevel" and not steps[1].get("use_regex", True)):
        return steps[0]["pattern"]["Regex"]
    raise ValueError(f"its pre-tokenizer ({_types(pre_tokenizer)}) is not one we reproduce "
                     "(ByteLevel, or Split on a regex then ByteLevel)")


def _adds_tokens(post_processor: dict | None) -> bool:
    """Whether a post-processor puts tokens around the text (ByteLevel and a template of the
    text alone, as transformers writes for GPT-2, add none)."""
    if not post_processor:
        return False
    kind = post_processor.get("type")
    if kind == "Sequence":
        return any(map(_adds_tokens, post_processor.get("processors", [])))
    if kind == "TemplateProcessing":
        return any("SpecialToken" in piece for piece in post_processor.get("single", []))
    return kind != "ByteLevel"


def _unsupported(spec: dict, config: dict) -> str | None:
    """What in a tokenizer.json (and tokenizer_config.json) we do not reproduce, or None."""
    model, pre_tokenizer = spec["model"], spec.get("pre_tokenizer") or {}
    if spec.get("normalizer"):
        return f"it has a normalizer ({_types(spec['normalizer'])}), which changes the text first"
    steps = pre_tokenizer.get("pretokenizers") or [pre_tokenizer]
    if any(step.get("type") == "ByteLevel" and step.get("add_prefix_space") for step in steps):
        return "its ByteLevel pre-tokenizer adds a space before the text (add_prefix_space)"
    if model.get("dropout"):
        return f"it uses BPE dropout ({model['dropout']})"
    for option in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(option):
            return f"its BPE has a {option} ({model[option]!r})"
    plain = [t["content"] for t in spec.get("added_tokens", []) if not t.get("special")]
    if plain:
        return f"it has added tokens that are not special ({', '.join(plain[:3])})"
    if _adds_tokens(spec.get("post_processor")):
        return f"its post-processor ({_types(spec['post_processor'])}) adds tokens to the text"
    if _types(spec.get("decoder")) != "ByteLevel":
        return f"its decoder ({_types(spec.get('decoder'))}) is not ByteLevel"
    for option in ("add_prefix_space", "add_bos_token", "add_eos_token"):
        if config.get(option):
            return f"its tokenizer_config.json sets {option}"
    return None


def _probe(tokenizer: Tokenizer, path: Path) -> None:
    """Refuse a folder whose ids on PROBE_TEXTS differ from the `tokenizers` library's."""
    from tokenizers import Tokenizer as RustTokenizer

    try:
        rust = RustTokenizer.from_file(str(path))
        rust.no_padding()  # batch settings of the file are not how text encodes
        rust.no_truncation()
        theirs = rust.encode_batch(list(PROBE_TEXTS), add_special_tokens=False)
    except Exception as err:  # tokenizers raises plain Exceptions
        raise TokenizerError(f"{path}: the tokenizers library cannot read it "
                             f"({str(err).splitlines()[0][:160]})") from None
    for text, encoding in zip(PROBE_TEXTS, theirs):
        ours = tokenizer.encode(text)
        if ours != encoding.ids:
            raise TokenizerError(f"{path}: the tokenizers library encodes {text!r} as "
                                 f"{encoding.ids}, we would as {ours}; we load only "
                                 "tokenizers we reproduce exactly")


KNOWN_FINGERPRINTS = {"6bcb0bd756b32ff5": "gpt2", "d40cb3cb9d79ea4f": "bytes"}


def tokenizer_from_folder(directory: str | Path) -> Tokenizer:
    """A byte-level BPE folder in transformers' format (tokenizer.json), as save() writes, or
    one made elsewhere that we reproduce exactly (GPT-2's own, a BpeTrainer of `tokenizers`
    with no special tokens in the trainer): anything else is one line saying what we lack."""
    directory = Path(directory)
    path = directory / "tokenizer.json"
    if not path.exists():
        raise TokenizerError(f"{directory} is not a tokenizer folder (no tokenizer.json); "
                             "train one with tokenization/train_tokenizer.py")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
        config_path = directory / "tokenizer_config.json"
        config = json.loads(config_path.read_text(encoding="utf-8")) \
            if config_path.exists() else {}
        model = spec["model"]
        if model.get("type") != "BPE":
            raise ValueError(f"its model is {model.get('type')}, not BPE")
        unsupported = _unsupported(spec, config)
        pattern = _pattern_of(spec.get("pre_tokenizer")) if not unsupported else ""
        special = {t["content"]: t["id"] for t in spec.get("added_tokens", []) if t["special"]}
        to_byte = byte_decoder()
        ranks = {bytes(to_byte[c] for c in token): rank for token, rank in model["vocab"].items()
                 if token not in special}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError) as err:
        raise TokenizerError(f"{path} is not a usable byte-level BPE tokenizer ({err})") from None
    if unsupported:
        raise TokenizerError(f"{path}: {unsupported}; we load only tokenizers we reproduce "
                             "exactly (train one with tokenization/train_tokenizer.py)")
    missing = 256 - sum(len(token) == 1 for token in ranks)
    if missing:
        raise TokenizerError(f"{path} has no token for {missing} of the 256 bytes, so some text "
                             "cannot be encoded (train with ByteLevel.alphabet())")
    if EOT not in special:
        raise TokenizerError(f"{path} has no {EOT} special token")
    tokenizer = Tokenizer(directory.resolve().name, ranks, special, pattern)
    _probe(tokenizer, path)
    # A folder holding one of the built-in vocabularies is called by its name, not the folder's.
    tokenizer.name = KNOWN_FINGERPRINTS.get(tokenizer.fingerprint(), tokenizer.name)
    return tokenizer


def get_tokenizer(name_or_path: str) -> Tokenizer:
    """`gpt2`, `bytes`, a tokenizer folder, or the path of a `.tiktoken` file."""
    if name_or_path == "gpt2":
        return gpt2_tokenizer()
    if name_or_path == "bytes":
        return byte_tokenizer()
    path = Path(name_or_path)
    if path.is_dir():
        return tokenizer_from_folder(path)
    if path.suffix == ".tiktoken" or path.is_file():
        return tokenizer_from_tiktoken_file(path)
    raise TokenizerError(f"unknown tokenizer {name_or_path!r}: use gpt2, bytes, a folder "
                         "written by tokenization/train_tokenizer.py, or a .tiktoken file")
