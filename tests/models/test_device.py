"""Honest reporting on GPUs, checked without one: peak FLOPs by exact device name and dtype
(unknown cards have no MFU), bf16 only where the hardware has it, TF32 for fp32 matmuls, the
allocator's expandable segments, and a first step timed without evaluation."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
import torch

from models import trainer as trainer_module
from models.device import (
    enable_tf32,
    peak_flops,
    peak_flops_of,
    resolve_dtype,
    use_expandable_segments,
)
from models.trainer import train
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.cli import UserError
from transformer_setup.params import build_configs

BF16, FP16, FP32 = torch.bfloat16, torch.float16, torch.float32

# Names as torch.cuda.get_device_name returns them, with the dense peak the run is scored on.
KNOWN = [
    ("NVIDIA H100 80GB HBM3", BF16, 989e12),  # SXM5
    ("NVIDIA H100 80GB HBM3", FP32, 494e12),  # fp32 runs: the TF32 peak
    ("NVIDIA H100 PCIe", BF16, 756e12),
    ("NVIDIA H100 NVL", BF16, 835e12),
    ("NVIDIA H200", BF16, 989e12),
    ("NVIDIA H200 NVL", BF16, 835e12),
    ("NVIDIA H800", BF16, 989e12),
    ("NVIDIA A100-SXM4-80GB", BF16, 312e12),
    ("NVIDIA A100-SXM4-40GB", FP16, 312e12),
    ("NVIDIA A100 80GB PCIe", BF16, 312e12),
    ("NVIDIA A100-PCIE-40GB", FP32, 156e12),
    ("NVIDIA L40S", BF16, 362e12),
    ("NVIDIA L40", BF16, 181e12),
    ("NVIDIA L4", BF16, 121e12),
    ("NVIDIA B200", BF16, 2250e12),
    ("NVIDIA GeForce RTX 4090", BF16, 165.2e12),
    ("Tesla V100-SXM2-16GB", FP16, 125e12),
]
UNKNOWN = [
    ("NVIDIA H100", BF16),  # no such name: never another card's figure by a prefix
    ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", BF16),  # a slice of the card, not the card
    ("NVIDIA A100-SXM4-80GB MIG 1g.10gb", BF16),
    ("NVIDIA GeForce RTX 4090 D", BF16),  # a cut-down 4090
    ("NVIDIA L4 ", BF16),
    ("NVIDIA RTX 6000 Ada Generation", BF16),  # not in the table
    ("Tesla V100-SXM2-16GB", BF16),  # no bf16 in hardware
    ("Tesla T4", FP32),  # no TF32
    ("AMD Instinct MI300X", BF16),
]


@pytest.mark.parametrize("name,dtype,flops", KNOWN)
def test_peak_flops_of_known_cards_by_exact_name_and_dtype(name, dtype, flops):
    assert peak_flops_of(name, dtype) == flops


@pytest.mark.parametrize("name,dtype", UNKNOWN)
def test_peak_flops_of_other_names_is_unknown(name, dtype):
    assert peak_flops_of(name, dtype) is None


@pytest.fixture
def gpu(monkeypatch):
    """A simulated CUDA device: its name and compute capability."""
    card = {"name": "NVIDIA H100 80GB HBM3", "capability": (9, 0)}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: card["name"])
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda device=None: card["capability"])
    precision = torch.get_float32_matmul_precision()
    yield card
    torch.set_float32_matmul_precision(precision)


def test_fp32_runs_are_scored_against_tf32_only_when_tf32_is_on(gpu):
    cuda = torch.device("cuda")
    torch.set_float32_matmul_precision("highest")
    assert peak_flops(cuda, FP32) is None  # plain fp32: CUDA cores, not in the table
    assert enable_tf32(cuda) and torch.get_float32_matmul_precision() == "high"
    assert peak_flops(cuda, FP32) == 494e12 and peak_flops(cuda, BF16) == 989e12
    assert peak_flops(torch.device("cpu"), BF16) is None


def test_tf32_stays_off_where_the_card_has_none(gpu):
    gpu["capability"] = (7, 0)  # V100
    torch.set_float32_matmul_precision("highest")
    assert not enable_tf32(torch.device("cuda"))
    assert torch.get_float32_matmul_precision() == "highest"


def test_bf16_only_where_the_hardware_has_it(gpu):
    cuda = torch.device("cuda")
    assert resolve_dtype("auto", cuda) == BF16
    gpu["capability"] = (7, 5)  # T4: torch.cuda.is_bf16_supported() says True (emulation)
    assert resolve_dtype("auto", cuda) == FP16  # and a gradient scaler
    with pytest.raises(UserError, match="compute capability 7.5\\) only emulates bf16"):
        resolve_dtype("bf16", cuda)
    assert resolve_dtype("fp16", cuda) == FP16
    assert resolve_dtype("auto", torch.device("cpu")) == FP32


def test_expandable_segments_unless_the_user_chose(monkeypatch):
    for name in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        monkeypatch.delenv(name, raising=False)
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    use_expandable_segments()
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:512"


def test_the_first_step_is_timed_without_evaluation_and_sampling(tmp_path, monkeypatch):
    """Evaluation and sampling at step 0 take 1,000 s on a simulated clock; the first step's
    reported time must not include them. The trainer also sets expandable segments itself."""
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    offset = [0.0]
    monkeypatch.setattr(trainer_module.Throughput, "clock",
                        staticmethod(lambda: trainer_module.time.perf_counter() + offset[0]))
    evaluate_and_sample = trainer_module.Run.evaluate_and_sample

    def slow(self, writer):
        evaluate_and_sample(self, writer)
        offset[0] += 1000.0

    monkeypatch.setattr(trainer_module.Run, "evaluate_and_sample", slow)
    model_config, tc = build_configs("tiny", dict(
        block_size=32, data_workers=0, batch_size=4, max_iters=2, eval_iters=1, log_interval=1,
        sample_tokens=4, out_dir=str(tmp_path), tensorboard=False))
    train(dataclasses.replace(model_config, vocab_size=257), tc, byte_tokenizer())
    first = float(re.search(r"first step: ([\d.]+) s", (tmp_path / "train.log").read_text())[1])
    assert first < 1000
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
