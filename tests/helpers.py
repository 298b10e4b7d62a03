"""Helpers the tests import: paths, and running entry scripts as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"


def run_script(script: str, *args: str, cwd: Path, timeout: float = 300,
               env: dict[str, str] | None = None, stdin: str | None = None
               ) -> subprocess.CompletedProcess:
    """Run an entry script (path relative to the repo) from another folder, as a user would."""
    return subprocess.run([sys.executable, str(REPO / script), *args], cwd=cwd, env=env,
                          input=stdin, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user mistake: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


ENV_STARTED = "isolated environment started"  # the first line an isolated script prints


def run_isolated(packages: list[str], script: Path, *args: str, cwd: Path,
                 timeout: float = 600, env: dict[str, str] | None = None,
                 with_project: bool = False) -> subprocess.CompletedProcess:
    """Run a script in a throwaway environment holding only `packages` (and torch at the version
    running here; with_project: this project too, editable, as `uv sync --extra ...` installs
    it), built by `uv run --isolated` from the package registry and uv's cache. Skips the
    calling test, with the reason, where uv is absent or the environment cannot be built (no
    registry): the script prints ENV_STARTED first, so its own failures still fail."""
    import shutil

    import pytest
    import torch

    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed: cannot build an isolated environment")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"
    command = [uv, "run", "--isolated", "--no-project", "--quiet", "--python", python,
               "--with", torch_pin]
    for package in packages:
        command += ["--with", package]
    if with_project:
        command += ["--with-editable", str(REPO)]
    result = subprocess.run([*command, "python", str(script), *args], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0 and ENV_STARTED not in result.stdout:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1][:200]
        pytest.skip(f"could not build an environment with {', '.join(packages)}: {reason}")
    return result
