"""The plot and benchmark scripts, on real (small) runs."""

import json
import struct

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
