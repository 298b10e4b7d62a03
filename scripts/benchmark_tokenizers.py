"""Encode throughput: our tokenizers (tiktoken) against Hugging Face `tokenizers`, same vocabulary.

    python scripts/benchmark_tokenizers.py                       # gpt2 and a trained 52k vocab
    python scripts/benchmark_tokenizers.py --tokenizer gpt2 --json
    python scripts/benchmark_tokenizers.py --readable             # the readable BPE, long words

Both sides encode the same documents as a batch and must produce the same ids. "1 thread" runs
tiktoken with num_threads=1 and `tokenizers` with TOKENIZERS_PARALLELISM=false; "all threads"
uses every core for both. The best of --repeat runs is reported.

--readable times instead the plain-Python BPE of tokenization/custom_tokenizer on one word of N
random letters, with GPT-2's merges (--tokenizer, default gpt2), against tiktoken: how its time
grows with the length of a chunk.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from data.sources import get_source
from tokenization.custom_tokenizer import BytePairEncoding
from tokenization.tokenizer import Tokenizer, get_tokenizer
from tokenization.train_tokenizer import train_bpe
from transformer_setup.cli import ArgumentParser, positive_int, run_main

FIXTURE_TEXT = Path(__file__).resolve().parents[2] / "shared/fixtures/wikitext-2/test.txt"


def benchmark_documents(max_chars: int) -> list[str]:
    """Real English: WikiText-2 paragraphs where the fixture exists, plus pydocs' documents."""
    docs: list[str] = []
    if FIXTURE_TEXT.exists():
        docs += [p for p in FIXTURE_TEXT.read_text(encoding="utf-8").split("\n \n") if p.strip()]
    docs += list(get_source("pydocs").documents("train"))
    out, total = [], 0
    for doc in docs:
        if total >= max_chars:
            break
        out.append(doc[:max_chars - total])
        total += len(out[-1])
    return out


def best_seconds(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure(tokenizer: Tokenizer, docs: list[str], repeat: int) -> list[dict]:
    from tokenizers import Tokenizer as RustTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        rust = RustTokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
    ours_ids = tokenizer.encode_batch(docs, num_threads=1)
    theirs_ids = [e.ids for e in rust.encode_batch(docs, add_special_tokens=False)]
    if ours_ids != theirs_ids:
        raise RuntimeError(f"{tokenizer.name}: the two libraries disagree on the ids")
    n_tokens = sum(map(len, ours_ids))
    cores = os.cpu_count() or 1
    rows = []
    for threads in (1, cores):
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads > 1 else "false"
        ours = best_seconds(lambda t=threads: tokenizer.encode_batch(docs, num_threads=t), repeat)
        theirs = best_seconds(lambda: rust.encode_batch(docs, add_special_tokens=False), repeat)
        rows.append({"tokenizer": tokenizer.name, "vocab": tokenizer.n_vocab, "threads": threads,
                     "tokens": n_tokens, "ours_tokens_per_s": n_tokens / ours,
                     "tokenizers_tokens_per_s": n_tokens / theirs, "speedup": theirs / ours})
    return rows


def readable_rows(tokenizer: Tokenizer, lengths: list[int], repeat: int) -> list[dict]:
    """Seconds to encode one word of n random letters: the readable BPE against tiktoken."""
    readable = BytePairEncoding.from_ranks(tokenizer.ranks, tokenizer.special_tokens,
                                           tokenizer.pattern)
    rows = []
    for n in lengths:
        letters = random.Random(n)
        word = "".join(letters.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
        if readable.encode(word) != tokenizer.encode(word):
            raise RuntimeError(f"the readable BPE and tiktoken disagree on {n} letters")
        # A word encodes once per measurement: a fresh copy has an empty cache.
        fresh = [BytePairEncoding(readable.merges, readable.special_tokens, readable.pattern,
                                  readable.byte_ids) for _ in range(repeat)]
        readable_s = best_seconds(lambda w=word, f=fresh: f.pop().encode(w), repeat)
        tiktoken_s = best_seconds(lambda w=word: tokenizer.encode(w), repeat)
        rows.append({"tokenizer": tokenizer.name, "letters": n, "readable_s": readable_s,
                     "tiktoken_s": tiktoken_s})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", action="append",
                        help="gpt2, bytes or a folder (repeatable); default: gpt2 and a "
                             "52k vocabulary trained here")
    parser.add_argument("--max_chars", type=positive_int, default=3_000_000)
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument("--readable", action="store_true",
                        help="time the readable BPE on long words instead")
    parser.add_argument("--letters", type=positive_int, nargs="+",
                        default=[1_000, 4_000, 16_000, 64_000],
                        help="word lengths for --readable")
    args = parser.parse_args(argv)
    if args.readable:
        tokenizer = get_tokenizer((args.tokenizer or ["gpt2"])[0])
        rows = readable_rows(tokenizer, args.letters, args.repeat)
        print(json.dumps(rows, indent=2) if args.json else "\n".join(
            f"{r['letters']:>8,} letters: readable {r['readable_s']:.4f} s, "
            f"tiktoken {r['tiktoken_s']:.4f} s" for r in rows))
        return
    docs = benchmark_documents(args.max_chars)
    tokenizers = [get_tokenizer(name) for name in args.tokenizer or ["gpt2"]]
    if not args.tokenizer:
        trained = train_bpe(iter(docs), 52_000, min_frequency=1)
        trained.name = f"trained-{trained.n_vocab // 1000}k"
        tokenizers.append(trained)
    rows = [row for tok in tokenizers for row in measure(tok, docs, args.repeat)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{sum(map(len, docs)):,} characters in {len(docs):,} documents")
    print(f"{'tokenizer':<14}{'vocab':>8}{'threads':>9}{'ours tok/s':>14}"
          f"{'tokenizers tok/s':>18}{'ours / theirs':>15}")
    for r in rows:
        print(f"{r['tokenizer']:<14}{r['vocab']:>8,}{r['threads']:>9}"
              f"{r['ours_tokens_per_s']:>14,.0f}{r['tokenizers_tokens_per_s']:>18,.0f}"
              f"{r['speedup']:>14.2f}x")


if __name__ == "__main__":
    run_main(main)
