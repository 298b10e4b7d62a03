"""Muon beside AdamW: what each trains, that Muon's update is orthogonalised, and that it
resumes and distributes as exactly as AdamW."""

import dataclasses

import pytest
import torch

from models.optim import Muon, Optimizers, make_optimizer, muon_parameters
from models.trainer import train
from tests.helpers import run_script
from tests.models.test_training import (
    STREAMED,
    assert_same_run,
    kill_and_resume,
    logged_losses,
    parquet_corpus,
    small_run,
    torchrun,
)
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.params import ConfigError, ModelConfig, TrainConfig, build_configs
from transformer_setup.transformer import GPT


def test_muon_trains_the_blocks_matrices_and_adamw_the_rest():
    model = GPT(ModelConfig(vocab_size=101, block_size=16, n_layer=2, n_head=2, n_embd=32,
                            bias=True, pos_emb="learned"))
    optimizer = make_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    assert isinstance(optimizer, Optimizers)
    names = {id(p): name for name, p in model.named_parameters()}
    muon = {names[id(p)] for g in optimizer.optimizers["muon"].param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in optimizer.optimizers["adamw"].param_groups
             for p in g["params"]}
    assert muon == {name for name, _ in muon_parameters(model)} == {
        f"blocks.{i}.{m}.weight" for i in range(2)
        for m in ("attn.qkv_proj", "attn.out_proj", "mlp.up_proj", "mlp.down_proj")}
    assert {"tok_emb.weight", "pos_emb.weight", "lm_head.weight", "norm_f.weight",
            "blocks.0.attn_norm.weight", "blocks.0.attn.qkv_proj.bias"} <= adamw
    assert not muon & adamw and muon | adamw == set(names.values())


def test_muons_update_of_a_matrix_is_orthogonalised():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(64, 64))
    u, _, v = torch.linalg.svd(torch.randn(64, 64))
    weight.grad = u @ torch.diag(torch.logspace(0, -2, 64)) @ v.T  # singular values 1 .. 0.01
    muon = Muon([weight], lr=1.0, weight_decay=0.0, momentum=0.0, nesterov=False)
    muon.step()
    update = -weight.detach()  # from zero, one step of lr 1 (a square matrix: no scaling)
    singular = torch.linalg.svdvals(update)
    # Five steps of the quintic Newton-Schulz iteration bring every singular value near 1 (the
    # method trades exactness for speed: about 0.7 to 1.2), where the gradient's spanned 100x.
    assert 0.6 < singular.min() and singular.max() < 1.25, singular


def test_muon_on_cpu_takes_torchs_steps_in_float32():
    """Our CPU step (float32 iteration) against torch.optim.Muon's (bfloat16 iteration): the
    same momentum, Nesterov, decay and match_rms_adamw scale, so the weights agree to bf16's
    precision over several steps; the float32 ones are closer to an exact orthogonalisation."""
    torch.manual_seed(0)
    start = torch.randn(48, 96) * 0.02
    weights = [torch.nn.Parameter(start.clone()) for _ in range(2)]
    settings = {"lr": 0.01, "weight_decay": 0.1, "momentum": 0.9,
                "adjust_lr_fn": "match_rms_adamw"}
    ours, torchs = Muon([weights[0]], **settings), torch.optim.Muon([weights[1]], **settings)
    for _ in range(4):
        grad = torch.randn(48, 96)
        for weight, optimizer in zip(weights, (ours, torchs)):
            weight.grad = grad.clone()
            optimizer.step()
    moved = (weights[1] - start).abs().max()
    assert (weights[0] - weights[1]).abs().max() < 0.02 * moved
    assert set(ours.state[weights[0]]) == set(torchs.state[weights[1]]) == {"momentum_buffer"}


def test_a_short_muon_run_lowers_the_loss(tmp_path):
    model_config, train_config = small_run(tmp_path, optimizer="muon", max_iters=30,
                                           eval_interval=30, learning_rate=3e-3)
    losses = []
    result = train(model_config, train_config, byte_tokenizer())
    losses = logged_losses(tmp_path)
    assert losses[-1] < losses[0] - 1.0 and result["best_val_loss"] < 3.5


def test_muon_resumes_bitwise_after_sigkill(tmp_path):
    kill_and_resume(tmp_path, "--optimizer", "muon")


def test_muon_on_2_processes_equals_one(tmp_path):
    data = str(parquet_corpus(tmp_path / "pq"))
    args = [*STREAMED, "--data", data, "--optimizer", "muon", "--data_workers", "0"]
    single = run_script("models/gpt.py", *args, "--accumulation_steps", "2", "--out_dir",
                        str(tmp_path / "one"), cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    double = torchrun(2, *args, "--accumulation_steps", "1", "--out_dir", str(tmp_path / "two"),
                      cwd=tmp_path)
    assert double.returncode == 0, double.stderr
    assert_same_run(tmp_path / "two", tmp_path / "one")


def test_muon_with_fsdp_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="muon with fsdp is not supported"):
        build_configs("tiny", {"optimizer": "muon", "fsdp": True})
    _, tc = build_configs("tiny", {"optimizer": "muon"})
    assert dataclasses.replace(tc, muon_lr=0.01).muon_lr == 0.01


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_muon_under_mixed_precision(tmp_path, dtype):
    model_config, train_config = small_run(tmp_path, optimizer="muon", dtype=dtype, max_iters=3)
    result = train(model_config, train_config, byte_tokenizer())
    ckpt = torch.load(tmp_path / "latest.pt", weights_only=True)
    assert result["step"] == 3 and set(ckpt["optimizer"]) == {"adamw", "muon"}
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
