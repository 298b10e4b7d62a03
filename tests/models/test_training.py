"""Training at full strength: accumulation, DDP/FSDP against one process, exact resume after
SIGKILL, faults, precision, TensorBoard, numbered checkpoints."""

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data import prepare
from models import trainer as trainer_module
from models.device import autocast
from models.trainer import TrainingError, optimizer_step, resolve_accumulation, train
from tests.helpers import FIXTURES, REPO, assert_one_line_error, run_script
from tokenization.tokenizer import byte_tokenizer, write_tiktoken_file
from transformer_setup.params import ModelConfig, TrainConfig, build_configs
from transformer_setup.transformer import GPT

# One micro-batch per step unless a test says otherwise (the preset's global batch of 4,096
# tokens would take 32 micro-batches of 4 x 32).
TINY_RUN = ["--preset", "tiny", "--block_size", "32", "--eval_iters", "2", "--log_interval", "1",
            "--sample_tokens", "0", "--accumulation_steps", "1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """pydocs pre-tokenized with the bytes tokenizer."""
    out = tmp_path_factory.mktemp("shards")
    prepare.main(["--data", "pydocs", "--tokenizer", "bytes", "--out", str(out), "--workers", "2"])
    return out


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def logged_losses(out_dir) -> list[float]:
    text = (out_dir / "train.log").read_text()
    return [float(v) for v in re.findall(r"^step \d+/\d+ \| loss ([\d.]+)", text, re.M)]


def test_accumulation_equals_one_big_batch():
    config = ModelConfig(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=32)
    x, y = torch.randint(0, 101, (8, 16)), torch.randint(0, 101, (8, 16))
    results = []
    for micro in (1, 4):
        torch.manual_seed(0)
        model = GPT(config)
        # SGD: the update is lr x gradient, so equal updates mean equal accumulated gradients
        # (Adam's first step, about lr x sign(gradient), would magnify rounding near zero).
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        batches = list(zip(x.chunk(micro), y.chunk(micro), strict=True))
        step = optimizer_step(model, opt, scaler, batches, autocast(torch.device("cpu"),
                                                                       torch.float32), 1.0)
        results.append((step, model.state_dict()))
    (one, big), (four, accumulated) = results
    assert one.loss == pytest.approx(four.loss, rel=1e-6)
    assert one.grad_norm == pytest.approx(four.grad_norm, rel=1e-5)
    for name in big:
        torch.testing.assert_close(accumulated[name], big[name], rtol=1e-6, atol=1e-7)


def test_global_batch_in_tokens_sets_accumulation():
    tc = TrainConfig(batch_size=8, global_batch_tokens=8 * 128 * 4 * 2)
    assert resolve_accumulation(tc, block_size=128, world_size=2) == 4
    with pytest.raises(TrainingError, match="not a multiple"):
        resolve_accumulation(TrainConfig(batch_size=8, global_batch_tokens=1000), 128, 1)


def torchrun(nproc: int, *args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                           str(nproc), str(REPO / "models/gpt.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_equal_one_with_the_same_global_batch(mode, shards, tmp_path):
    common = [*TINY_RUN, "--data", str(shards), "--max_iters", "4", "--accumulation_steps", "2",
              "--sample_tokens", "8",  # sampling is collective under FSDP: must not hang
              "--optimizer", "adamw"]  # FSDP shards matrices Muon needs whole (test_muon: DDP)
    single = run_script("models/gpt.py", *common, "--batch_size", "8", "--out_dir",
                        str(tmp_path / "single"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    extra = ["--fsdp"] if mode == "fsdp" else []
    result = torchrun(2, *common, "--batch_size", "4", "--out_dir", str(tmp_path / mode),
                      *extra, cwd=tmp_path)
    if mode == "fsdp" and result.returncode != 0:
        pytest.skip(f"FSDP2 cannot run on this torch build's CPU backend: "
                    f"{result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    losses, expected = logged_losses(tmp_path / mode), logged_losses(tmp_path / "single")
    assert len(losses) == 4 and losses == pytest.approx(expected, abs=2e-4)
    ours = weights(tmp_path / mode / "latest.pt")
    reference = weights(tmp_path / "single" / "latest.pt")
    for name in reference:
        torch.testing.assert_close(ours[name], reference[name], rtol=1e-4, atol=1e-5)
    val = [re.search(r"val loss ([\d.]+)", (tmp_path / d / "train.log").read_text()).group(1)
           for d in (mode, "single")]
    assert val[0] == val[1]


def kill_and_resume(tmp_path, *extra: str) -> None:
    """Streaming data with a worker process, killed mid-run with SIGKILL, then --resume: the
    final weights and last losses equal an uninterrupted run's, bit for bit."""
    common = [*TINY_RUN, "--batch_size", "4", "--max_iters", "14", "--save_interval", "3",
              "--eval_interval", "5", "--data_workers", "1", *extra]
    whole = run_script("models/gpt.py", *common, "--out_dir", str(tmp_path / "whole"),
                       cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(REPO / "models/gpt.py"), *common,
                             "--out_dir", str(out)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once step 6 or later is on disk, mid-run
        if (out / "latest.pt").exists() and \
                torch.load(out / "latest.pt", weights_only=True)["step"] >= 6:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(out / "latest.pt", weights_only=True)["step"]
    assert 6 <= step_at_kill < 14
    resumed = run_script("models/gpt.py", *common, "--out_dir", str(out), "--resume",
                         cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'latest.pt'} at step {step_at_kill}" in resumed.stdout
    final, reference = weights(out / "latest.pt"), weights(tmp_path / "whole" / "latest.pt")
    for name in reference:
        assert torch.equal(final[name], reference[name]), name
    assert logged_losses(out)[-3:] == logged_losses(tmp_path / "whole")[-3:]


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    kill_and_resume(tmp_path)


def small_run(tmp_path, **overrides) -> tuple[ModelConfig, TrainConfig]:
    fields = dict(block_size=32, data_workers=0, batch_size=4, accumulation_steps=1, max_iters=4,
                  eval_iters=1, sample_tokens=0, log_interval=1, out_dir=str(tmp_path),
                  tensorboard=False)
    fields.update(overrides)
    model_config, train_config = build_configs("tiny", fields)
    return dataclasses.replace(model_config, vocab_size=257), train_config


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_mixed_precision_runs_on_cpu(tmp_path, dtype):
    model_config, train_config = small_run(tmp_path, dtype=dtype)
    result = train(model_config, train_config, byte_tokenizer())
    assert result["step"] == 4 and math.isfinite(result["final_loss"])
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert ckpt["scaler"]["scale"] > 0 if dtype == "fp16" else True


def poison(monkeypatch, bad_calls: set[int] | None):
    """Make GPT.forward return NaN on the given calls (all calls from the first if None)."""
    real_forward, calls = GPT.forward, [0]

    def forward(self, idx, targets=None, start=0, **kwargs):
        out = real_forward(self, idx, targets, start, **kwargs)
        if targets is None or not self.training:  # evaluation and sampling are not counted
            return out
        calls[0] += 1
        return out * float("nan") if bad_calls is None or calls[0] in bad_calls else out

    monkeypatch.setattr(GPT, "forward", forward)


def test_a_nan_step_is_skipped_with_a_warning(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, max_iters=6)
    poison(monkeypatch, bad_calls={3})
    result = train(model_config, train_config, byte_tokenizer())
    log = (tmp_path / "train.log").read_text()
    assert "warning: step 3: non-finite loss" in log
    assert result["step"] == 6 and math.isfinite(result["final_loss"])
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "latest.pt").values())


