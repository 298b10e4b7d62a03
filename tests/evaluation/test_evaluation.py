"""Perplexity by sliding window (against transformers on an exported model) and HellaSwag."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.clean_text import clean_text
from evaluation import eval_perplexity
from evaluation.eval_perplexity import score_tokens, windows
from evaluation.hellaswag import ending_scores
from hugging_face.convert_to_hf import export
from models.checkpoint import load_checkpoint, model_from_checkpoint
from tests.helpers import FIXTURES, assert_one_line_error, run_script
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.params import ModelConfig
from transformer_setup.transformer import GPT

WIKITEXT_TEST = FIXTURES / "wikitext-2" / "test.txt"


def uniform_model(vocab: int = 257, context: int = 32) -> GPT:
    model = GPT(ModelConfig(vocab_size=vocab, block_size=context, n_layer=1, n_head=2, n_embd=16))
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every logit 0: a uniform distribution
    return model.eval()


def test_uniform_logits_score_the_vocabulary_size():
    tok = byte_tokenizer()
    text = "Perplexity measures surprise: a uniform model is surprised by everything. ünï"
    tokens = [tok.eot_id, *tok.encode(text)] * 5
    score = score_tokens(uniform_model(), tokens, tok.token_byte_lengths(), stride=16)
    assert score.perplexity == pytest.approx(257, rel=1e-5)
    assert score.tokens == len(tokens) - 1
    assert score.bytes == 5 * len(text.encode()) - len(text.encode()[:0])
    expected_bpb = math.log2(257) * score.tokens / score.bytes
    assert score.bits_per_byte == pytest.approx(expected_bpb, rel=1e-6)


@pytest.mark.parametrize("n, context, stride", [(100, 16, 16), (100, 16, 5), (17, 16, 8),
                                                (1000, 64, 1), (50, 64, 32)])
def test_every_token_is_scored_exactly_once(n, context, stride):
    scored = [t for _, end, first in windows(n, context, stride) for t in range(first, end)]
    assert scored == list(range(1, n))
    for begin, end, first in windows(n, context, stride):
        assert end - begin - 1 <= context and first > begin


def test_stride_equal_to_context_is_disjoint_chunks():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    tokens = torch.randint(0, 257, (16 * 6 + 1,)).tolist()
    score = score_tokens(model, tokens, [1] * 257, stride=16)
    with torch.no_grad():
        total = 0.0
        for start in range(0, 16 * 6, 16):  # chunks of 17 tokens overlapping by one
            chunk = torch.tensor([tokens[start:start + 17]])
            total += F.cross_entropy(model(chunk[:, :-1])[0], chunk[0, 1:], reduction="sum").item()
    assert score.loss == pytest.approx(total / (16 * 6), rel=1e-6)


@pytest.mark.skipif(not WIKITEXT_TEST.exists(), reason="WikiText-2 fixture absent")
def test_perplexity_equals_transformers_on_the_exported_model(quickstart, tmp_path, capsys):
    out_dir, _ = quickstart
    exported = tmp_path / "hf"
    export(load_checkpoint(out_dir / "best_model.pt"), exported)
    max_tokens, stride = 6000, 48
    result = run_script("evaluation/eval_perplexity.py", str(out_dir / "best_model.pt"),
                        "--data", str(WIKITEXT_TEST), "--max_tokens", str(max_tokens),
                        "--stride", str(stride), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)

    # The same computation, written independently, through transformers on the export.
    hf = AutoModelForCausalLM.from_pretrained(exported).eval()
    hf_tok = AutoTokenizer.from_pretrained(exported)
    text = clean_text(WIKITEXT_TEST.read_text(encoding="utf-8"))
    ids = torch.tensor([hf_tok.eos_token_id, *hf_tok(text)["input_ids"]][:max_tokens])
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
    assert ours["tokens"] == count == max_tokens - 1
    assert ours["perplexity"] == pytest.approx(math.exp(nats / count), rel=1e-4)
    assert ours["loss"] == pytest.approx(nats / count, rel=1e-4)

    eval_perplexity.main([str(exported), "--data", str(WIKITEXT_TEST), "--max_tokens",
                          str(max_tokens), "--stride", str(stride), "--json"])
    folder = json.loads(capsys.readouterr().out)  # the transformers folder, through our code
    assert folder["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-5)


def scrambled(text: str, shift: int) -> str:
    """Gibberish of exactly the same length: letters rotated, spaces and dots kept."""
    return "".join(chr((ord(c) - 97 + shift) % 26 + 97) if c.isalpha() else c
                   for c in text.lower())


ENGLISH = [("The function returns", "the", "value of the attribute."),
           ("This module provides", None, "functions for working with files."),
           ("If the argument is", None, "not given, the default is used.")]
HELLASWAG_ROWS = [  # HellaSwag's format; the English ending (label 0) is the answer
    {**({"ctx_a": a, "ctx_b": b} if b else {"ctx": a}),
     "endings": [right] + [scrambled(right, k) for k in (7, 13, 19)], "label": 0}
    for a, b, right in ENGLISH]


def test_hellaswag_on_a_local_file_with_a_known_answer(quickstart, tmp_path):
    out_dir, _ = quickstart
    path = tmp_path / "hellaswag.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_ROWS))
    result = run_script("evaluation/hellaswag.py", str(out_dir / "best_model.pt"), "--data",
                        str(path), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"acc": 1.0, "acc_norm": 1.0, "examples": 3}


def test_hellaswag_scores_are_sums_of_ending_log_probabilities(quickstart):
    out_dir, _ = quickstart
    model, tok = model_from_checkpoint(load_checkpoint(out_dir / "best_model.pt"))
    context, ending = "The value", " is returned."
    (score,) = ending_scores(model, tok, context, [ending])
    ids = [tok.eot_id, *tok.encode(context), *tok.encode(ending)]
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)
    n = len(tok.encode(ending))
    expected = sum(logprobs[len(ids) - 1 - n + i, ids[len(ids) - n + i]].item() for i in range(n))
    assert score == pytest.approx(expected, rel=1e-5)


def test_hellaswag_bad_file(tmp_path, quickstart):
    out_dir, _ = quickstart
    (tmp_path / "bad.jsonl").write_text('{"ctx": "x"}\n')
    assert_one_line_error(run_script("evaluation/hellaswag.py", str(out_dir / "best_model.pt"),
                                     "--data", str(tmp_path / "bad.jsonl"), cwd=tmp_path),
                          "HellaSwag's format")


def test_unreachable_evaluation_source_is_one_line(quickstart, tmp_path):
    out_dir, _ = quickstart
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_script("evaluation/eval_perplexity.py", str(out_dir / "best_model.pt"),
                        cwd=tmp_path, env=env)  # default: WikiText-103 test, on the Hub
    assert_one_line_error(result, "cannot reach dataset 'Salesforce/wikitext'")
