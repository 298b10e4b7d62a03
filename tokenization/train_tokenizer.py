"""Train a GPT-2-style byte-level BPE vocabulary on your own text.

    python tokenization/train_tokenizer.py --data pydocs --vocab_size 8000 --out out/tok-pydocs-8k
    python tokenization/train_tokenizer.py --data "corpus/*.txt" --out tok/mine   # 52,000 ids

The merges are learned by the Rust trainer of the `tokenizers` library, after GPT-2's
pre-tokenization (its regex, on bytes). The folder holds transformers' files (tokenizer.json,
tokenizer_config.json), so `AutoTokenizer.from_pretrained(DIR)` loads it, and `--tokenizer DIR`
trains with it; both give the same ids, and ours encode through tiktoken at GPT-2's speed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from data.sources import add_source_arguments, source_from_args
from tokenization.tokenizer import EOT, GPT2_PATTERN, Tokenizer, TokenizerError, byte_decoder
from transformer_setup.cli import ArgumentParser, positive_int, run_main

MIN_VOCAB = 256 + 1  # every byte, plus <|endoftext|>


class LimitedText:
    """Documents until max_chars characters have been read (the last one cut to fit),
    counting what was read."""

    def __init__(self, documents: Iterator[str], max_chars: int | None, progress: tqdm) -> None:
        self.documents, self.max_chars, self.progress = documents, max_chars, progress
        self.chars_read = 0

    def __iter__(self) -> Iterator[str]:
        for text in self.documents:
            if self.max_chars is not None:
                text = text[:self.max_chars - self.chars_read]
            self.chars_read += len(text)
            self.progress.update(len(text))
            yield text
            if self.max_chars is not None and self.chars_read >= self.max_chars:
                return


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


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Train a byte-level BPE tokenizer (GPT-2 style).")
    parser.add_argument("--data", required=True,
                        help="a data source: pydocs, a local path or glob, a dataset name")
    parser.add_argument("--vocab_size", type=positive_int, default=52_000,
                        help="ids in the vocabulary, <|endoftext|> included (default 52,000)")
    parser.add_argument("--out", required=True, help="folder to write the tokenizer into")
    parser.add_argument("--max_chars", type=positive_int, default=None,
                        help="stop reading after this many characters (default: all)")
    parser.add_argument("--min_frequency", type=positive_int, default=2,
                        help="a pair must occur this often to be merged")
    add_source_arguments(parser)
    args = parser.parse_args(argv)
    if args.vocab_size < MIN_VOCAB:
        parser.error(f"--vocab_size must be at least {MIN_VOCAB} (256 bytes + {EOT})")

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder")
    source = source_from_args(args)
    with tqdm(desc="reading text", unit="char", unit_scale=True, disable=None) as progress:
        text = LimitedText(source.documents("train"), args.max_chars, progress)
        tokenizer = train_bpe(iter(text), args.vocab_size, args.min_frequency,
                              show_progress=not progress.disable)
    chars_read = text.chars_read
    if chars_read == 0:
        raise TokenizerError(f"source {args.data!r} gave no text to train on")
    tokenizer.save(args.out)
    sample = "Tokenizers turn text into integers."
    print(f"trained on {chars_read:,} characters: {tokenizer.n_vocab:,} ids, "
          f"{EOT} = {tokenizer.eot_id}; written to {args.out}")
    if tokenizer.n_vocab < args.vocab_size:
        print(f"note: the text supports only {tokenizer.n_vocab:,} ids (no pair left that occurs "
              f"{args.min_frequency}+ times); give more text for {args.vocab_size:,}")
    print(f"{sample!r} -> {tokenizer.encode(sample)}")


if __name__ == "__main__":
    run_main(main)
