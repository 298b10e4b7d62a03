"""HellaSwag as lm-evaluation-harness 0.4 scores it: the examples, and each ending's
log-likelihood under our model. The functions that both `evaluation/hellaswag.py` (the command)
and training's in-loop HellaSwag (`--eval_hellaswag`, models/trainer.py) call, so the two give
the same numbers.

As the harness does (lm_eval/tasks/hellaswag/utils.py, lm_eval/api/task.py, lm_eval/api/model.py):
- the query is `preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())` and each
  choice `preprocess(ending)`, where preprocess strips, turns " [title]" into ". ", drops
  bracketed WikiHow tags and halves double spaces;
- each choice is scored as the continuation `" " + choice` of the query: the sum of its tokens'
  log-probabilities, its tokens being those of `query + continuation` past the query's own (with
  trailing spaces of the query moved to the continuation), with no <|endoftext|> before the query
  (the harness adds none to a non-empty context), truncated on the left to the model's context;
- `acc` takes the highest sum, `acc_norm` the highest sum divided by the choice's length in
  characters (without the space); ties go to the first choice.

Random guessing scores 0.25.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from transformer_setup.cli import UserError

if TYPE_CHECKING:
    from tokenization.tokenizer import Tokenizer
    from transformer_setup.transformer import GPT

# torch is imported where it is used: `hellaswag.py --help` answers at once.

HUB_ID = "Rowan/hellaswag"
FIELDS = ("activity_label", "ctx_a", "ctx_b", "endings", "label")


@dataclass(frozen=True)
class Example:
    query: str
    choices: tuple[str, ...]  # scored as " " + choice
    label: int


@dataclass(frozen=True)
class Scored:
    log_likelihoods: tuple[float, ...]  # of each choice, given the query
    acc: int  # 1 when the highest log-likelihood is the label's
    acc_norm: int  # 1 when the highest log-likelihood per character is the label's


def preprocess(text: str) -> str:
    """The harness's clean-up of HellaSwag's WikiHow artifacts."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def to_example(row: dict) -> Example:
    """A row in HellaSwag's format, as the harness's process_docs builds its document."""
    if not isinstance(row, dict):
        raise UserError(f"a row is not in HellaSwag's format (a JSON {type(row).__name__}, "
                        "not an object)")
    missing = [name for name in FIELDS if name not in row]
    if missing:
        raise UserError(f"a row is not in HellaSwag's format (missing {', '.join(missing)}; "
                        f"it needs {', '.join(FIELDS)})")
    try:
        label = int(row["label"])
        context = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        choices = tuple(preprocess(ending) for ending in row["endings"])
        query = preprocess(row["activity_label"] + ": " + context)
    except (TypeError, ValueError, AttributeError):
        raise UserError(f"a row is not in HellaSwag's format (label {row['label']!r}, "
                        "text fields must be strings, endings a list)") from None
    if not 0 <= label < len(choices):
        raise UserError(f"a row's label {label} is not one of its {len(choices)} endings")
    return Example(query, choices, label)


def read_rows(data: str) -> Iterator[dict]:
    """Rows from a jsonl file, or from the Hub's validation split."""
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
    from data.sources import DataError, hub_source

    try:
        source = hub_source(HUB_ID if data == "hellaswag" else data, text_field=None)
    except DataError as err:  # its advice is for training data: give this file's instead
        raise UserError(f"{str(err).split('; ')[0]}; a local copy of the validation split in "
                        "HellaSwag's format (hellaswag_val.jsonl) reads offline") from None
    yield from source.rows("val")


def load_examples(data: str = "hellaswag", limit: int | None = None) -> list[Example]:
    """The first `limit` examples (all without it), always the same ones in the same order."""
    examples = []
    for row in read_rows(data):
        if limit is not None and len(examples) >= limit:
            break
        examples.append(to_example(row))
    if not examples:
        raise UserError(f"{data} holds no examples")
    return examples


