"""HellaSwag during training (--eval_hellaswag): the logged accuracy is evaluation/hellaswag.py's on
the same examples and weights, the same at 1 and 2 processes (DDP and FSDP), in TensorBoard
beside the loss; an unreadable source is one line and training goes on."""

import json
import os
import re
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from evaluation.hellaswag_scoring import Example, fingerprint, load_examples, spread
from models.distributed import Distributed
from models.trainer import rank_examples
from tests.helpers import REPO, run_script

HELLASWAG = re.compile(r"^step (\d+): val loss [\d.]+ \| val bits/byte [\d.]+ \| hellaswag "
                       r"acc_norm ([\d.]+) \((\d+) examples, [\d.]+ s\)$", re.M)


def logged(out_dir) -> dict[int, float]:
    return {int(s): float(a) for s, a, _ in HELLASWAG.findall((out_dir / "train.log").read_text())}


def test_spread_and_rank_shares_cover_every_example_once():
    examples = [Example(f"q{i}", ("a", "b"), 0) for i in range(10)]
    assert [e.query for e in spread(examples, 4)] == ["q0", "q2", "q5", "q7"]
    assert spread(examples, 20) == examples
    shares = [rank_examples(examples[:7], Distributed(rank, 0, 2)) for rank in range(2)]
    assert [len(share) for share, _ in shares] == [4, 4]  # padded: the same forward calls
    assert [e for share, counted in shares for e in share[:counted]] == examples[:7]


def test_logged_accuracy_equals_hellaswag_py_on_the_same_examples(run_with_hellaswag,
                                                                  hellaswag_file, tmp_path):
    out_dir, result = run_with_hellaswag
    scores = logged(out_dir)
    assert sorted(scores) == [0, 10, 20]  # every evaluation, the first included
    rows = hellaswag_file.read_text().splitlines()
    chosen = [rows[i * len(rows) // 5] for i in range(5)]  # spread evenly: 5 of the 7
    assert fingerprint(spread(load_examples(str(hellaswag_file)), 5)) in result.stdout
    (tmp_path / "chosen.jsonl").write_text("\n".join(chosen) + "\n")
    script = run_script("evaluation/hellaswag.py", str(out_dir / "latest.pt"), "--data",
                        str(tmp_path / "chosen.jsonl"), "--json", cwd=tmp_path)
    assert script.returncode == 0, script.stderr
    assert json.loads(script.stdout)["acc_norm"] == scores[20]  # latest.pt holds step 20
    events = EventAccumulator(str(out_dir))
    events.Reload()
    assert {e.step: round(e.value, 4) for e in events.Scalars("val/hellaswag_acc_norm")} == \
        scores
    assert "val/hellaswag_acc" in events.Tags()["scalars"]


def torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           "2", str(REPO / "models/gpt.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_the_same_scores_at_1_and_2_processes(mode, hellaswag_file, tmp_path):
    common = ["--preset", "tiny", "--block_size", "32", "--accumulation_steps", "1",
              "--max_iters", "2", "--eval_interval", "2", "--eval_iters", "2", "--log_interval",
              "1", "--sample_tokens", "0", "--data_workers", "0", "--optimizer", "adamw",
              "--eval_hellaswag", "7", "--hellaswag_data", str(hellaswag_file)]  # 7: padded
    single = run_script("models/gpt.py", *common, "--batch_size", "8", "--out_dir",
                        str(tmp_path / "single"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    extra = ["--fsdp"] if mode == "fsdp" else []
    result = torchrun(*common, "--batch_size", "4", "--out_dir", str(tmp_path / mode), *extra,
                      cwd=tmp_path)
    if mode == "fsdp" and result.returncode != 0:
        pytest.skip(f"FSDP2 cannot run on this torch build's CPU backend: "
                    f"{result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    scores = logged(tmp_path / mode)
    assert sorted(scores) == [0, 2] and scores == logged(tmp_path / "single")
    log = (tmp_path / mode / "train.log").read_text()  # the report's command is torchrun's
    assert re.search(r"^run: .* \| command: torchrun --nnodes 1 --nproc_per_node 2 ", log, re.M)


@pytest.mark.parametrize("source", ["missing file", "unreachable Hub", "malformed row"])
def test_an_unreadable_source_is_one_line_and_training_goes_on(source, tmp_path):
    data, env = str(tmp_path / "missing.jsonl"), None
    if source == "unreachable Hub":
        data, env = "hellaswag", {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    if source == "malformed row":  # a JSON line that is not an object
        data = str(tmp_path / "rows.jsonl")
        (tmp_path / "rows.jsonl").write_text("null\n")
    result = run_script("models/gpt.py", "--preset", "tiny", "--block_size", "32",
                        "--batch_size", "4", "--accumulation_steps", "1", "--max_iters", "2",
                        "--eval_interval", "2", "--eval_iters", "1", "--sample_tokens", "0",
                        "--data_workers", "0", "--eval_hellaswag", "10", "--hellaswag_data",
                        data, "--out_dir", str(tmp_path / "run"), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "run" / "train.log").read_text()
    mentions = [line for line in log.splitlines() if "hellaswag" in line.lower()
                and not line.startswith(("training: ", "run: "))]
    expected = {"missing file": f"file not found: {data}",
                "unreachable Hub": "cannot reach dataset 'Rowan/hellaswag' on the Hugging Face Hub",
                "malformed row": "a row is not in HellaSwag's format"}[source]
    assert len(mentions) == 1 and mentions[0].startswith(
        f"warning: --eval_hellaswag is off for this run: {expected}")
    assert "step 2: val loss" in log and "done: 2 steps" in log


def test_resume_may_turn_it_on_and_lists_the_change(hellaswag_file, tmp_path):
    common = ["--preset", "tiny", "--block_size", "32", "--batch_size", "4",
              "--accumulation_steps", "1", "--eval_interval", "2", "--eval_iters", "1",
              "--sample_tokens", "0", "--data_workers", "0", "--out_dir", str(tmp_path / "run")]
    first = run_script("models/gpt.py", *common, "--max_iters", "2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    resumed = run_script("models/gpt.py", *common, "--resume", "--max_iters", "4",
                         "--eval_hellaswag", "7", "--hellaswag_data", str(hellaswag_file),
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "  eval_hellaswag: 0 -> 7" in resumed.stdout
    assert sorted(logged(tmp_path / "run")) == [4]