def test_many_nan_steps_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, max_iters=20, save_interval=2,
                                           max_bad_steps=3)
    real_step, steps = trainer_module.optimizer_step, [0]

    def failing_from_step_5(*args, **kwargs):
        steps[0] += 1
        if steps[0] >= 5:
            poison(monkeypatch, bad_calls=None)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "optimizer_step", failing_from_step_5)
    with pytest.raises(TrainingError, match="3 skipped steps in a row at step 7"):
        train(model_config, train_config, byte_tokenizer())
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())


def test_sigterm_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "models/gpt.py"), *TINY_RUN,
                             "--batch_size", "4", "--max_iters", "100000", "--data_workers", "0",
                             "--out_dir", str(out)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out / "train.log").exists() or \
            "step 3/" not in (out / "train.log").read_text():
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    step = torch.load(out / "latest.pt", weights_only=True)["step"]
    assert 3 <= step < 100000 and f"stopped at step {step}" in stdout


def test_tensorboard_events_hold_the_scalars(quickstart):
    out_dir, _ = quickstart
    events = EventAccumulator(str(out_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_sec", "val/loss",
            "val/bpb"} <= tags
    assert [e.step for e in events.Scalars("val/loss")] == [0, 20, 40]  # from the start
    log = (out_dir / "train.log").read_text()
    assert len(re.findall(r"^step \d+: val loss", log, re.M)) == 3


def test_numbered_checkpoints_keep_the_last_k(tmp_path):
    model_config, train_config = small_run(tmp_path, max_iters=5, save_interval=1,
                                           keep_checkpoints=2)
    train(model_config, train_config, byte_tokenizer())
    assert sorted(p.name for p in tmp_path.glob("ckpt_*.pt")) == ["ckpt_0000004.pt",
                                                                 "ckpt_0000005.pt"]
    assert torch.load(tmp_path / "ckpt_0000004.pt", weights_only=True)["step"] == 4


def test_resume_refuses_a_different_model_or_a_weights_only_checkpoint(tmp_path):
    base = [*TINY_RUN, "--batch_size", "2", "--max_iters", "2", "--data_workers", "0",
            "--out_dir", str(tmp_path)]
    model_config, train_config = small_run(tmp_path, max_iters=2, batch_size=2)
    train(model_config, train_config, byte_tokenizer())
    other_shape = run_script("models/gpt.py", *base, "--n_layer", "3", "--resume", cwd=tmp_path)
    assert_one_line_error(other_shape, "cannot resume: n_layer is 4 in the checkpoint but 3 now")
    reversed_bytes = tmp_path / "reversed.tiktoken"  # 257 ids too, but other ones
    write_tiktoken_file({bytes([255 - i]): i for i in range(256)}, reversed_bytes)
    other_tok = run_script("models/gpt.py", *base, "--tokenizer", str(reversed_bytes),
                           "--resume", cwd=tmp_path)
    assert_one_line_error(other_tok, "trained with tokenizer 'bytes'", "is 'reversed'",
                          "encodes text differently")
    (tmp_path / "latest.pt").write_bytes((tmp_path / "best_model.pt").read_bytes())
    weights_only = run_script("models/gpt.py", *base, "--max_iters", "3", "--resume",
                              cwd=tmp_path)
    assert_one_line_error(weights_only, "weights-only checkpoint")


def test_profile_writes_a_trace_for_tensorboard(tmp_path):
    model_config, train_config = small_run(tmp_path, max_iters=5, profile=2)
    train(model_config, train_config, byte_tokenizer())
    (trace,) = (tmp_path / "profile").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)
    assert "profile of 2 steps written" in (tmp_path / "train.log").read_text()