def spread(examples: Sequence[Example], n: int) -> list[Example]:
    """n of the examples spread evenly over them, in order (all of them if there are no more):
    a fixed subset that samples every part of the split, whatever its order, the same every
    time it is asked for."""
    if n >= len(examples):
        return list(examples)
    return [examples[i * len(examples) // n] for i in range(n)]


def fingerprint(examples: Sequence[Example]) -> str:
    """A short hash of the examples' text and labels: the same subset gives the same one."""
    text = json.dumps([[e.query, list(e.choices), e.label] for e in examples])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def encode_pair(tokenizer: Tokenizer, context: str, continuation: str
                ) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as the harness splits them: trailing spaces of the
    context join the continuation, and the continuation's tokens are those of the whole text
    past the context's, so that a merge across the boundary is tokenized as in running text."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]


def pick(values: Sequence[float]) -> int:
    """The index of the largest value, the first of equals, as numpy's argmax picks it (a NaN
    counts as the largest)."""
    import numpy as np

    return int(np.argmax(np.asarray(values, dtype=float)))


def judge(log_likelihoods: Sequence[float], example: Example) -> Scored:
    """acc and acc_norm as the harness computes them: log-likelihood over the choice's length
    in characters, in numpy (an empty choice divides by zero: -inf, or NaN for 0 / 0)."""
    import numpy as np

    lengths = np.array([len(choice) for choice in example.choices], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        normalised = np.asarray(log_likelihoods, dtype=float) / lengths
    return Scored(tuple(log_likelihoods), int(pick(log_likelihoods) == example.label),
                  int(pick(normalised) == example.label))


def score_examples(model: GPT, tokenizer: Tokenizer, examples: Sequence[Example],
                   batch_size: int = 8, ctx=None, progress: bool = False) -> list[Scored]:
    """Each example's choice log-likelihoods, acc and acc_norm: batch_size examples (all their
    choices) per forward pass. Sum acc and acc_norm over examples (and ranks) for the accuracy.
    `model` is our GPT itself, in eval mode (not a DDP or compiled wrapper)."""
    import torch

    scored: list[Scored] = []
    with torch.no_grad():
        for start in tqdm(range(0, len(examples), batch_size), desc="hellaswag", unit="batch",
                          disable=None if progress else True):
            batch = examples[start:start + batch_size]
            pairs = [encode_pair(tokenizer, e.query, " " + c) for e in batch for c in e.choices]
            sums = iter(_continuation_log_likelihoods(model, pairs, ctx))
            scored += [judge([next(sums) for _ in e.choices], e) for e in batch]
    return scored


def _continuation_log_likelihoods(model: GPT, pairs: list[tuple[list[int], list[int]]],
                                  ctx) -> list[float]:
    """Sum of log-probabilities of each continuation's tokens after its context."""
    import torch
    import torch.nn.functional as F

    device = model.tok_emb.weight.device
    block = model.config.block_size
    rows = [(c + x)[-(block + 1):] for c, x in pairs]  # the continuation, and what context fits
    width = max(map(len, rows)) - 1
    inputs = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.full((len(rows), width), -1, dtype=torch.long)  # -1: not scored
    for i, (row, (_, continuation)) in enumerate(zip(rows, pairs, strict=True)):
        n = min(len(continuation), len(row) - 1)
        inputs[i, :len(row) - 1] = torch.tensor(row[:-1])
        targets[i, len(row) - 1 - n:len(row) - 1] = torch.tensor(row[len(row) - n:])
    with ctx if ctx is not None else torch.autocast(device.type, enabled=False):
        logits = model(inputs.to(device))
    losses = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                             targets.to(device).reshape(-1), ignore_index=-1, reduction="none")
    return (-losses.view(len(rows), -1).double().sum(dim=1)).tolist()


def evaluate(model: GPT, tokenizer: Tokenizer, examples: Sequence[Example], batch_size: int = 8,
             ctx=None, progress: bool = False) -> dict[str, float]:
    scored = score_examples(model, tokenizer, examples, batch_size, ctx, progress)
    return {"acc": sum(s.acc for s in scored) / len(scored),
            "acc_norm": sum(s.acc_norm for s in scored) / len(scored), "examples": len(scored)}
