"""Checkpoints (atomic, weights_only, self-contained) and the optimizer/schedule."""

import dataclasses
import errno

import pytest
import torch

from models import checkpoint as checkpoint_module
from models.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from models.optim import learning_rate_at, make_optimizer
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.params import ModelConfig, TrainConfig
from transformer_setup.transformer import GPT


def payload(model: GPT, step: int) -> dict:
    return {"model_config": dataclasses.asdict(model.config), "model": model.state_dict(),
            "tokenizer": byte_tokenizer().spec(), "step": step}


@pytest.mark.parametrize("tie", [False, True])
def test_checkpoint_alone_rebuilds_the_model_and_tokenizer(tmp_path, tie):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=257, vocab_multiple=64, block_size=16, n_layer=2,
                            n_head=2, n_embd=32, tie_embeddings=tie)).eval()
    save_checkpoint(payload(model, 5), tmp_path / "ckpt.pt")
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    loaded, tokenizer = model_from_checkpoint(ckpt)
    idx = torch.tensor([tokenizer.encode("checkpoint")])
    with torch.no_grad():
        assert torch.equal(loaded(idx), model(idx))
    assert ckpt["step"] == 5 and tokenizer.name == "bytes"


def test_a_crash_mid_write_leaves_the_previous_file(tmp_path, monkeypatch):
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16))
    path = tmp_path / "latest.pt"
    save_checkpoint(payload(model, 1), path)

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    def torn_write(obj, f, *args, **kwargs):  # how torch.save reports a failed write
        f.write(b"half a checkpoint")
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 64")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=f"no space left on the device writing {path}"):
        save_checkpoint(payload(model, 2), path)
    monkeypatch.setattr(checkpoint_module.torch, "save", torn_write)
    with pytest.raises(CheckpointError, match=f"unexpected pos 64 writing {path}"):
        save_checkpoint(payload(model, 2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temporary file left


def test_loading_never_runs_code(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"format": checkpoint_module.FORMAT, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_bad_files_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")


def test_learning_rate_schedule():
    config = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=10, max_iters=110)
    rates = [learning_rate_at(s, config) for s in range(110)]
    assert rates[0] == pytest.approx(0.1)
    assert rates.count(1.0) == 1 and rates[9] == 1.0  # the peak, once: the last warmup step
    assert rates[59] == pytest.approx(0.55)  # half way down the cosine
    assert rates[109] == 0.1  # the last step of the decay (of the run) is at min_lr
    assert learning_rate_at(500, config) == pytest.approx(0.1)
    assert all(a > b for a, b in zip(rates[9:], rates[10:], strict=False))
    no_warmup = TrainConfig(learning_rate=1.0, min_lr=0.1, warmup_iters=0, max_iters=3)
    assert [learning_rate_at(s, no_warmup) for s in range(3)] == pytest.approx([1.0, 0.55, 0.1])


def test_weight_decay_on_matrices_only():
    model = GPT(ModelConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16,
                            bias=True, norm="layernorm"))
    optimizer = make_optimizer(model, TrainConfig(weight_decay=0.1), torch.device("cpu"))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decayed["params"])
    assert all(p.dim() == 1 for p in plain["params"]) and plain["params"]
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
