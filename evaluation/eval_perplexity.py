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
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from tqdm import tqdm

from data.sources import Source, add_source_arguments, source_from_args
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


def text_tokens(source: Source, split: str, tokenizer: Tokenizer,
                max_tokens: int | None, progress: bool = False) -> list[int]:
    """The split as one stream, <|endoftext|> before each document, as training reads it."""
    tokens: list[int] = []
    for text in tqdm(source.documents(split), desc="reading", unit="doc",
                     disable=None if progress else True):
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
    tokens = text_tokens(source, split, tokenizer, args.max_tokens, progress=not args.json)
    if len(tokens) < 2:
        raise UserError(f"{args.data} ({split}) has no text to score")
    stride = args.stride or max(1, model.config.block_size // 2)
    score = score_tokens(model, tokens, tokenizer.token_byte_lengths(), stride, args.batch_size,
                         ctx, progress=not args.json)
    result = {"checkpoint": str(args.checkpoint), "data": args.data, "split": split,
              "stride": stride, "context": model.config.block_size, **asdict(score)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.data} ({split}): {score.tokens:,} tokens, {score.bytes:,} bytes, context "
          f"{model.config.block_size}, stride {stride}")
    print(f"loss {score.loss:.4f} | perplexity {score.perplexity:.3f} | "
          f"bits per byte {score.bits_per_byte:.4f}")


if __name__ == "__main__":
    run_main(main)
