"""HellaSwag: pick the most likely of four endings for each context (Zellers et al., 2019).

    python evaluation/hellaswag.py out/gpt2/best_model.pt                   # validation, online
    python evaluation/hellaswag.py out/hf-tiny --data hellaswag_val.jsonl --limit 500

Each ending is scored by the sum of its tokens' log-probabilities after the context. `acc` takes
the highest sum; `acc_norm` divides each sum by the ending's length in characters first, as
lm-evaluation-harness does, so that long endings are not penalised for being long. Random
guessing scores 0.25.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from transformer_setup.cli import ArgumentParser, UserError, positive_int, run_main

if TYPE_CHECKING:
    from tokenization.tokenizer import Tokenizer
    from transformer_setup.transformer import GPT

# torch is imported where it is used: --help answers at once.

HUB_ID = "Rowan/hellaswag"


def preprocess(text: str) -> str:
    """HellaSwag's WikiHow artifacts out: " [title]" becomes ". ", bracketed tags go."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def examples(data: str) -> Iterator[dict]:
    """Rows in HellaSwag's format (ctx or ctx_a/ctx_b, endings, label), from jsonl or the Hub."""
    path = Path(data)
    if path.suffix in (".jsonl", ".json") or path.exists():
        if not path.is_file():
            raise UserError(f"file not found: {data}")
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        raise UserError(f"{data}:{number} is not JSON") from None
        return
    from data.sources import hub_source

    yield from hub_source(HUB_ID if data == "hellaswag" else data, text_field=None).rows("val")


def split_example(row: dict) -> tuple[str, list[str], int]:
    try:
        context = row["ctx"] if "ctx" in row else f"{row['ctx_a']} {row['ctx_b'].capitalize()}"
        endings, label = row["endings"], int(row["label"])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"a row is not in HellaSwag's format (missing {err})") from None
    return preprocess(context), [" " + preprocess(e) for e in endings], label


def ending_scores(model: GPT, tokenizer: Tokenizer, context: str, endings: list[str]
                  ) -> list[float]:
    """Sum of log-probabilities of each ending's tokens, given <|endoftext|> and the context."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        device = model.tok_emb.weight.device
        prefix = [tokenizer.eot_id, *tokenizer.encode(context)]
        rows = [prefix + tokenizer.encode(e) for e in endings]
        block = model.config.block_size
        rows = [r[-(block + 1):] for r in rows]  # keep the ending and as much context as fits
        width = max(map(len, rows))
        x = torch.zeros(len(rows), width - 1, dtype=torch.long)
        y = torch.full((len(rows), width - 1), -1, dtype=torch.long)
        for i, (row, ending) in enumerate(zip(rows, endings, strict=True)):
            n_ending = min(len(tokenizer.encode(ending)), len(row) - 1)
            x[i, :len(row) - 1] = torch.tensor(row[:-1])
            y[i, len(row) - 1 - n_ending:len(row) - 1] = torch.tensor(row[len(row) - n_ending:])
        logits = model(x.to(device)).float()
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.to(device).reshape(-1),
                                 ignore_index=-1, reduction="none").view(len(rows), -1)
        return (-losses.sum(dim=1)).tolist()


def evaluate(model: GPT, tokenizer: Tokenizer, rows: Iterator[dict], limit: int | None = None,
             progress: bool = False) -> dict[str, float]:
    correct = correct_norm = total = 0
    for row in tqdm(rows, total=limit, desc="hellaswag", disable=None if progress else True):
        if limit is not None and total >= limit:
            break
        context, endings, label = split_example(row)
        scores = ending_scores(model, tokenizer, context, endings)
        normalised = [s / len(e) for s, e in zip(scores, endings, strict=True)]
        correct += int(max(range(len(scores)), key=scores.__getitem__) == label)
        correct_norm += int(max(range(len(normalised)), key=normalised.__getitem__) == label)
        total += 1
    if total == 0:
        raise UserError("no examples to score")
    return {"acc": correct / total, "acc_norm": correct_norm / total, "examples": total}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="HellaSwag multiple-choice accuracy.")
    parser.add_argument("checkpoint", help="a .pt checkpoint or a transformers model folder")
    parser.add_argument("--data", default="hellaswag",
                        help="hellaswag (the Hub's validation split) or a local .jsonl file")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="score the first N examples")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from models.checkpoint import load_model
    from models.device import resolve_device

    model, tokenizer = load_model(args.checkpoint, resolve_device(args.device))
    result = evaluate(model, tokenizer, examples(args.data), args.limit, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return
    print(f"HellaSwag ({args.data}, {result['examples']} examples): acc {result['acc']:.4f} | "
          f"acc_norm {result['acc_norm']:.4f}")


if __name__ == "__main__":
    run_main(main)
