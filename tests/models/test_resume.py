"""Resume and schedule you can trust: a resumed run continues the run it resumes whatever flags
are repeated, extending it keeps its decay, a skipped fp16 step counts as skipped, numbered
checkpoints rotate within their lineage, and a step's loss weighs every target token once."""

import re
import shutil
from collections import namedtuple
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from models import distributed, run_dir
from models.device import autocast
from models.distributed import Distributed
from models.gpt import main
from models.optim import coherent_schedule, learning_rate_at
from models.trainer import TrainingError, optimizer_step, train
from tests.models.test_training import TINY_RUN, small_run, weights
from tokenization.tokenizer import Tokenizer, byte_tokenizer
from transformer_setup.cli import UserError
from transformer_setup.params import ModelConfig, build_configs
from transformer_setup.transformer import GPT

# The run: a short schedule with no warmup, so every step's rate differs (AdamW: Muon's
# steps take ten times as long on a CPU).
RUN = [*TINY_RUN, "--batch_size", "2", "--data_workers", "0", "--learning_rate", "1e-3",
       "--min_lr", "1e-4", "--warmup_iters", "0", "--eval_iters", "1", "--tensorboard", "false",
       "--optimizer", "adamw"]


def logged_rates(out_dir) -> dict[int, str]:
    text = (out_dir / "train.log").read_text()
    return {int(s): lr for s, lr in re.findall(r"^step (\d+)/\d+ \| .*? \| lr ([\d.e+-]+)", text,
                                               re.M)}


def resume_block(out_dir) -> str:
    text = (out_dir / "train.log").read_text()
    start = text.rindex("resumed from")
    return text[start:text.index("\nrun:", start)]  # the session's head follows the block


def test_resume_with_only_the_flag_continues_the_run_bitwise(tmp_path):
    """Nothing repeated but the preset: the resumed steps use the saved rates, bit for bit."""
    whole = tmp_path / "whole"
    main([*RUN, "--max_iters", "8", "--save_interval", "4", "--keep_checkpoints", "2",
          "--out_dir", str(whole)])
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(whole / "ckpt_0000004.pt", resumed / "latest.pt")
    main(["--preset", "tiny", "--resume", "--out_dir", str(resumed)])
    assert resume_block(resumed).endswith("at step 4 with the checkpoint's configuration")
    final, reference = weights(resumed / "latest.pt"), weights(whole / "latest.pt")
    assert all(torch.equal(final[name], reference[name]) for name in reference)
    ours, theirs = (torch.load(d / "latest.pt", weights_only=True)["optimizer"]
                    for d in (resumed, whole))
    assert [g["lr"] for g in ours["param_groups"]] == [g["lr"] for g in theirs["param_groups"]]
    assert logged_rates(resumed) == {s: r for s, r in logged_rates(whole).items() if s > 4}


def test_extending_a_run_keeps_its_decay_and_stretching_it_is_explicit(tmp_path):
    out = tmp_path / "run"
    main([*RUN, "--max_iters", "6", "--out_dir", str(out)])
    assert logged_rates(out)[6] == "1.00e-04"  # the last step of the decay is at min_lr
    main(["--resume", "--out_dir", str(out), "--max_iters", "8"])
    rates = logged_rates(out)
    assert [rates[s] for s in (6, 7, 8)] == ["1.00e-04"] * 3  # continuous: stays at min_lr
    block = resume_block(out)
    assert "  max_iters: 6 -> 8\n" in block
    assert "the learning rate at step 7: 1.000e-04 -> 1.000e-04" in block
    with pytest.raises(UserError, match=r"cannot resume: max_iters 8 -> 12, lr_decay_iters 6 "
                       r"-> 12 would move the learning rate at step 9 from 1\.000e-04 to "
                       r".*--allow_schedule_change"):
        main(["--resume", "--out_dir", str(out), "--max_iters", "12", "--lr_decay_iters", "12"])
    main(["--resume", "--out_dir", str(out), "--max_iters", "12", "--lr_decay_iters", "12",
          "--allow_schedule_change"])
    assert "(--allow_schedule_change)" in resume_block(out)
    assert float(logged_rates(out)[9]) > 1e-4 and logged_rates(out)[12] == "1.00e-04"
    with pytest.raises(UserError, match="min_lr 0.0001 -> 5e-05 would move"):  # not carried on
        main(["--resume", "--out_dir", str(out), "--max_iters", "13", "--min_lr", "5e-5"])


