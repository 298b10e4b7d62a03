"""Perplexity, loss and bits per byte of a model on held-out text, by sliding window.

    python evaluation/eval_perplexity.py out/tiny/best_model.pt --data pydocs
    python evaluation/eval_perplexity.py out/hf-tiny --data ../shared/fixtures/wikitext-2/test.txt
    python evaluation/eval_perplexity.py CKPT                      # WikiText-103 test (online)

The text (documents of the split, each after <|endoftext|>, as in training) is read through
windows of the model's context that advance by --stride tokens. Every token is scored exactly
once: the first window scores all its tokens, each later window only the tokens past the previous
window's end, each with up to a full context of history before it. A smaller stride gives each
token more history and costs more windows.

Bits per byte (total nats / ln 2 / bytes of the text scored) compares models with different
tokenizers; perplexity (exp of the mean loss per token) only models with the same tokenizer.

What is scored, named in the output and in --json's "text":
- "cleaned" (default): the documents as training reads them, after data.clean_text (WikiText's
  " @-@ " joined, whitespace trimmed: about 1.3% fewer bytes than the file);
- "raw" (--raw): the text as stored, the bytes of a .txt file as they are, each row's text of a
  jsonl, parquet or Hub dataset (WikiText-103's lines joined into its articles);
- "raw+wikitext-detokenized" (--detokenize): the raw text through the detokenizer of
  lm-evaluation-harness's `wikitext` task.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from data.sources import (
    FileSource,
    Source,
    add_source_arguments,
    local_files,
    source_from_args,
    wikitext_articles,
)
from transformer_setup.cli import ArgumentParser, UserError, positive_int, run_main

if TYPE_CHECKING:
    from tokenization.tokenizer import Tokenizer
    from transformer_setup.transformer import GPT

# torch is imported where it is used: --help and mistakes answer before seconds of imports.


@dataclass
class Score:
    loss: float  # mean nats per scored token
    perplexity: float
    bits_per_byte: float
    tokens: int
    bytes: int


def windows(n_tokens: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, first_scored) of each window: targets first_scored..end-1 are scored.

    Position t of the stream is predicted from positions before it, so the very first token is
    never a target; every other token is a target of exactly one window."""
    scored_until = 1
    begin = 0
    while scored_until < n_tokens:
        end = min(begin + context + 1, n_tokens)  # context inputs predict context targets
        yield begin, end, scored_until
        scored_until = end
        begin += stride


def score_tokens(model: GPT, tokens: list[int], byte_lengths: list[int], stride: int,
                 batch_size: int = 8, ctx=None, progress: bool = False) -> Score:
    """Sliding-window scoring of one token stream."""
    import torch

    with torch.no_grad():
        return _score(model, tokens, byte_lengths, stride, batch_size, ctx, progress)


def _score(model: GPT, tokens: list[int], byte_lengths: list[int], stride: int,
           batch_size: int, ctx, progress: bool) -> Score:
    import torch
    import torch.nn.functional as F

    context = model.config.block_size
    if not 0 < stride <= context:
        raise UserError(f"--stride must be between 1 and the context ({context}); got {stride}")
    device = model.tok_emb.weight.device
    stream = torch.tensor(tokens, dtype=torch.long)
    lengths = torch.tensor(byte_lengths, dtype=torch.float64)
    nats, n_tokens, n_bytes = 0.0, 0, 0.0
    spans = list(windows(len(tokens), context, stride))
    for i in tqdm(range(0, len(spans), batch_size), desc="scoring", unit="batch",
                  disable=None if progress else True):
        group = spans[i:i + batch_size]
        width = max(end - begin for begin, end, _ in group) - 1
        x = torch.zeros(len(group), width, dtype=torch.long)
        y = torch.full((len(group), width), -1, dtype=torch.long)  # -1: not scored
        for row, (begin, end, first) in enumerate(group):
            x[row, :end - begin - 1] = stream[begin:end - 1]
            keep = slice(first - begin - 1, end - begin - 1)  # targets first..end-1
            y[row, keep] = stream[first:end]
        with ctx if ctx is not None else torch.autocast(device.type, enabled=False):
            logits = model(x.to(device))
        losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                 y.to(device).reshape(-1), ignore_index=-1, reduction="none")
        scored = y.reshape(-1) >= 0
        nats += losses[scored.to(device)].double().sum().item()
        n_tokens += int(scored.sum())
        n_bytes += lengths[y.reshape(-1)[scored]].sum().item()
    loss = nats / max(n_tokens, 1)
    return Score(loss=loss, perplexity=math.exp(loss),
                 bits_per_byte=nats / math.log(2) / max(n_bytes, 1.0), tokens=n_tokens,
                 bytes=int(n_bytes))


def default_split(spec: str, source: Source) -> str:
    """Local files are scored whole; named datasets on their test split where they have one."""
    if source.local:
        return "all"
    return "test" if spec == "wikitext-103" else "val"