def parquet_corpus(folder, files=4, rows=200, row_group=10):
    """FineWeb-Edu-shaped parquet: files x rows documents in row groups (the units)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(exist_ok=True)
    words = ("light water leaf root sun plant cell energy sugar air seed green grows makes "
             "the a of and to in").split()
    for f in range(files):
        texts = [" ".join(words[(f * 7 + i * j) % len(words)] for j in range(40)) + f" ({i})"
                 for i in range(rows)]
        pq.write_table(pa.table({"text": texts}), folder / f"{f:03d}.parquet",
                       row_group_size=row_group)
    return folder


STREAMED = [*TINY_RUN, "--batch_size", "2", "--max_iters", "4", "--eval_iters", "1",
            "--data_workers", "1"]


def test_streamed_data_trains_the_same_on_1_2_and_4_processes(tmp_path):
    data = str(parquet_corpus(tmp_path / "pq"))
    single = run_script("models/gpt.py", *STREAMED, "--data", data, "--accumulation_steps", "4",
                        "--out_dir", str(tmp_path / "1x4"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    for nproc, accumulation in ((2, 2), (4, 1)):
        out = tmp_path / f"{nproc}x{accumulation}"
        result = torchrun(nproc, *STREAMED, "--data", data, "--accumulation_steps",
                          str(accumulation), "--out_dir", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert_same_run(out, tmp_path / "1x4")


def assert_same_run(run, reference, atol: float = 1e-5) -> None:
    """Two runs' logged losses and final weights agree within atol."""
    assert logged_losses(run) == pytest.approx(logged_losses(reference), abs=atol)
    ours, theirs = weights(run / "latest.pt"), weights(reference / "latest.pt")
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=atol)


