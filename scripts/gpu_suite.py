"""Every GPU figure in one command, each line printed as it is measured, within a time budget.

    python scripts/gpu_suite.py                      # on a GPU: about 8 minutes on one H100
    python scripts/gpu_suite.py --smoke              # tiny shapes on the CPU: checks it runs

Sections, most important first (the rest are skipped once --budget_s is spent):
1. environment: GPU, memory, torch, CUDA, flash-attn;
2. the 1b preset as shipped (bf16, compiled, the auto micro-batch without recomputation): ms per
   micro-batch, tokens/s, MFU, HFU, compile time, peak memory against the estimate;
3. transformers' LlamaForCausalLM of the same shape and micro-batch, compiled, same weights and
   targets: the ratio;
4. the old preset for the ratio: full gradient checkpointing at micro-batch 72;
5. eager (not compiled), ours and transformers';
6. decode tokens/s of the 24-layer model, ours against transformers' generate, identical ids;
7. fp16 with a GradScaler for a few steps;
8. the real trainer: `models/gpt.py --preset 1b --max_iters 15` on generated text, for its own
   MFU line;
9. selective checkpointing at the auto micro-batch;
10. flash-attn against SDPA, where flash-attn is importable.

A measurement is a few micro-batches of forward and backward and one AdamW step (accumulation,
as the preset trains), after a warm-up that includes compilation. Figures go to
docs/BENCHMARKS.md with the date, device, command and commit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from transformer_setup.cli import ArgumentParser, positive_int, run_main
from transformer_setup.params import ModelConfig, build_configs

if TYPE_CHECKING:
    import torch

# torch and the model are imported inside the sections: --help answers at once.

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Setup:
    """What every section shares: device, dtype, shapes and the time budget."""

    device: torch.device
    dtype: torch.dtype
    config: ModelConfig  # the 1b preset (smoke: a tiny shape of the same family)
    micro_batch: int
    micro_steps: int  # micro-batches per measured optimizer step
    repeat: int
    deadline: float
    smoke: bool
    rows: list[dict] = dataclasses.field(default_factory=list)

    def report(self, row: dict) -> None:
        self.rows.append(row)
        print(json.dumps(row, default=str), flush=True)

    def time_left(self) -> bool:
        return time.monotonic() < self.deadline


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(s: Setup, model: torch.nn.Module, loss_fn, batch: torch.Tensor, compile_model: bool,
            dtype: torch.dtype | None = None, scaler: torch.amp.GradScaler | None = None
            ) -> dict:
    """Seconds of the first optimizer step (compilation included) and of the best later one,
    and the peak memory: each step is micro_steps forward/backward passes and one AdamW step."""
    import torch

    from models.device import autocast

    dtype = dtype or s.dtype
    ctx = autocast(s.device, dtype)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=s.device.type == "cuda")
    runner = torch.compile(model) if compile_model else model
    scaler = scaler or torch.amp.GradScaler(s.device.type, enabled=False)
    losses = []

    def step() -> None:
        for _ in range(s.micro_steps):
            with ctx:
                loss = loss_fn(runner, batch) / s.micro_steps
            scaler.scale(loss).backward()
            losses.append(loss.detach() * s.micro_steps)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    sync(s.device)
    start = time.perf_counter()
    step()
    sync(s.device)
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(s.repeat):
        start = time.perf_counter()
        step()
        sync(s.device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(s.device) / 1e9 if s.device.type == "cuda" else None
    return {"first_step_s": first, "step_s": best, "peak_memory_gb": peak,
            "final_loss": float(losses[-1]), "finite": bool(torch.stack(losses).isfinite().all())}


def speed(s: Setup, config: ModelConfig, micro_batch: int, timing: dict) -> dict:
    """tokens/s, ms per micro-batch, MFU and HFU of a measured step."""
    from models.device import peak_flops
    from models.estimate import meta_model

    tokens = micro_batch * config.block_size
    rate = tokens * s.micro_steps / timing["step_s"]
    model = meta_model(config)
    peak = peak_flops(s.device)
    flops, extra = model.flops_per_token(), model.recomputed_flops_per_token(tokens)
    return {"tokens_per_s": rate, "ms_per_micro_batch": 1000 * timing["step_s"] / s.micro_steps,
            "mfu": flops * rate / peak if peak else None,
            "hfu": (flops + extra) * rate / peak if peak else None}


def ours_row(s: Setup, name: str, config: ModelConfig, micro_batch: int,
             compile_model: bool = True) -> dict:
    import torch

    from models.estimate import training_memory
    from transformer_setup.transformer import GPT

    torch.manual_seed(0)
    model = GPT(config).to(s.device)
    x = torch.randint(0, config.vocab_size, (micro_batch, config.block_size + 1), device=s.device)
    timing = measure(s, model, lambda m, b: m(b[:, :-1], b[:, 1:]), x,
                     compile_model and not s.smoke)
    estimate = training_memory(config, model.num_params(), micro_batch, s.dtype).total / 1e9
    del model
    return {"section": name, "micro_batch": micro_batch, "compiled": compile_model and not s.smoke,
            **speed(s, config, micro_batch, timing), **timing, "estimate_gb": estimate}


def peer_row(s: Setup, name: str, compile_model: bool) -> dict:
    """Ours and transformers' Llama, same weights, same targets, same micro-batch."""
    import torch

    from scripts.benchmark import same_targets, twin_models

    config = dataclasses.replace(s.config, vocab_multiple=1)
    ours, theirs = twin_models(config, s.device)
    x = torch.randint(0, config.vocab_size, (s.micro_batch, config.block_size + 1),
                      device=s.device)
    compile_model = compile_model and not s.smoke
    row = {"section": name, "micro_batch": s.micro_batch, "compiled": compile_model}
    for side, model, loss_fn in (
            ("ours", ours, lambda m, b: m(*same_targets(b))),
            ("transformers", theirs,
             lambda m, b: m(input_ids=same_targets(b)[0], labels=same_targets(b)[0]).loss)):
        timing = measure(s, model, loss_fn, x, compile_model)
        row[f"{side}_tokens_per_s"] = speed(s, config, s.micro_batch, timing)["tokens_per_s"]
        row[f"{side}_first_step_s"] = timing["first_step_s"]
        row[f"{side}_peak_memory_gb"] = timing["peak_memory_gb"]
    row["ratio"] = row["ours_tokens_per_s"] / row["transformers_tokens_per_s"]
    return row