# WikiText's tokenization undone, as lm-evaluation-harness's `wikitext` task does it
# (lm_eval/tasks/wikitext/preprocess_wikitext.py): each rule in its order; (regex, replacement)
# where the first item is compiled, else a plain substring replacement.
WIKITEXT_DETOKENIZE_RULES: tuple[tuple[str | re.Pattern, str], ...] = (
    ("s '", "s'"), (re.compile(r"/' [0-9]/"), r"/'[0-9]/"),  # contractions (as the harness)
    (" @-@ ", "-"), (" @,@ ", ","), (" @.@ ", "."),  # number separators
    (" : ", ": "), (" ; ", "; "), (" . ", ". "), (" ! ", "! "), (" ? ", "? "), (" , ", ", "),
    (re.compile(r"\(\s*([^\)]*?)\s*\)"), r"(\1)"),  # no spaces inside brackets and quotes
    (re.compile(r"\[\s*([^\]]*?)\s*\]"), r"[\1]"),
    (re.compile(r"{\s*([^}]*?)\s*}"), r"{\1}"),
    (re.compile(r"\"\s*([^\"]*?)\s*\""), r'"\1"'),
    (re.compile(r"'\s*([^']*?)\s*'"), r"'\1'"),
    ("= = = =", "===="), ("= = =", "==="), ("= =", "=="),  # headings
    (" \u00b0 ", "\u00b0"), (" \n", "\n"), ("\n ", "\n"), (" N ", " 1 "), (" 's", "'s"),
)


def wikitext_detokenize(text: str) -> str:
    for pattern, replacement in WIKITEXT_DETOKENIZE_RULES:
        text = pattern.sub(replacement, text) if isinstance(pattern, re.Pattern) else \
            text.replace(pattern, replacement)
    return text


def raw_documents(source: Source, spec: str, split: str) -> Iterator[str]:
    """The split's documents as stored, without data.clean_text: a local .txt file's bytes as
    they are (scored whole), each row's text of jsonl, parquet and Hub data."""
    files = local_files(spec) if source.local else None
    if files and files[0].suffix == ".txt":
        if split != "all":
            raise UserError(f"--raw scores the files of {spec} whole; leave out --split {split}")
        yield from (_utf8(path) for path in files)
        return
    if not isinstance(source, FileSource):
        raise UserError(f"--raw reads files and Hub datasets; {spec} is generated text, "
                        "score it without --raw")
    texts = (row[source.text_field] for row in source.rows(split)
             if isinstance(row.get(source.text_field), str))
    yield from wikitext_articles(texts) if source.articles else texts


def _utf8(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")  # not read_text: it would rewrite \r\n
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); --raw scores text as "
                        "it is, so it cannot replace the invalid bytes") from None


TEXT_KINDS = {(False, False): "cleaned", (True, False): "raw",
              (True, True): "raw+wikitext-detokenized"}


def documents_to_score(source: Source, spec: str, split: str, raw: bool,
                       detokenize: bool) -> Iterator[str]:
    if not raw:
        yield from source.documents(split)
        return
    for text in raw_documents(source, spec, split):
        if text:  # an empty row is no document
            yield wikitext_detokenize(text) if detokenize else text


def text_tokens(documents: Iterable[str], tokenizer: Tokenizer, max_tokens: int | None,
                progress: bool = False) -> list[int]:
    """The documents as one stream, <|endoftext|> before each, as training reads them."""
    tokens: list[int] = []
    for text in tqdm(documents, desc="reading", unit="doc", disable=None if progress else True):
        tokens += [tokenizer.eot_id, *tokenizer.encode(text)]
        if max_tokens is not None and len(tokens) >= max_tokens:
            return tokens[:max_tokens]
    return tokens


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Sliding-window perplexity and bits per byte.")
    parser.add_argument("checkpoint", help="a .pt checkpoint or a transformers model folder")
    parser.add_argument("--data", default="wikitext-103", help="any source of the data layer")
    parser.add_argument("--split", default=None, help="train | val | test | all (default: "
                        "the whole of local files, else test where it exists, else val)")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help="tokens between windows (default: half the context)")
    parser.add_argument("--max_tokens", type=positive_int, default=None,
                        help="score at most this many")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="windows per forward pass")
    parser.add_argument("--raw", action="store_true",
                        help="score the text as stored, not cleaned as training reads it")
    parser.add_argument("--detokenize", action="store_true",
                        help="WikiText: undo its tokenization as lm-evaluation-harness's "
                             "wikitext task does (implies --raw)")
    add_source_arguments(parser)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="fp32", help="auto | bf16 | fp16 | fp32")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.max_tokens is not None and args.max_tokens < 2:
        parser.error("--max_tokens must be at least 2")
    from models.checkpoint import load_model
    from models.device import autocast, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    ctx = autocast(device, resolve_dtype(args.dtype, device))
    model, tokenizer = load_model(args.checkpoint, device)
    source = source_from_args(args)
    split = args.split or default_split(args.data, source)
    raw = args.raw or args.detokenize
    text = TEXT_KINDS[raw, args.detokenize]
    documents = documents_to_score(source, args.data, split, raw, args.detokenize)
    tokens = text_tokens(documents, tokenizer, args.max_tokens, progress=not args.json)
    if len(tokens) < 2:
        raise UserError(f"{args.data} ({split}) has no text to score")
    stride = args.stride or max(1, model.config.block_size // 2)
    score = score_tokens(model, tokens, tokenizer.token_byte_lengths(), stride, args.batch_size,
                         ctx, progress=not args.json)
    result = {"checkpoint": str(args.checkpoint), "data": args.data, "split": split,
              "text": text, "stride": stride, "context": model.config.block_size,
              **asdict(score)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.data} ({split}, {text} text): {score.tokens:,} tokens, {score.bytes:,} bytes, "
          f"context {model.config.block_size}, stride {stride}")
    print(f"loss {score.loss:.4f} | perplexity {score.perplexity:.3f} | "
          f"bits per byte {score.bits_per_byte:.4f}")


if __name__ == "__main__":
    run_main(main)
