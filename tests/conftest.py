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


@pytest.fixture(scope="session")
def hellaswag_file(tmp_path_factory) -> Path:
    """Seven rows in HellaSwag's format (those of tests/evaluation/test_evaluation.py)."""
    import json

    from tests.evaluation.test_evaluation import ARTIFACT_ROWS, HELLASWAG_ROWS

    path = tmp_path_factory.mktemp("hellaswag") / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ARTIFACT_ROWS + HELLASWAG_ROWS))
    return path


@pytest.fixture(scope="session")
def run_with_hellaswag(tmp_path_factory, hellaswag_file
                       ) -> tuple[Path, subprocess.CompletedProcess]:
    """A 20-step tiny run that scores HellaSwag (5 of the 7 rows) at each evaluation."""
    out_dir = tmp_path_factory.mktemp("hellaswag_run")
    result = run_script("models/gpt.py", "--preset", "tiny", "--out_dir", str(out_dir),
                        "--block_size", "32", "--batch_size", "8", "--accumulation_steps", "1",
                        "--max_iters", "20", "--eval_interval", "10", "--eval_iters", "2",
                        "--log_interval", "5", "--sample_tokens", "16", "--data_workers", "0",
                        "--eval_hellaswag", "5", "--hellaswag_data", str(hellaswag_file),
                        cwd=out_dir)
    assert result.returncode == 0, result.stderr
    return out_dir, result