def test_a_flag_that_moves_the_rate_is_refused_in_one_line(tmp_path):
    """Stopped half way down its decay, a run given the preset's peak again (as the old resume
    did by itself, a 19x jump at step 5) is refused."""
    out = tmp_path / "run"
    main([*RUN, "--max_iters", "4", "--lr_decay_iters", "8", "--out_dir", str(out)])
    with pytest.raises(UserError, match=r"^cannot resume: max_iters 4 -> 8, learning_rate 0\.001 "
                       r"-> 0\.008 would move the learning rate at step 5 from 4\.499e-04 to "
                       r"3\.171e-03 \(x7\.05\); add --allow_schedule_change"):
        main(["--preset", "tiny", "--resume", "--out_dir", str(out), "--max_iters", "8",
              "--learning_rate", "8e-3"])
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 4  # untouched


def test_the_tokenizer_is_compared_by_what_it_computes(tmp_path):
    """A renamed copy of a tokenizer folder resumes; a deleted one resumes from the copy the
    checkpoint carries (another tokenizer is refused: test_training)."""
    reversed_bytes = Tokenizer("reversed", {bytes([255 - i]): i for i in range(256)},
                               {"<|endoftext|>": 256})
    reversed_bytes.save(tmp_path / "tok")
    out = tmp_path / "run"
    main([*RUN, "--max_iters", "2", "--tokenizer", str(tmp_path / "tok"), "--out_dir", str(out)])
    (tmp_path / "tok").rename(tmp_path / "renamed")
    main(["--resume", "--out_dir", str(out), "--max_iters", "3", "--tokenizer",
          str(tmp_path / "renamed")])
    assert f"tokenizer: {tmp_path / 'tok'} -> {tmp_path / 'renamed'}" in resume_block(out)
    shutil.rmtree(tmp_path / "renamed")
    main(["--resume", "--out_dir", str(out), "--max_iters", "4"])
    ckpt = torch.load(out / "latest.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert Tokenizer.from_spec(ckpt["tokenizer"]).fingerprint() == reversed_bytes.fingerprint()


# ----------------------------------------------------------------------------- schedules

def test_a_warmup_longer_than_the_decay_is_shortened_with_a_note(tmp_path):
    _, smoke = build_configs("tiny", {"max_iters": 20})  # warmup 30: it never decayed
    config, note = coherent_schedule(smoke)
    assert config.warmup_iters == 10 and "shortened to 10 steps" in note
    rates = [learning_rate_at(s, config) for s in range(20)]
    assert rates.count(max(rates)) == 1 and max(rates) == smoke.learning_rate
    assert rates[-1] == smoke.min_lr and rates[-2] > 1.1 * smoke.min_lr  # no one-step drop
    _, long_warmup = build_configs("tiny", {"warmup_iters": 100, "max_iters": 20})
    steps = [learning_rate_at(s, coherent_schedule(long_warmup)[0]) for s in range(20)]
    assert all(b > 0.5 * a for a, b in zip(steps, steps[1:], strict=False) if a > b)
    model_config, train_config = small_run(tmp_path, max_iters=6, warmup_iters=30)
    train(model_config, train_config, byte_tokenizer())
    assert "note: warmup_iters 30 is longer than the decay after it (lr_decay_iters 6): " \
        "shortened to 3 steps" in (tmp_path / "train.log").read_text()
    assert torch.load(tmp_path / "latest.pt", weights_only=True)["train_config"][
        "warmup_iters"] == 3


# ----------------------------------------------------------------------------- fp16 overflow

class InfiniteGradient(torch.autograd.Function):
    """The identity forward, an overflowing gradient backward: what fp16 does on a bad step."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def overflow(monkeypatch, bad_calls: set[int] | None):
    """Training forwards on the given calls (from the first if None) get infinite gradients,
    their loss staying finite."""
    real_forward, calls = GPT.forward, [0]

    def forward(self, idx, targets=None, start=0, **kwargs):
        out = real_forward(self, idx, targets, start, **kwargs)
        if targets is None or not self.training:
            return out
        calls[0] += 1
        return InfiniteGradient.apply(out) if bad_calls is None or calls[0] in bad_calls else out

    monkeypatch.setattr(GPT, "forward", forward)


def test_an_fp16_overflow_is_a_skipped_step(monkeypatch):
    config = ModelConfig(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    x, y = torch.randint(0, 101, (4, 16)), torch.randint(0, 101, (4, 16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    overflow(monkeypatch, bad_calls=None)
    result = optimizer_step(model, optimizer, scaler,
                            [(x, y)], autocast(torch.device("cpu"), torch.float16), 1.0)
    assert result.skipped and scaler.get_scale() == 2.0**15
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fp16_overflows_are_counted_and_stop_the_run(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path / "one", max_iters=5, dtype="fp16")
    overflow(monkeypatch, bad_calls={2})
    train(model_config, train_config, byte_tokenizer())
    log = (tmp_path / "one" / "train.log").read_text()
    assert "warning: step 2: fp16 gradient overflow (loss scale now 32768)" in log
    assert "done: 5 steps (1 skipped)" in log
    monkeypatch.undo()
    model_config, train_config = small_run(tmp_path / "many", max_iters=20, dtype="fp16",
                                           max_bad_steps=3)
    overflow(monkeypatch, bad_calls=set(range(3, 100)))
    with pytest.raises(TrainingError, match="3 skipped steps in a row at step 5"):
        train(model_config, train_config, byte_tokenizer())


# ----------------------------------------------------------------------------- checkpoints

def test_numbered_checkpoints_rotate_within_the_lineage_after_a_roll_back(tmp_path):
    """Files 2, 4, 6, 8; roll back to 2 and continue with --keep_checkpoints 2: the new files
    are kept, the abandoned branch's 6 and 8 are left alone (by name order, the old rotation
    deleted every file the resumed run wrote)."""
    out = tmp_path / "run"
    main([*RUN, "--max_iters", "8", "--save_interval", "2", "--keep_checkpoints", "4",
          "--out_dir", str(out)])
    abandoned = {s: (out / f"ckpt_{s:07d}.pt").stat().st_mtime_ns for s in (6, 8)}
    shutil.copy(out / "ckpt_0000002.pt", out / "latest.pt")
    main(["--resume", "--out_dir", str(out), "--max_iters", "5", "--save_interval", "1",
          "--keep_checkpoints", "2"])
    assert sorted(p.name for p in out.glob("ckpt_*.pt")) == [
        "ckpt_0000004.pt", "ckpt_0000005.pt", "ckpt_0000006.pt", "ckpt_0000008.pt"]
    assert torch.load(out / "ckpt_0000005.pt", weights_only=True)["step"] == 5
    assert {s: (out / f"ckpt_{s:07d}.pt").stat().st_mtime_ns for s in (6, 8)} == abandoned
    assert torch.load(out / "latest.pt", weights_only=True)["numbered_checkpoints"] == [4, 5]


def test_the_room_check_counts_every_kept_checkpoint(tmp_path, monkeypatch):
    model_config, train_config = small_run(tmp_path, keep_checkpoints=3)
    needed = 12 * GPT(model_config).num_params() + (1 << 20)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_dir.shutil, "disk_usage",
                        lambda path: usage(10**12, 0, int(2.5 * needed)))
    with pytest.raises(UserError, match="latest.pt and 3 numbered copies"):
        train(model_config, train_config, byte_tokenizer())


# ----------------------------------------------------------------------------- the loss

CONFIG = ModelConfig(vocab_size=101, block_size=8, n_layer=2, n_head=2, n_embd=32)
KEPT = ((16, 4), (1, 11))  # targets kept per micro-batch of 2 x 8, on rank 0 and rank 1


def masked_batches() -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Two ranks x two micro-batches, with -1 (ignored) targets at very uneven counts."""
    generator = torch.Generator().manual_seed(0)
    ranks = []
    for kept_counts in KEPT:
        micro = []
        for kept in kept_counts:
            x = torch.randint(0, 101, (2, 8), generator=generator)
            y = torch.randint(0, 101, (2, 8), generator=generator).flatten()
            y[kept:] = -1
            micro.append((x, y.view(2, 8)))
        ranks.append(micro)
    return ranks