def test_sigkill_on_2_processes_then_resume_on_1(tmp_path):
    data = str(parquet_corpus(tmp_path / "pq"))
    common = [*STREAMED, "--data", data, "--max_iters", "8", "--save_interval", "1"]
    whole = run_script("models/gpt.py", *common, "--accumulation_steps", "4", "--out_dir",
                       str(tmp_path / "whole"), cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node",
                             "2", str(REPO / "models/gpt.py"), *common, "--accumulation_steps",
                             "2", "--out_dir", str(out)], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if (out / "latest.pt").exists() and \
                torch.load(out / "latest.pt", weights_only=True)["step"] >= 3:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks at once
    proc.wait()
    step_at_kill = torch.load(out / "latest.pt", weights_only=True)["step"]
    assert 3 <= step_at_kill < 8
    resumed = run_script("models/gpt.py", *common, "--accumulation_steps", "4", "--out_dir",
                         str(out), "--resume", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    final, reference = weights(out / "latest.pt"), weights(tmp_path / "whole" / "latest.pt")
    for name in reference:
        torch.testing.assert_close(final[name], reference[name], rtol=0, atol=1e-5)
    changed = run_script("models/gpt.py", *common, "--accumulation_steps", "2", "--out_dir",
                         str(out), "--resume", "--max_iters", "9", cwd=tmp_path)
    assert_one_line_error(changed, "global batch is 8 rows per step, this run's is 4")


@pytest.mark.skipif(not (FIXTURES / "wikitext-2").exists(), reason="fixture absent")
def test_one_text_file_trains_as_well_streamed_as_prepared(tmp_path):
    """nanoGPT's character-level setup on one 1.2 MB file: every row of a batch is different
    text, so streaming it learns as well as reading prepared shards of it. (When every row was
    the same text, this run reached 2.50 streamed against 1.99 prepared.)"""
    text_file = str(FIXTURES / "wikitext-2" / "test.txt")
    prepare.main(["--data", text_file, "--tokenizer", "bytes", "--out", str(tmp_path / "shards"),
                  "--workers", "1"])
    losses = {}
    for name, data in (("streamed", text_file), ("prepared", str(tmp_path / "shards"))):
        model_config, train_config = small_run(
            tmp_path / name, data=data, block_size=64, n_layer=2, n_embd=64, batch_size=12,
            max_iters=300, eval_interval=300, eval_iters=8, warmup_iters=20, learning_rate=3e-3)
        losses[name] = train(model_config, train_config, byte_tokenizer())["best_val_loss"]
    assert losses["streamed"] < 2.4
    assert abs(losses["streamed"] - losses["prepared"]) < 0.1, losses
