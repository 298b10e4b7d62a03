"""Shared fixtures: the fixtures folder, and one short quickstart run reused by several tests."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import FIXTURES, run_script


@pytest.fixture
def gpt2_tiktoken_file() -> Path:
    """GPT-2's ranks from ../shared/fixtures (skips where the fixtures are absent)."""
    path = FIXTURES / "gpt2.tiktoken"
    if not path.exists():
        pytest.skip(f"fixture {path} is absent")
    return path


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A short run of the quickstart's command: the tiny preset on pydocs, on the CPU."""
    out_dir = tmp_path_factory.mktemp("quickstart")
    result = run_script("models/gpt.py", "--preset", "tiny", "--out_dir", str(out_dir),
                        "--max_iters", "40", "--eval_interval", "20", "--eval_iters", "4",
                        "--log_interval", "10", "--save_interval", "20", cwd=out_dir)
    assert result.returncode == 0, result.stderr
    return out_dir, result
