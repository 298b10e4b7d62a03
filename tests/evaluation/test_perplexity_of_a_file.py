"""A text file is scored as the text it is: one document, the same as transformers' own
sliding-window perplexity of the same cleaned text."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.clean_text import clean_text
from hugging_face.convert_to_hf import export
from models.checkpoint import load_checkpoint
from tests.helpers import FIXTURES, run_script

WIKITEXT_TEST = FIXTURES / "wikitext-2" / "test.txt"


def transformers_perplexity(folder, text: str, stride: int) -> tuple[float, int]:
    """Sliding-window perplexity written independently, on transformers' model and tokenizer:
    <|endoftext|>, then the text; every token after the first scored once."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok.eos_token_id, *tok(text)["input_ids"]])
    context, nats, count, prev_end = hf.config.max_position_embeddings, 0.0, 0, 1
    with torch.no_grad():
        for begin in range(0, len(ids), stride):
            end = min(begin + context + 1, len(ids))
            if prev_end >= end:
                break
            logits = hf(ids[begin:end - 1][None]).logits[0]
            targets = ids[begin + 1:end].clone()
            targets[:prev_end - begin - 1] = -100  # scored by an earlier window
            nats += F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum").item()
            count += int((targets != -100).sum())
            prev_end = end
    return math.exp(nats / count), count


@pytest.mark.skipif(not WIKITEXT_TEST.exists(), reason="WikiText-2 fixture absent")
def test_a_text_file_scores_as_transformers_scores_the_same_text(quickstart, tmp_path):
    out_dir, _ = quickstart
    text = WIKITEXT_TEST.read_text(encoding="utf-8")[:20_000]
    (tmp_path / "wiki.txt").write_text(text)
    result = run_script("evaluation/eval_perplexity.py", str(out_dir / "best_model.pt"),
                        "--data", str(tmp_path / "wiki.txt"), "--stride", "64", "--json",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    export(load_checkpoint(out_dir / "best_model.pt"), tmp_path / "hf")
    theirs, count = transformers_perplexity(tmp_path / "hf", clean_text(text), stride=64)
    assert ours["tokens"] == count
    assert ours["perplexity"] == pytest.approx(theirs, rel=1e-3)