def one_masked_rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = GPT(CONFIG)
        d = Distributed(rank, rank, 2)
        wrapped = distributed.wrap(model, d, torch.device("cpu"), fsdp=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        result = optimizer_step(wrapped, optimizer, scaler, masked_batches()[rank],
                                nullcontext(), 0.0, d)
        if rank == 0:
            torch.save({"loss": result.loss, "weights": model.state_dict()}, out)
        dist.barrier()  # leave together (see distributed.teardown)
    finally:
        dist.destroy_process_group()


def test_the_loss_is_the_mean_over_the_global_batchs_target_tokens(tmp_path):
    torch.multiprocessing.spawn(one_masked_rank, args=(str(tmp_path / "init"),
                                                       str(tmp_path / "out.pt")), nprocs=2)
    ranks = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.manual_seed(0)
    model = GPT(CONFIG)
    pairs = [pair for rank in masked_batches() for pair in rank]
    x, y = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    loss = F.cross_entropy(model(x).reshape(-1, 101), y.reshape(-1), ignore_index=-1)
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert ranks["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ranks["weights"][name], value, rtol=1e-5, atol=1e-6)


def test_an_auto_micro_batch_is_chosen_again_on_every_resume(tmp_path):
    """Saved as given (auto), so a run may resume on other cards or GPU counts."""
    out = tmp_path / "run"
    main(["--preset", "tiny", "--block_size", "32", "--max_iters", "2", "--sample_tokens", "0",
          "--val_tokens", "1024", "--data_workers", "0", "--tensorboard", "false",
          "--out_dir", str(out)])
    ckpt = torch.load(out / "latest.pt", weights_only=True)
    assert ckpt["train_config"]["batch_size"] is None and ckpt["micro_batch"] == 128
    main(["--resume", "--max_iters", "3", "--out_dir", str(out)])
    assert "batch_size" not in resume_block(out)  # not a change


def test_muon_and_runtime_flags_on_resume_are_seen(tmp_path):
    out = tmp_path / "run"
    main([*RUN[:-2], "--max_iters", "3", "--warmup_iters", "0", "--out_dir", str(out)])
    with pytest.raises(UserError, match="Muon.s learning rate at step 4 .* \\(x80.00\\)"):
        main(["--resume", "--max_iters", "4", "--muon_lr", "0.08", "--out_dir", str(out)])
    main(["--resume", "--max_iters", "4", "--dropout", "0.1", "--out_dir", str(out)])
    assert "dropout: 0.0 -> 0.1" in resume_block(out)


def test_the_room_check_counts_the_checkpoints_a_resume_replaces(tmp_path, monkeypatch):
    (tmp_path / "latest.pt").write_bytes(b"\0" * 1000)
    (tmp_path / "ckpt_0000010.pt").write_bytes(b"\0" * 1000)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(run_dir.shutil, "disk_usage", lambda path: usage(0, 0, 1500))
    with pytest.raises(UserError, match="free"):
        run_dir.check_room(tmp_path, 1000, numbered=1)  # a new run would need 2,000
    assert run_dir.check_room(tmp_path, 1000, numbered=1,
                              written=run_dir.written_checkpoints(tmp_path)) is None
