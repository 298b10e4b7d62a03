"""scripts/gpu_suite.py without a GPU: its plan on simulated 80 GB and 141 GB cards (the
micro-batch, the peer comparison's, a trainer run whose held-out text is enough), and its
section handling: a section that raises, one that times out and a child that dies without a
word each become one row, later sections still run, and the suite ends with its table."""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch

from data.validation import validation_set
from models.estimate import device_memory_bytes, meta_model, training_memory, usable_memory
from scripts import gpu_suite
from tokenization.tokenizer import byte_tokenizer

MIB = 2**20
CARDS = {  # name -> (bytes torch reports, the 1b preset's auto micro-batch on one card)
    "NVIDIA H100 80GB HBM3": (81559 * MIB, 24),
    "NVIDIA H200": (143771 * MIB, 48),
}


@pytest.fixture(params=CARDS)
def card(request, monkeypatch):
    """torch sees one simulated GPU of this name and reported memory."""
    name = request.param
    props = SimpleNamespace(name=name, total_memory=CARDS[name][0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: props)
    return name


def card_bytes() -> float:
    """What the environment section reports for the (simulated) card."""
    return device_memory_bytes(torch.device("cuda"), 80)


def test_the_plan_sizes_from_the_cards_reported_memory(card):
    device_bytes = card_bytes()
    sections = {s.key: s for s in gpu_suite.plan(device_bytes, smoke=False)}
    config, recipe = gpu_suite.preset_config(smoke=False)
    n_params = meta_model(config).num_params()
    micro = sections["shipped"].params["micro_batch"]
    assert micro == CARDS[card][1]
    assert micro * sections["shipped"].params["accumulation"] * 1024 == 294_912
    usable = usable_memory(device_bytes)
    assert training_memory(config, n_params, micro, torch.bfloat16).total <= usable
    # the comparison with transformers at a micro-batch where all its fp32 logits fit
    peer = sections["transformers_compiled"].params["micro_batch"]
    ours = training_memory(config, n_params, peer, torch.bfloat16)
    logits = peer * 1024 * config.padded_vocab_size * gpu_suite.PEER_LOGIT_BYTES
    assert 1 <= peer <= micro and ours.total - ours.logits + logits <= usable
    assert sections["ours_compiled"].params["micro_batch"] == peer  # ours alone, same size
    assert list(sections)[:2] == ["shipped", "trainer"]


def test_the_trainer_sections_held_out_text_holds_its_validation_tokens(card, tmp_path):
    params = gpu_suite.plan(card_bytes(), smoke=False)[1].params
    assert params["global_batch_tokens"] == CARDS[card][1] * 2 * 1024
    gpu_suite.write_text(tmp_path / "val.txt", params["val_bytes"], seed=1)
    val = validation_set("train.txt", str(tmp_path / "val.txt"), None, byte_tokenizer(), 1024,
                         params["val_tokens"],
                         {"text_field": "text", "data_config": None, "min_int_score": None})
    assert val.rows.shape == (params["val_tokens"] // 1024, 1025)


def scripted(code: str) -> list[str]:
    return [sys.executable, "-c", code]


CHILDREN = {
    "fine": scripted("print('ROW ' + '{\"tokens_per_s\": 5.0, \"graph\": \"ours, eager\"}')"),
    "raises": scripted("raise ValueError('a bad section')"),
    "hangs": scripted("import time; time.sleep(60)"),
    "dies": scripted("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"),
    "child_exception": [sys.executable, gpu_suite.__file__, "--child", "shipped", "--params",
                        "{}", "--smoke"],  # the real child: its KeyError becomes the row
    "after": scripted("print('ROW {}')"),
    "late": scripted("print('ROW {}')"),
}


def test_every_section_prints_a_row_and_the_suite_ends_with_its_table(capsys):
    sections = [gpu_suite.Section(key, key, 1.5 if key == "hangs" else 120) for key in CHILDREN]
    times = iter([0.0, 0, 10, 20, 30, 40, 50, 990])  # the budget is spent before "late"
    rows = gpu_suite.run_suite(sections, budget_s=1000, clock=lambda: next(times),
                               command=lambda section, smoke: CHILDREN[section.key])
    out = capsys.readouterr().out
    printed = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["section"] for r in printed] == list(CHILDREN) == [r["section"] for r in rows]
    by = {r["section"]: r for r in printed}
    assert by["fine"]["tokens_per_s"] == 5.0 and "error" not in by["fine"]
    assert "ValueError: a bad section" in by["raises"]["error"]
    assert by["hangs"]["error"] == "timed out after 2 s (its limit)"
    assert by["dies"]["error"].startswith("the child died without a row (killed by signal 9)")
    assert by["child_exception"]["error"].startswith("KeyError")
    assert "error" not in by["after"]  # the suite went on
    assert by["late"]["skipped"] == "the suite's --budget_s is spent"
    table = out[out.index("\nsection "):].splitlines()[2:]
    assert [line.split()[:2] for line in table] == [
        ["fine", "ok"], ["raises", "error"], ["hangs", "error"], ["dies", "error"],
        ["child_exception", "error"], ["after", "ok"], ["late", "skipped"]]
