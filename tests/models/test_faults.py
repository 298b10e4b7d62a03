"""Nothing lost, nothing silent: the run folder's lock, the final-checkpoint rule, a full disk,
changes on resume, and a torchrun peer that dies."""

import errno
import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import pytest
import torch

from models import checkpoint as checkpoint_module
from models import run_dir
from models.run_dir import RunLock
from models.trainer import TrainingError, train
from tests.helpers import REPO
from tests.models.test_training import poison, small_run
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.cli import UserError


def test_a_second_run_into_a_busy_folder_stops_at_once(tmp_path):
    holder = RunLock(tmp_path)
    assert holder.acquire() is None  # this process plays the first run
    try:
        model_config, train_config = small_run(tmp_path)
        with pytest.raises(UserError, match=rf"{tmp_path} is in use by another run \(pid "
                                            rf"{os.getpid()} on .*, started .*\)"):
            train(model_config, train_config, byte_tokenizer())
    finally:
        holder.release()
    assert not (tmp_path / "latest.pt").exists() and not (tmp_path / "train.log").exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_with_a_warning(tmp_path, capsys):
    (tmp_path / ".lock").write_text('{"pid": 999999, "host": "gone", "started": "yesterday"}')
    model_config, train_config = small_run(tmp_path, max_iters=2)
    train(model_config, train_config, byte_tokenizer())
    assert "taking over" in capsys.readouterr().err
    assert (tmp_path / ".lock").read_text() == ""  # released cleanly at the end
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 2


def test_a_run_ending_on_skipped_steps_still_saves_its_last_step(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, max_iters=6, save_interval=100)
    poison(monkeypatch, bad_calls={5, 6})  # the last two steps are non-finite
    train(model_config, train_config, byte_tokenizer())
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert ckpt["step"] == 6 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert "ended on 2 skipped steps" in (tmp_path / "train.log").read_text()


def test_a_run_without_a_good_step_exits_non_zero_and_saves_nothing(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, max_iters=3, max_bad_steps=10)
    poison(monkeypatch, bad_calls=None)
    with pytest.raises(TrainingError, match="no step of this run was finite.*nothing was saved"):
        train(model_config, train_config, byte_tokenizer())
    assert not (tmp_path / "latest.pt").exists()


def test_diverged_weights_are_never_saved(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, max_iters=4, save_interval=2)
    real_step = torch.optim.AdamW.step

    def diverging(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        if self.state and next(iter(self.state.values()))["step"] >= 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverging)
    with pytest.raises(TrainingError, match="weights are not finite after step 4.*step 2"):
        train(model_config, train_config, byte_tokenizer())
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 2


def test_a_full_disk_is_one_line_naming_what_is_intact(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, max_iters=6, save_interval=2,
                                           eval_interval=100)
    real_save, calls = checkpoint_module.torch.save, [0]

    def fills_the_disk(obj, f, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 3:  # best_model.pt at step 0, latest.pt at 2, then latest.pt at 4
            f.write(b"part of a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", fills_the_disk)
    with pytest.raises(TrainingError, match=r"no space left on the device writing "
                       rf"{tmp_path}/latest.pt; the previous latest.pt \(step 2\) is intact"):
        train(model_config, train_config, byte_tokenizer())
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_disk_without_room_for_one_checkpoint_is_refused_before_training(tmp_path,
                                                                          monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 10**5))
    model_config, train_config = small_run(tmp_path)
    with pytest.raises(UserError, match="has 0.00 GB free, but one checkpoint needs about"):
        train(model_config, train_config, byte_tokenizer())
    assert not (tmp_path / "train.log").exists()


def test_resume_logs_and_applies_changes_and_refuses_a_new_seed(tmp_path):
    model_config, train_config = small_run(tmp_path, max_iters=2)
    train(model_config, train_config, byte_tokenizer())
    _, changed = small_run(tmp_path, max_iters=4, resume=True, learning_rate=0.01,
                           weight_decay=0.0, eval_interval=2, allow_schedule_change=True)
    train(model_config, changed, byte_tokenizer())
    log = (tmp_path / "train.log").read_text()
    peak = train_config.learning_rate
    block = log[log.index("resumed from"):log.index("\nmodel:", log.index("resumed from"))]
    assert f"  learning_rate: {peak} -> 0.01\n" in block  # one block lists every change
    assert "  weight_decay: 0.1 -> 0.0\n" in block
    assert "(--allow_schedule_change)" in block
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    history = {(c["field"], c["from"], c["to"], c["step"]) for c in ckpt["config_changes"]}
    assert ("learning_rate", peak, 0.01, 2) in history
    states = ckpt["optimizer"].values() if train_config.optimizer == "muon" else [ckpt["optimizer"]]
    assert all(group["weight_decay"] == 0.0 for state in states for group in state["param_groups"])
    _, reseeded = small_run(tmp_path, max_iters=6, resume=True, seed=7)
    with pytest.raises(UserError, match="cannot resume: seed was 1337, now 7"):
        train(model_config, reseeded, byte_tokenizer())
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["step"] == 4  # untouched


def test_a_dying_torchrun_peer_is_one_line_on_the_survivor(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                             "2", str(REPO / "models/gpt.py"), "--preset", "tiny",
                             "--block_size", "32", "--batch_size", "2", "--accumulation_steps",
                             "1", "--max_iters", "100000",
                             "--data_workers", "0", "--sample_tokens", "0", "--out_dir",
                             str(out)], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "train.log").exists() or \
            "step 20/" not in (out / "train.log").read_text():
        time.sleep(0.1)
    ranks = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "models/gpt.py"],
                           capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2
    os.kill(int(max(ranks, key=int)), signal.SIGKILL)  # the second rank dies
    _, stderr = proc.communicate(timeout=120)
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "another process of this run stopped" in ours[0], stderr
    # The one traceback left is torchrun's own report that a child failed, not a rank's.
    assert stderr.count("Traceback") == 1 and "ChildFailedError" in stderr
