"""The plot and benchmark scripts, on real (small) runs."""

import json
import struct

import pytest

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
