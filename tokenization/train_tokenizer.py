"""Train a GPT-2-style byte-level BPE vocabulary on your own text.

    python tokenization/train_tokenizer.py --data pydocs --vocab_size 8000 --out out/tok-pydocs-8k
    python tokenization/train_tokenizer.py --data fineweb-edu --out tok/fineweb-52k  # 52,000 ids

The text is a sample across the whole source: its training units (parquet row groups, byte
ranges of text files, documents) in a seeded random order, read until --max_chars characters
(default 1e9, enough for 52,000 ids; see tokenization/README.md for the memory and time it
takes). All of it is read before training starts, so a read error or Ctrl-C stops the script
with one line before any merge is computed; Ctrl-C during training stops it at once too.

The merges are learned by the Rust trainer of the `tokenizers` library, after GPT-2's
pre-tokenization (its regex, on bytes). The folder holds transformers' files (tokenizer.json,
tokenizer_config.json), so `AutoTokenizer.from_pretrained(DIR)` loads it, and `--tokenizer DIR`
trains with it; both give the same ids, and ours encode through tiktoken at GPT-2's speed.
"""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tqdm import tqdm

from data.sources import Source, add_source_arguments, source_from_args
from tokenization.tokenizer import EOT, GPT2_PATTERN, Tokenizer, TokenizerError, byte_decoder
from transformer_setup.cli import ArgumentParser, UserError, positive_int, run_main

MIN_VOCAB = 256 + 1  # every byte, plus <|endoftext|>
# Characters of text to learn from, sized for 52,000 ids: by Zipf's law the word ranked 40,000th
# in English occurs a few times per million words, so in 1e9 characters (~200M words) the last
# merges are counted hundreds of times. Memory and time: tokenization/README.md.
DEFAULT_MAX_CHARS = 1_000_000_000
T = TypeVar("T")


def sample_text(source: Source, max_chars: int, seed: int,
                progress: tqdm) -> tuple[list[bytes], int]:
    """Documents of the source's training units, the units in a seeded random order, until
    max_chars characters (the last document cut to fit): a sample of every part of the source,
    not its first files. Kept as UTF-8, one byte per character of English text. Returns them
    and the characters read."""
    units = source.units("train")
    texts, chars = [], 0
    for index in random.Random(seed).sample(range(len(units)), len(units)):
        unit = units[index]
        for text in (t for piece in range(unit.pieces) for t in source.read(unit, piece)):
            text = text[:max_chars - chars]
            texts.append(text.encode("utf-8", errors="replace"))
            chars += len(text)
            progress.update(len(text))
            if chars >= max_chars:
                return texts, chars
    return texts, chars


def handed_over(texts: list[bytes]) -> Iterator[str]:
    """Each text once, in order, dropped as the trainer takes it: the trainer's word counts
    grow while the text shrinks, so the two do not add up."""
    texts.reverse()
    while texts:
        yield texts.pop().decode("utf-8")


def train_bpe(documents: Iterator[str], vocab_size: int, min_frequency: int = 2,
              show_progress: bool = False) -> Tokenizer:
    """Learn vocab_size - 1 byte-level tokens, then <|endoftext|> as the last id."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as RustTokenizer

    if vocab_size < MIN_VOCAB:
        raise TokenizerError(f"--vocab_size must be at least {MIN_VOCAB} "
                             f"(256 bytes + {EOT}); got {vocab_size}")
    bpe = RustTokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[], show_progress=show_progress)
    bpe.train_from_iterator(documents, trainer)
    # The trainer numbers the 256 byte symbols 0-255, then each merge in the order learned:
    # exactly tiktoken's ranks.
    to_byte = byte_decoder()
    ranks = {bytes(to_byte[c] for c in token): rank for token, rank in bpe.get_vocab().items()}
    return Tokenizer("bpe", ranks, {EOT: len(ranks)}, GPT2_PATTERN)


def interruptible(work: Callable[[], T]) -> T:
    """work() in a thread while this one waits: the Rust trainer never looks at signals, so
    called directly it would finish its merges before Ctrl-C could stop the script."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as err:  # raised again below, in the main thread
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)  # a daemon does not delay the exit
    thread.start()
    while thread.is_alive():
        thread.join(0.2)  # Ctrl-C raises KeyboardInterrupt here, in the main thread
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def peak_memory_gb() -> float | None:
    """This process's peak resident memory, where the platform reports it."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e9 if sys.platform == "darwin" else peak * 1024 / 1e9  # bytes / KiB


def check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace the "
                        "tokenizer in it, or choose another folder")


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Train a byte-level BPE tokenizer (GPT-2 style).")
    parser.add_argument("--data", required=True,
                        help="a data source: pydocs, a local path or glob, a dataset name")
    parser.add_argument("--vocab_size", type=positive_int, default=52_000,
                        help="ids in the vocabulary, <|endoftext|> included (default 52,000)")
    parser.add_argument("--out", required=True, help="folder to write the tokenizer into")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the tokenizer in an existing --out folder")
    parser.add_argument("--max_chars", type=positive_int, default=DEFAULT_MAX_CHARS,
                        help="characters of text to sample across the source (default 1e9; "
                             "the whole source if smaller)")
    parser.add_argument("--seed", type=int, default=0,
                        help="the order in which the source's units are sampled")
    parser.add_argument("--min_frequency", type=positive_int, default=2,
                        help="a pair must occur this often to be merged")
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    if args.vocab_size < MIN_VOCAB:
        parser.error(f"--vocab_size must be at least {MIN_VOCAB} (256 bytes + {EOT})")
    check_out(Path(args.out), args.overwrite)

    source = source_from_args(args)
    with tqdm(total=args.max_chars, desc="reading text", unit="char", unit_scale=True,
              disable=None) as progress:
        texts, chars_read = sample_text(source, args.max_chars, args.seed, progress)
    if chars_read == 0:
        raise TokenizerError(f"source {args.data!r} gave no text to train on")
    print(f"read {chars_read:,} characters; learning {args.vocab_size:,} ids", file=sys.stderr)
    tokenizer = interruptible(lambda: train_bpe(
        handed_over(texts), args.vocab_size, args.min_frequency,
        show_progress=not progress.disable))
    tokenizer.save(args.out)
    sample = "Tokenizers turn text into integers."
    print(f"trained on {chars_read:,} characters: {tokenizer.n_vocab:,} ids, "
          f"{EOT} = {tokenizer.eot_id}; written to {args.out}")
    if tokenizer.n_vocab < args.vocab_size:
        print(f"note: the text supports only {tokenizer.n_vocab:,} ids (no pair left that occurs "
              f"{args.min_frequency}+ times); give more text for {args.vocab_size:,}")
    peak = peak_memory_gb()
    if peak is not None:
        print(f"peak memory: {peak:.2f} GB")
    print(f"{sample!r} -> {tokenizer.encode(sample)}")


if __name__ == "__main__":
    run_main(main)