def environment_row(s: Setup) -> dict:
    import torch

    from models.device import peak_flops
    from transformer_setup.transformer import flash_attn_func

    row = {"section": "environment", "torch": torch.__version__, "cuda": torch.version.cuda,
           "flash_attn": None if flash_attn_func is None else
           __import__("flash_attn").__version__, "device": str(s.device)}
    if s.device.type == "cuda":
        props = torch.cuda.get_device_properties(s.device)
        row.update(gpu=props.name, memory_gb=props.total_memory / 1e9,
                   peak_tflops=(peak_flops(s.device) or 0) / 1e12,
                   bf16=torch.cuda.is_bf16_supported())
    return row


def trainer_row(s: Setup) -> dict:
    """The real entry point, 15 steps of the 1b preset on generated text (no network)."""
    with tempfile.TemporaryDirectory() as folder:
        corpus = Path(folder) / "corpus.txt"
        words = ("the of and to in light plant cell energy water root leaf sun grows makes "
                 "sugar air seed green model data train step").split()
        with open(corpus, "w") as f:
            for i in range(60_000 if not s.smoke else 2_000):
                f.write(" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(24)) + "\n")
        args = ["--preset", "1b", "--data", str(corpus), "--tokenizer", "bytes",
                "--vocab_size", str(s.config.vocab_size), "--max_iters", "15" if not s.smoke
                else "2", "--eval_iters", "1", "--eval_interval", "1000", "--log_interval", "5",
                "--sample_tokens", "0", "--save_interval", "1000",
                "--out_dir", str(Path(folder) / "run"), "--data_workers", "2"]
        if s.smoke:
            args += ["--n_layer", "2", "--n_embd", "64", "--n_head", "4", "--ffn_hidden", "128",
                     "--block_size", "64", "--batch_size", "2", "--global_batch_tokens", "256",
                     "--device", "cpu", "--dtype", "fp32", "--data_workers", "0"]
        start = time.perf_counter()
        result = subprocess.run([sys.executable, str(REPO / "models/gpt.py"), *args],
                                capture_output=True, text=True, timeout=600)
        lines = [line for line in result.stdout.splitlines() if line.startswith("step ")
                 and "tok/s" in line]
        first = re.search(r"first step: ([\d.]+) s", result.stdout)
        return {"section": "trainer, 1b preset, 15 steps", "exit": result.returncode,
                "seconds": time.perf_counter() - start, "last_line": lines[-1] if lines else None,
                "first_step_s": float(first.group(1)) if first else None,
                "error": result.stderr.strip().splitlines()[-1] if result.returncode else None}


def run_suite(s: Setup) -> None:
    import torch

    s.report(environment_row(s))
    preset = s.config
    sections = [
        lambda: ours_row(s, "1b preset: auto micro-batch, no recomputation, compiled",
                         preset, s.micro_batch),
        lambda: peer_row(s, "ours vs transformers Llama, compiled", compile_model=True),
        lambda: ours_row(s, "old preset: full checkpointing, micro-batch 72",
                         dataclasses.replace(preset, gradient_checkpointing=True),
                         72 if not s.smoke else 4),
        lambda: ours_row(s, "1b preset, eager", preset, s.micro_batch, compile_model=False),
        lambda: peer_row(s, "ours vs transformers Llama, eager", compile_model=False),
        lambda: decode_row(s),
        lambda: fp16_row(s),
        lambda: trainer_row(s),
        lambda: ours_row(s, "selective checkpointing, auto micro-batch",
                         dataclasses.replace(preset, gradient_checkpointing=True,
                                             checkpoint_selective=True), s.micro_batch),
        lambda: flash_row(s),
    ]
    for section in sections:
        if not s.time_left():
            s.report({"section": "skipped", "reason": "time budget spent"})
            break
        try:
            row = section()
        except torch.OutOfMemoryError as err:
            row = {"section": "out of memory", "error": str(err).splitlines()[0][:200]}
        if row is not None:
            s.report(row)
        if s.device.type == "cuda":
            torch.cuda.empty_cache()


def flash_row(s: Setup) -> dict | None:
    from transformer_setup.transformer import flash_attn_func

    if flash_attn_func is None or s.device.type != "cuda":
        return {"section": "flash-attn vs SDPA", "skipped": "flash-attn not importable here"}
    flash = ours_row(s, "flash-attn", dataclasses.replace(s.config, attention="flash"),
                     s.micro_batch)
    sdpa = ours_row(s, "sdpa", dataclasses.replace(s.config, attention="sdpa"), s.micro_batch)
    return {"section": "flash-attn vs SDPA", "flash_tokens_per_s": flash["tokens_per_s"],
            "sdpa_tokens_per_s": sdpa["tokens_per_s"],
            "ratio": flash["tokens_per_s"] / sdpa["tokens_per_s"]}


def decode_row(s: Setup) -> dict:
    from scripts.benchmark_generation import generation_row, random_checkpoint

    ckpt = random_checkpoint("1b" if not s.smoke else "tiny", s.config.n_layer)
    row = generation_row(ckpt, s.device, s.dtype, 32 if not s.smoke else 8,
                         128 if not s.smoke else 8, 2 if not s.smoke else 1,
                         f"{s.config.n_layer} layers")
    return {"section": "decode, ours vs transformers generate", **row}


def fp16_row(s: Setup) -> dict:
    import torch

    from transformer_setup.transformer import GPT

    torch.manual_seed(0)
    model = GPT(s.config).to(s.device)
    x = torch.randint(0, s.config.vocab_size, (s.micro_batch, s.config.block_size + 1),
                      device=s.device)
    scaler = torch.amp.GradScaler(s.device.type, enabled=s.device.type == "cuda")
    timing = measure(s, model, lambda m, b: m(b[:, :-1], b[:, 1:]), x, False,
                     dtype=torch.float16 if s.device.type == "cuda" else torch.float32,
                     scaler=scaler)
    return {"section": "fp16 + GradScaler", **timing,
            "scale": scaler.get_scale() if scaler.is_enabled() else None}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU, no compilation: checks every section runs")
    parser.add_argument("--budget_s", type=positive_int, default=480,
                        help="skip the remaining sections after this many seconds")
    parser.add_argument("--micro_steps", type=positive_int, default=4,
                        help="micro-batches per measured optimizer step")
    parser.add_argument("--repeat", type=positive_int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch
    from transformers.utils import logging as transformers_logging

    from models.estimate import auto_micro_batch, device_memory_bytes
    transformers_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.smoke:
        config, _ = build_configs("1b", {"n_layer": 2, "n_embd": 64, "n_head": 4,
                                         "ffn_hidden": 128, "block_size": 32})
        micro_batch = 2
    else:
        config, train_config = build_configs("1b")
        micro_batch = auto_micro_batch(config, train_config.global_batch_tokens, 1, dtype,
                                       device_memory_bytes(device, 80))
    setup = Setup(device, dtype, config, micro_batch, 1 if args.smoke else args.micro_steps,
                  1 if args.smoke else args.repeat, time.monotonic() + args.budget_s,
                  args.smoke)
    run_suite(setup)


if __name__ == "__main__":
    run_main(main)
