"""Run by tests/evaluation/test_benchmarks.py inside an isolated environment holding this project
and lm-evaluation-harness (tests/helpers.py, run_isolated): evaluation/benchmarks.py as a user
runs it (the table, --json, an unknown task), and the harness's own command line on the folder
the test exported by hand; printed as one JSON line.

    python benchmarks_check.py REQUEST.json
"""

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

print("isolated environment started", flush=True)  # tests/helpers.py ENV_STARTED

from evaluation import benchmarks  # noqa: E402
from transformer_setup.cli import UserError  # noqa: E402

request = json.loads(Path(sys.argv[1]).read_text())
common = ["--tasks", request["task"], "--include_path", request["task_dir"], "--device", "cpu",
          "--batch_size", "4"]


def benchmarks_output(*args: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        benchmarks.main([request["checkpoint"], *common, *args])
    return out.getvalue()


result = {"table": benchmarks_output(), "json": benchmarks_output("--json")}
try:
    benchmarks.main([request["checkpoint"], *common[:1], request["task"] + "x", *common[2:]])
    result["unknown_task"] = None
except UserError as err:
    result["unknown_task"] = str(err)

# The harness's own command on the export, as evaluation/README.md documents it.
output = Path(request["task_dir"]) / "by_hand"
by_hand = subprocess.run(
    [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
     f"pretrained={request['exported']},dtype=float32", *common, "--output_path", str(output)],
    capture_output=True, text=True)
assert by_hand.returncode == 0, by_hand.stderr[-3000:]
files = sorted(output.rglob("results*.json"))
result["by_hand"] = json.loads(files[-1].read_text())["results"][request["task"]]
print(json.dumps(result))
