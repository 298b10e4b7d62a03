"""Perplexity by sliding window (against transformers on an exported model), what text it
scores, and HellaSwag as lm-evaluation-harness scores it (against the harness itself)."""

import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.clean_text import clean_text
from evaluation import eval_perplexity
from evaluation.eval_perplexity import score_tokens, wikitext_detokenize, windows
from evaluation.hellaswag_scoring import (
    Example,
    encode_pair,
    judge,
    load_examples,
    score_examples,
)
from hugging_face.convert_to_hf import export
from models.checkpoint import load_checkpoint, model_from_checkpoint
from tests.helpers import FIXTURES, REPO, assert_one_line_error, run_isolated, run_script
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


def transformers_loss(folder, text: str, stride: int, max_tokens: int | None = None
                      ) -> tuple[float, int]:
    """Sliding-window loss written independently, on transformers' model and tokenizer:
    <|endoftext|>, then the text; every token after the first scored once. (mean, count)"""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok.eos_token_id, *tok(text)["input_ids"]][:max_tokens])
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
    return nats / count, count


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
    text = clean_text(WIKITEXT_TEST.read_text(encoding="utf-8"))
    loss, count = transformers_loss(exported, text, stride, max_tokens)
    assert ours["tokens"] == count == max_tokens - 1
    assert ours["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert ours["loss"] == pytest.approx(loss, rel=1e-4)

    eval_perplexity.main([str(exported), "--data", str(WIKITEXT_TEST), "--max_tokens",
                          str(max_tokens), "--stride", str(stride), "--json"])
    folder = json.loads(capsys.readouterr().out)  # the transformers folder, through our code
    assert folder["perplexity"] == pytest.approx(ours["perplexity"], rel=1e-5)


@pytest.mark.skipif(not WIKITEXT_TEST.exists(), reason="WikiText-2 fixture absent")
def test_a_text_file_scores_as_transformers_scores_the_same_text(quickstart, tmp_path):
    """A .txt file is one document (not one per unit of the data layer): the same score as
    transformers' sliding window over the same cleaned text."""
    out_dir, _ = quickstart
    text = WIKITEXT_TEST.read_text(encoding="utf-8")[:20_000]
    (tmp_path / "wiki.txt").write_text(text)
    result = run_script("evaluation/eval_perplexity.py", str(out_dir / "best_model.pt"),
                        "--data", str(tmp_path / "wiki.txt"), "--stride", "64", "--json",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ours = json.loads(result.stdout)
    export(load_checkpoint(out_dir / "best_model.pt"), tmp_path / "hf")
    loss, count = transformers_loss(tmp_path / "hf", clean_text(text), stride=64)
    assert ours["tokens"] == count
    assert ours["perplexity"] == pytest.approx(math.exp(loss), rel=1e-3)


def perplexity_json(capsys, checkpoint, *args: str) -> dict:
    eval_perplexity.main([str(checkpoint), "--json", "--stride", "128", *args])
    return json.loads(capsys.readouterr().out)


def test_perplexity_names_the_text_it_scored_and_raw_keeps_every_byte(quickstart, tmp_path,
                                                                      capsys):
    out_dir, _ = quickstart
    text = (WIKITEXT_TEST.read_text(encoding="utf-8")[:2500] if WIKITEXT_TEST.exists() else
            " = Title = \n The state @-@ of @-@ the @-@ art , 1 @,@ 000 ( here ) . \n" * 30)
    raw_bytes = (text + " trailing \r\n\r\n\n\n\nend  ").encode("utf-8")
    path = tmp_path / "wiki.txt"
    path.write_bytes(raw_bytes)
    checkpoint = out_dir / "best_model.pt"  # the bytes tokenizer: one token per byte
    cleaned = perplexity_json(capsys, checkpoint, "--data", str(path))
    raw = perplexity_json(capsys, checkpoint, "--data", str(path), "--raw")
    detokenized = perplexity_json(capsys, checkpoint, "--data", str(path), "--detokenize")
    assert (cleaned["text"], raw["text"], detokenized["text"]) == (
        "cleaned", "raw", "raw+wikitext-detokenized")
    assert raw["bytes"] == raw["tokens"] == len(raw_bytes)  # \r\n and spaces as they are
    assert cleaned["bytes"] < len(raw_bytes)
    assert detokenized["bytes"] == len(wikitext_detokenize(raw_bytes.decode()).encode())


def test_raw_rows_of_a_jsonl_file_are_not_cleaned(quickstart, tmp_path, capsys):
    out_dir, _ = quickstart
    rows = [{"text": "A row with  double spaces @-@ and a tail   \n\n\n"}, {"text": ""},
            {"text": "Caf\u00e9, \u00fcber: two more rows of text, as they are.  "}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    raw = perplexity_json(capsys, out_dir / "best_model.pt", "--data", path, "--raw")
    assert raw["bytes"] == sum(len(r["text"].encode()) for r in rows)


def test_raw_of_generated_text_is_one_line(quickstart, tmp_path):
    out_dir, _ = quickstart
    result = run_script("evaluation/eval_perplexity.py", str(out_dir / "best_model.pt"),
                        "--data", "pydocs", "--raw", cwd=tmp_path)
    assert_one_line_error(result, "--raw reads files and Hub datasets")


def scrambled(text: str, shift: int) -> str:
    """Gibberish of exactly the same length: letters rotated, spaces and dots kept."""
    return "".join(chr((ord(c) - 97 + shift) % 26 + 97) if c.isalpha() else c
                   for c in text.lower())


ENGLISH = [("The function returns", "the", "value of the attribute."),
           ("This module provides", "", "functions for working with files."),
           ("If the argument is", "not", "given, the default is used.")]
HELLASWAG_ROWS = [  # HellaSwag's format; the English ending (label 0) is the answer
    {"activity_label": "Python docs", "ctx_a": a, "ctx_b": b,
     "endings": [right] + [scrambled(right, k) for k in (7, 13, 19)], "label": "0"}
    for a, b, right in ENGLISH]
# Rows with what the harness's preprocessing acts on: WikiHow's [title] and [step] tags, double
# spaces, a lower-case ctx_b, a context ending in " [title]" (a query with a trailing space), and
# endings that are not ASCII (characters and bytes differ).
ARTIFACT_ROWS = [
    {"activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
     "ctx_b": "he", "endings": ["is using wrap to wrap a pair of skis.",
                                "is ripping level tiles off.", "is holding a rubik's cube.",
                                "starts pulling up roofing on a roof."], "label": "3"},
    {"activity_label": "Home and Garden",
     "ctx_a": "[header] How to clean a grill [title] Heat the grill.  [step] Turn the burners on "
              "high", "ctx_b": "and CLOSE the lid.",
     "endings": ["[substeps] Let it heat for ten minutes.",
                 "Wait  until the grates are hot [title] Scrub them.",
                 " Spray the grill with water. ", "Eat a sandwich [step] while you wait."],
     "label": "0"},
    {"activity_label": "Cooking", "ctx_a": "She pours the coffee into a cup.", "ctx_b": "she",
     "endings": ["adds crème fraîche and stirs.", "drinks it.",
                 "puts the cup in the café's sink.", "smiles."], "label": "1"},
    {"activity_label": "Personal Care", "ctx_a": "[header] How to wash your hair",
     "ctx_b": "wet your hair [title]", "endings": ["Use warm water.", "Sing a song.",
                                                   "Dry it first.", "Buy a hat."], "label": "0"},
]
# Log-likelihoods that rank the Cooking row's endings differently per normalisation: by
# characters (the harness's acc_norm) ending 1, by bytes ending 0, by characters + 1 (the space)
# ending 3, unnormalised ending 3.
COOKING_LOG_LIKELIHOODS = [-30.0, -10.0, -100.0, -7.1]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def test_hellaswag_examples_are_built_as_the_harness_builds_them(tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "rows.jsonl", ARTIFACT_ROWS))
    assert examples[0] == Example("Roof shingle removal: A man is sitting on a roof. He",
                                  tuple(ARTIFACT_ROWS[0]["endings"]), 3)
    assert examples[1] == Example(
        "Home and Garden: How to clean a grill. Heat the grill.  Turn the burners on high And "
        "close the lid.",
        (" Let it heat for ten minutes.", "Wait until the grates are hot. Scrub them.",
         "Spray the grill with water.", "Eat a sandwich while you wait."), 0)
    assert examples[3].query == "Personal Care: How to wash your hair Wet your hair. "


def test_hellaswag_acc_norm_divides_by_the_endings_characters():
    cooking = Example("q", tuple(ARTIFACT_ROWS[2]["endings"]), 1)
    scored = judge(COOKING_LOG_LIKELIHOODS, cooking)
    assert (scored.acc, scored.acc_norm) == (0, 1)


def test_hellaswag_continuation_tokens_are_split_from_the_whole_text():
    tok = byte_tokenizer()
    context, continuation = encode_pair(tok, "Wet your hair. ", " Use warm water.")
    assert context == tok.encode("Wet your hair.")  # its trailing space moves on
    assert continuation == tok.encode("  Use warm water.")


def test_hellaswag_scores_are_sums_of_choice_log_probabilities(quickstart):
    out_dir, _ = quickstart
    model, tok = model_from_checkpoint(load_checkpoint(out_dir / "best_model.pt"))
    examples = [Example("The value", ("is returned.", "is not returned at all."), 0)] * 2 + \
        [Example("x" * 300, ("y",), 0)]  # longer than the context: cut on the left
    one_by_one = score_examples(model, tok, examples, batch_size=1)
    for a, b in zip(one_by_one, score_examples(model, tok, examples, batch_size=3), strict=True):
        assert a.log_likelihoods == pytest.approx(b.log_likelihoods, rel=1e-5)
    for example, scored in zip(examples, one_by_one):
        for choice, ll in zip(example.choices, scored.log_likelihoods):
            ids = (tok.encode(example.query) + tok.encode(" " + choice))[-129:]  # no EOT first
            n = len(tok.encode(" " + choice))
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)
            expected = sum(logprobs[len(ids) - 1 - n + i, ids[len(ids) - n + i]].item()
                           for i in range(n))
            assert ll == pytest.approx(expected, rel=1e-5)


def test_hellaswag_on_a_local_file_with_a_known_answer(quickstart, tmp_path):
    out_dir, _ = quickstart
    path = write_jsonl(tmp_path / "hellaswag.jsonl", HELLASWAG_ROWS)
    result = run_script("evaluation/hellaswag.py", str(out_dir / "best_model.pt"), "--data",
                        path, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"acc": 1.0, "acc_norm": 1.0, "examples": 3}


@pytest.fixture(scope="module")
def harness(quickstart, tmp_path_factory):
    """lm-evaluation-harness, in a throwaway environment, on the rows above and on our model
    exported (the harness runs transformers 4.57: the export loads there too)."""
    out_dir, _ = quickstart
    root = tmp_path_factory.mktemp("harness")
    export(load_checkpoint(out_dir / "best_model.pt"), root / "hf")
    rows = ARTIFACT_ROWS + HELLASWAG_ROWS
    wikitext = WIKITEXT_TEST.read_text(encoding="utf-8")[:30_000] if WIKITEXT_TEST.exists() \
        else "A \" quoted \" 1 @,@ 000 state @-@ of @-@ the @-@ art ( here ) test . \n = = H = = \n"
    request = root / "request.json"
    request.write_text(json.dumps({
        "task_dir": str(root), "data_file": write_jsonl(root / "rows.jsonl", rows),
        "model": str(root / "hf"), "log_likelihoods": [[2, COOKING_LOG_LIKELIHOODS]],
        "wikitext": wikitext}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = run_isolated(["lm_eval>=0.4.9,<0.5", "accelerate", "transformers==4.57.*"],
                          REPO / "tests/evaluation/harness_check.py", str(request), cwd=root,
                          env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return rows, wikitext, json.loads(result.stdout.strip().splitlines()[-1])


def test_hellaswag_equals_lm_evaluation_harness(quickstart, harness, tmp_path):
    rows, _, seen = harness
    examples = load_examples(write_jsonl(tmp_path / "rows.jsonl", rows))
    assert [(e.query, list(e.choices), e.label) for e in examples] == \
        [(d["query"], d["choices"], int(d["label"])) for d in seen["docs"]]
    assert seen["judged"][0]["acc"] == 0 and seen["judged"][0]["acc_norm"] == 1
    assert judge(COOKING_LOG_LIKELIHOODS, examples[2]).acc_norm == seen["judged"][0]["acc_norm"]
    out_dir, _ = quickstart
    model, tok = model_from_checkpoint(load_checkpoint(out_dir / "best_model.pt"))
    ours = score_examples(model, tok, examples, batch_size=4)
    for mine, theirs in zip(ours, seen["samples"], strict=True):
        assert mine.log_likelihoods == pytest.approx(theirs["log_likelihoods"], rel=1e-4,
                                                     abs=1e-4)
        assert (mine.acc, mine.acc_norm) == (theirs["acc"], theirs["acc_norm"])
    assert seen["scores"]["acc_norm,none"] == pytest.approx(
        sum(s.acc_norm for s in ours) / len(ours))


def test_wikitext_detokenization_equals_lm_evaluation_harness(harness):
    _, wikitext, seen = harness
    assert wikitext_detokenize(wikitext) == seen["detokenized"]
    assert wikitext_detokenize("state @-@ of @-@ the @-@ art , 1 @,@ 000") == \
        "state-of-the-art, 1,000"


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
