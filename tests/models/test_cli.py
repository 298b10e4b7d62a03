"""The entry scripts as a user runs them: dry run, bad input, the quickstart, inference."""

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

import pytest
import torch

from tests.helpers import REPO, assert_one_line_error, run_script


def test_dry_run_counts_tinyllama_exactly(tmp_path):
    result = run_script("models/gpt.py", "--preset", "1b", "--n_layer", "22", "--n_embd", "2048",
                        "--n_head", "32", "--n_kv_head", "4", "--ffn_hidden", "5632",
                        "--vocab_size", "32000", "--dry_run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "parameters: 1,100,048,384" in result.stdout
    assert re.search(r"FLOPs per token .*: [\d,]+", result.stdout)
    assert re.search(r"training memory estimate .*: [\d.]+ GB", result.stdout)
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing trained


def test_dry_run_of_the_flagship(tmp_path):
    result = run_script("models/gpt.py", "--preset", "1b", "--dry_run", "--gpu_memory_gb", "80",
                        cwd=tmp_path)
    count = int(re.search(r"parameters: ([\d,]+)", result.stdout).group(1).replace(",", ""))
    assert 1.0e9 < count < 1.2e9
    plain, ckpt = map(int, re.search(r"largest micro-batch for 80 GB \(75.0 GB usable: .*\): "
                                     r"(\d+) without gradient checkpointing, (\d+) with",
                                     result.stdout).groups())
    assert 0 < plain < ckpt
    assert re.search(r"estimated speed on a 989 TFLOP/s GPU at 40% MFU: [\d,]+ tokens/s",
                     result.stdout)


def test_a_bare_dry_run_is_the_flagship(tmp_path):
    result = run_script("models/gpt.py", "--dry_run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "parameters: 1,060,578,816" in result.stdout
    assert "tokens per optimizer step: 294,912" in result.stdout


def seed_env(tmp_path, gpt2_tiktoken_file) -> dict[str, str]:
    """A user's environment with GPT-2's BPE file at hand and no way to reach the Hub, so that
    reading any FineWeb-Edu data would fail with another message."""
    return {**os.environ, "GPT2_TIKTOKEN_FILE": str(gpt2_tiktoken_file),
            "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the flagship")
def test_a_bare_run_on_a_cpu_stops_before_reading_data(tmp_path, gpt2_tiktoken_file):
    result = run_script("models/gpt.py", cwd=tmp_path, env=seed_env(tmp_path, gpt2_tiktoken_file))
    assert_one_line_error(result, "per optimizer step on this cpu", "--preset tiny",
                          "--device cpu")
    seconds = float(re.search(r"about ([\d,.]+) s", result.stderr).group(1).replace(",", ""))
    assert seconds > 600  # 6.35 GFLOP x 294,912 tokens: hours on a CPU
    assert list(tmp_path.iterdir()) == []  # no checkpoints_1B/, nothing read or written


def test_the_seeds_commands_from_models_write_checkpoints_1B_there(tmp_path, gpt2_tiktoken_file):
    """`cd models; nohup python3 -u gpt.py > train.log 2>&1`, shrunk by flags to one CPU step on
    a local file, then `python3 inference.py checkpoints_1B/best_model.pt` from that folder."""
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (tmp_path / "corpus.txt").write_text("".join(
        f"Line {i} of a small corpus about plants, light and water.\n" for i in range(3000)))
    env = seed_env(tmp_path, gpt2_tiktoken_file)
    small = ["--device", "cpu", "--max_iters", "1", "--data", "../corpus.txt", "--data_workers",
             "0", "--n_layer", "1", "--n_embd", "64", "--n_head", "2", "--block_size", "32",
             "--global_batch_tokens", "64", "--eval_iters", "1", "--sample_tokens", "0",
             "--log_interval", "1"]
    with open(models_dir / "train.log", "w") as log:
        result = subprocess.run([sys.executable, "-u", str(REPO / "models/gpt.py"), *small],
                                cwd=models_dir, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=300)
    text = (models_dir / "train.log").read_text()
    assert result.returncode == 0, text
    assert "\r" not in text  # plain lines, no progress bar
    assert re.search(r"^step 1/1 \| loss [\d.]+ \| lr", text, re.M)
    ckpt = torch.load(models_dir / "checkpoints_1B" / "latest.pt", weights_only=True)
    assert ckpt["step"] == 1 and ckpt["tokenizer"]["name"] == "gpt2"
    assert ckpt["train_config"]["global_batch_tokens"] == 64  # the 1b preset, shrunk by flags
    assert ckpt["train_config"]["data_config"] is None and ckpt["model_config"]["n_layer"] == 1
    sample = run_script("models/inference.py", "checkpoints_1B/best_model.pt", "--prompt",
                        "Light and", "--max_new_tokens", "4", cwd=models_dir, env=env)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout.strip()  # four tokens of (untrained) text


def test_largest_micro_batch_is_the_last_that_fits():
    from models.estimate import largest_micro_batch, training_memory
    from transformer_setup.params import build_configs

    config, _ = build_configs("1b")
    n_params = 1_060_578_816
    best = largest_micro_batch(config, n_params, torch.bfloat16, 72e9)
    assert training_memory(config, n_params, best, torch.bfloat16).total <= 72e9
    assert training_memory(config, n_params, best + 1, torch.bfloat16).total > 72e9


def test_unwritable_output_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_script("models/gpt.py", "--preset", "tiny", "--out_dir", str(blocker / "out"),
                        cwd=tmp_path)
    assert_one_line_error(result, "cannot create", "Not a directory")


def logged_losses(stdout: str) -> list[float]:
    return [float(m) for m in re.findall(r"^step \d+/\d+ \| loss ([\d.]+)", stdout, re.M)]


def test_quickstart_trains_and_writes_checkpoints(quickstart):
    out_dir, result = quickstart
    losses = logged_losses(result.stdout)
    assert len(losses) == 4
    # Step 10's loss is already low: 40 steps shorten the preset's warmup of 30 to 20 (a warmup
    # longer than the decay after it), so the rate is at its peak sooner.
    assert losses[-1] < losses[0] - 0.5 and losses[-1] < 3.0, losses  # ln(257)=5.5 at first
    val = [float(v) for v in re.findall(r"^step \d+: val loss ([\d.]+)", result.stdout, re.M)]
    assert len(val) == 3 and val[2] < val[1] < val[0]
    assert val[0] == pytest.approx(5.55, abs=0.1)  # step 0: about ln(257), uniform over the ids
    for name in ("latest.pt", "best_model.pt"):
        ckpt = torch.load(out_dir / name, weights_only=True)
        assert ckpt["step"] in (20, 40) and ckpt["tokenizer"]["name"] == "bytes"
    assert torch.load(out_dir / "latest.pt", weights_only=True)["step"] == 40
    assert list(out_dir.glob("events.out.tfevents.*"))


def test_quickstart_checkpoint_samples_text(quickstart, tmp_path):
    out_dir, _ = quickstart
    args = ["models/inference.py", str(out_dir / "best_model.pt"), "--prompt", "The ",
            "--max_new_tokens", "40", "--seed", "3"]
    first = run_script(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    text = first.stdout.strip()
    assert len(text) >= 10 and sum(c.isalpha() for c in text) >= 5, text
    assert run_script(*args, cwd=tmp_path).stdout == first.stdout  # same seed, same text


def read_until(fd: int, pattern: str, timeout: float = 60.0) -> str:
    seen, deadline = b"", time.monotonic() + timeout
    while pattern.encode() not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
    return seen.decode(errors="replace")


def test_interactive_loop_through_a_terminal(quickstart):
    out_dir, _ = quickstart
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([sys.executable, str(REPO / "models/inference.py"),
                             str(out_dir / "best_model.pt"), "--max_new_tokens", "20"],
                            stdin=terminal, stdout=terminal, stderr=terminal, close_fds=True)
    os.close(terminal)
    try:
        assert "> " in read_until(controller, "> ")
        os.write(controller, b"The function\n")
        reply = read_until(controller, "> ")
        assert reply.count("> ") >= 1 and len(reply.strip()) > len("The function")
        os.write(controller, b"exit\n")
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        os.close(controller)


def test_end_of_input_ends_the_loop_cleanly(quickstart, tmp_path):
    out_dir, _ = quickstart
    result = run_script("models/inference.py", str(out_dir / "best_model.pt"),
                        "--max_new_tokens", "5", cwd=tmp_path, stdin="hello\n")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.count("> ") == 2


def test_truncated_checkpoint_is_one_clear_line(quickstart, tmp_path):
    out_dir, _ = quickstart
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((out_dir / "best_model.pt").read_bytes()[:5000])
    result = run_script("models/inference.py", str(truncated), "--prompt", "x", cwd=tmp_path)
    assert_one_line_error(result, "truncated")


def test_every_flag_is_explained_and_a_preset_shows_its_values(tmp_path):
    from models.gpt import make_parser
    from transformer_setup.params import ModelConfig, TrainConfig

    helps = {action.dest: action.help for action in make_parser()._actions}
    for name in [*ModelConfig.__dataclass_fields__, *TrainConfig.__dataclass_fields__]:
        assert helps[name].split("(default: ")[0].strip(), f"--{name} has no description"
    tiny = re.sub(r"\s+", " ", run_script("models/gpt.py", "--preset", "tiny", "--help",
                                          cwd=tmp_path).stdout)
    assert "(default: bytes with --preset tiny)" in tiny
    assert "(default: out/tiny with --preset tiny)" in tiny


def test_the_first_command_offline_points_to_the_tiny_preset(tmp_path):
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    env.pop("GPT2_TIKTOKEN_FILE", None)
    result = run_script("models/gpt.py", cwd=tmp_path, env=env, timeout=120)
    assert_one_line_error(result, "GPT-2's BPE", "--preset tiny")


def test_perplexity_shows_progress_on_a_terminal(quickstart, tmp_path):
    out_dir, _ = quickstart
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 wide
    proc = subprocess.Popen([sys.executable, str(REPO / "evaluation/eval_perplexity.py"),
                             str(out_dir / "best_model.pt"), "--data", "pydocs",
                             "--max_tokens", "3000"],
                            stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                            close_fds=True)
    os.close(terminal)
    try:
        text = read_until(controller, "bits per byte", timeout=120)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        os.close(controller)
    assert "scoring" in text and "%|" in text, text
