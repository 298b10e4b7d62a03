"""The plot and benchmark scripts, on real (small) runs."""

import json
import struct

import pytest
import torch

from tests.helpers import assert_one_line_error, run_script


def test_plot_writes_a_png_from_a_real_runs_logs(quickstart, tmp_path):
    out_dir, _ = quickstart
    result = run_script("scripts/plot_training.py", str(out_dir), "--output",
                        str(tmp_path / "run.png"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = (tmp_path / "run.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert width > 1000 and height > 300
    assert "4 logged steps, up to step 40" in result.stdout


def test_plot_without_logs_is_one_line(tmp_path):
    assert_one_line_error(run_script("scripts/plot_training.py", str(tmp_path), cwd=tmp_path),
                          "no training logs")


def test_benchmark_runs_every_section_against_its_peer(tmp_path):
    result = run_script("scripts/benchmark.py", "--small", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {r["section"] for r in rows} == {"train", "generate", "data", "tokenizer"}
    for r in rows:
        if r["section"] in ("train", "generate"):  # ours and transformers, same run
            assert r["ours_tokens_per_s"] > 0 and r["transformers_tokens_per_s"] > 0
            ratio = r["ours_tokens_per_s"] / r["transformers_tokens_per_s"]
            assert r["speedup"] == pytest.approx(ratio)
        if r["section"] == "tokenizer":
            assert r["ours_tokens_per_s"] > 0 and r["tokenizers_tokens_per_s"] > 0
        if r["section"] == "data":
            assert r["tokens_per_s"] > 0
    assert next(r for r in rows if r["section"] == "generate")["same_ids"]
    table = run_script("scripts/benchmark.py", "--small", "--sections", "train", cwd=tmp_path)
    assert "ours vs transformers Llama" in table.stdout


def test_benchmark_sides_compute_the_same_loss_on_the_same_targets():
    from scripts.benchmark import same_targets, twin_models
    from transformer_setup.params import build_configs

    config, _ = build_configs("tiny", {"vocab_size": 257, "vocab_multiple": 1})
    ours, theirs = twin_models(config, torch.device("cpu"))
    x = torch.randint(0, 257, (3, config.block_size + 1))
    inputs, targets = same_targets(x)
    with torch.no_grad():
        mine, peer = ours(inputs, targets), theirs(input_ids=inputs, labels=inputs).loss
    assert mine.item() == pytest.approx(peer.item(), abs=1e-5)


def test_gpu_suite_smoke_prints_every_section(tmp_path):
    result = run_script("scripts/gpu_suite.py", "--smoke", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    sections = [r["section"] for r in rows]
    assert sections[:3] == ["environment", "shipped", "trainer"] and len(sections) == 12
    assert [r for r in rows if "error" in r] == []
    for r in rows:
        if "tokens_per_s" in r:  # every measured row names its graph
            assert r["tokens_per_s"] > 0 and r["finite"] and r["estimate_gb"] > 0, r
            assert r["graph"].endswith("eager"), r  # --smoke compiles nothing
        if "ours_over_transformers" in r:
            mine = next(m for m in rows if m["section"] == r["section"].replace(
                "transformers", "ours"))
            assert r["ours_over_transformers"] == pytest.approx(
                mine["tokens_per_s"] / r["tokens_per_s"])
    decode = next(r for r in rows if r["section"] == "decode")
    assert decode["same_ids"] and decode["speedup"] > 0
    trainer = next(r for r in rows if r["section"] == "trainer")
    assert trainer["exit"] == [0, 0] and trainer["resumed_at"] == 2
    assert "step 4/4" in trainer["last_line"] and "tok/s" in trainer["last_line"]
    table = result.stdout[result.stdout.index("\nsection "):]
    assert all(f"\n{name}" in table for name in sections)


def test_compare_optimizers_smoke_writes_curves_summary_and_plot(tmp_path, capsys):
    from scripts import compare_optimizers

    compare_optimizers.main(["--smoke", "--out", str(tmp_path), "--muon_lrs", "4e-3", "8e-3"])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [(r["optimizer"], r["lr"]) for r in results["runs"]] == \
        [("adamw", 1e-3), ("adamw", 2e-3), ("muon", 4e-3), ("muon", 8e-3)]
    for run in results["runs"]:
        assert run["tokens"] == [0, 3 * 4 * 32, 6 * 4 * 32] and len(run["val_loss"]) == 3
    summary = results["summary"]
    assert set(summary["best_lr"]) == {"adamw", "muon"}
    assert (tmp_path / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Muon reaches AdamW's final validation loss" in capsys.readouterr().out


def test_tokens_to_reach_interpolates_between_evaluations():
    from scripts.compare_optimizers import tokens_to_reach

    run = {"tokens": [0, 100, 200], "val_loss": [5.0, 3.0, 2.0]}
    assert tokens_to_reach(run, 3.0) == 100
    assert tokens_to_reach(run, 2.5) == 150
    assert tokens_to_reach(run, 1.0) is None
