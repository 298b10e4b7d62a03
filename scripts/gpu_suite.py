"""Every GPU figure in one command: each section in a process of its own, with its own time limit.

    python scripts/gpu_suite.py                          # one GPU; fits a 10-minute call
    python scripts/gpu_suite.py --sections shipped trainer
    python scripts/gpu_suite.py --smoke                  # tiny shapes on the CPU: checks it runs

Sections, in this order (the most important first):
1. environment: GPU, reported memory, the CUDA context measured against the sizing's allowance,
   peak FLOPs used for MFU, torch, CUDA, flash-attn;
2. shipped: the 1b preset as `models/gpt.py` runs it on this card: bf16, compiled, the auto
   micro-batch sized from the card's reported memory, full optimizer steps at the preset's
   accumulation through the trainer's own step: tokens/s, MFU, HFU, compile time, peak memory
   against the estimate;
3. trainer: `models/gpt.py --preset 1b` for real on generated text, 10 steps and a checkpoint,
   then `--resume` to step 15: its own log lines (first step, tokens/s, MFU);
4. comparisons: ours and transformers' Llama at a micro-batch where transformers' full fp32
   logits fit (compiled, then eager), ours eager at the auto micro-batch, full checkpointing at
   micro-batch 72, selective checkpointing, fp16 with a gradient scaler, decode against
   `generate`, flash-attn against SDPA.

A section runs in a child process (fresh Dynamo caches and CUDA state), under its own limit and
the suite's --budget_s; an exception, a timeout or a child that dies without a word is that
section's row, and the suite goes on. Each row prints as one JSON line as it ends, and names
the graph it measured; a table closes the run. Figures go to docs/BENCHMARKS.md with the date,
device, command and commit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformer_setup.cli import ArgumentParser, UserError, positive_int, run_main
from transformer_setup.params import ModelConfig, build_configs

if TYPE_CHECKING:
    import torch

# torch and the model are imported inside the sections: --help answers at once.

REPO = Path(__file__).resolve().parents[1]
SMOKE_SHAPE = {"n_layer": 2, "n_embd": 64, "n_head": 4, "ffn_hidden": 128, "block_size": 32}
PEER_LOGIT_BYTES = 2 + 4 + 4 + 4 + 4  # per logit, transformers: bf16, fp32 copy, log-softmax,
# its gradient, the logits' gradient: all tokens at once (ours: one chunk of the loss at a time)
TRAINER_ACCUMULATION = 2  # micro-batches per step of the trainer section (the preset: 288/micro)


# ----------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class Section:
    key: str  # --sections name, and what the child runs
    title: str
    limit_s: float
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


def preset_config(smoke: bool) -> tuple[ModelConfig, Any]:
    """The 1b preset (smoke: a tiny shape of the same family)."""
    return build_configs("1b", SMOKE_SHAPE if smoke else None)


def peer_micro_batch(config: ModelConfig, micro_batch: int, usable_bytes: float) -> int:
    """The largest micro-batch up to the auto one at which transformers' Llama, holding every
    token's fp32 logits at once, fits where ours fits (its activations taken as ours)."""
    from models.estimate import meta_model, training_memory

    n_params = meta_model(config).num_params()
    for batch in range(micro_batch, 0, -1):
        ours = training_memory(config, n_params, batch, _bf16())
        logits = batch * config.block_size * config.padded_vocab_size * PEER_LOGIT_BYTES
        if ours.total - ours.logits + logits <= usable_bytes:
            return batch
    return 1


def _bf16():
    import torch

    return torch.bfloat16


ENVIRONMENT = Section("environment", "environment", 90)


def plan(device_bytes: float, smoke: bool) -> list[Section]:
    """The sections after the environment, for a card reporting device_bytes of memory, in the
    order they run."""
    from models.estimate import auto_micro_batch, usable_memory

    config, recipe = preset_config(smoke)
    if smoke:
        micro, peer, full_batch = 2, 2, 4
    else:
        micro = auto_micro_batch(config, recipe.global_batch_tokens, 1, _bf16(), device_bytes)
        peer = peer_micro_batch(config, micro, usable_memory(device_bytes))
        full_batch = 72
    ours = dict(compile=True, micro_batch=micro)
    return [
        Section("shipped", f"1b preset as shipped: auto micro-batch {micro}, compiled", 300,
                dict(ours, accumulation=recipe.global_batch_tokens // (micro * config.block_size)
                     if not smoke else 2)),
        Section("trainer", "trainer: gpt.py --preset 1b, 10 steps, checkpoint, resume to 15",
                480, trainer_params(micro, config.block_size, smoke)),
        Section("ours_compiled", f"ours, compiled, micro-batch {peer} (for transformers)", 240,
                dict(ours, micro_batch=peer, peer_shape=True)),
        Section("transformers_compiled", f"transformers Llama, compiled, micro-batch {peer}", 240,
                dict(ours, micro_batch=peer, model="transformers")),
        Section("ours_eager", f"ours, eager, micro-batch {peer} (for transformers)", 120,
                dict(ours, micro_batch=peer, peer_shape=True, compile=False)),
        Section("transformers_eager", f"transformers Llama, eager, micro-batch {peer}", 120,
                dict(ours, micro_batch=peer, model="transformers", compile=False)),
        Section("full_checkpointing", f"full checkpointing, micro-batch {full_batch}, compiled",
                240, dict(ours, micro_batch=full_batch,
                          fields={"gradient_checkpointing": True})),
        Section("selective", f"selective checkpointing, micro-batch {micro}, compiled", 240,
                dict(ours, fields={"gradient_checkpointing": True,
                                   "checkpoint_selective": True})),
        Section("fp16", f"fp16 + GradScaler, micro-batch {micro}, eager", 120,
                dict(ours, compile=False, dtype="fp16")),
        Section("decode", "decode: ours vs transformers generate", 120),
        Section("flash", f"flash-attn vs SDPA, micro-batch {micro}, compiled", 300, ours),
    ]


def trainer_params(micro_batch: int, block_size: int, smoke: bool) -> dict[str, Any]:
    """The trainer section's run: its global batch, steps and the text it needs. The held-out
    file holds 4x the validation tokens (bytes: one token each), the training file 2x what 15
    steps read."""
    global_batch = micro_batch * TRAINER_ACCUMULATION * block_size
    val_tokens = 8 * block_size
    steps = (2, 4) if smoke else (10, 15)
    return {"global_batch_tokens": global_batch, "val_tokens": val_tokens, "steps": steps,
            "val_bytes": 4 * val_tokens, "train_bytes": 2 * steps[1] * global_batch}


# ----------------------------------------------------------------------------- the parent

def run_section(section: Section, limit_s: float, command: list[str]) -> dict:
    """Run one child; its row, or a row saying how it failed. Never raises."""
    row = {"section": section.key, "title": section.title}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    except OSError as err:
        return {**row, "error": f"could not start: {err}"}
    try:
        out, err = proc.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and all it started
        proc.communicate()
        return {**row, "error": f"timed out after {limit_s:.0f} s (its limit)",
                "seconds": time.monotonic() - start}
    rows = [line[4:] for line in out.splitlines() if line.startswith("ROW ")]
    if rows:
        return {**row, **json.loads(rows[-1]), "seconds": time.monotonic() - start}
    last = (err.strip().splitlines() or ["no output"])[-1][:300]
    how = f"killed by signal {-proc.returncode}" if proc.returncode < 0 \
        else f"exit code {proc.returncode}"
    return {**row, "error": f"the child died without a row ({how}): {last}",
            "seconds": time.monotonic() - start}


def child_command(section: Section, smoke: bool) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", section.key,
            "--params", json.dumps(section.params)] + (["--smoke"] if smoke else [])


def run_suite(sections: list[Section], budget_s: float, command=child_command,
              smoke: bool = False, clock=time.monotonic, rows: list[dict] | None = None,
              table: bool = True) -> list[dict]:
    """Every section in order, each printed as it ends; the rest skipped once the budget is
    spent. A table of these rows and the `rows` before them at the end."""
    deadline = clock() + budget_s
    rows = list(rows or [])
    for section in sections:
        left = deadline - clock()
        if left < 20:
            row = {"section": section.key, "title": section.title,
                   "skipped": "the suite's --budget_s is spent"}
        else:
            row = run_section(section, min(section.limit_s, left), command(section, smoke))
        rows.append(add_ratio(row, rows))
        print(json.dumps(row, default=str), flush=True)
    if table:
        print_table(rows)
    return rows


def add_ratio(row: dict, rows: list[dict]) -> dict:
    """transformers' rows: ours over theirs, where our row of the same kind succeeded."""
    if not row["section"].startswith("transformers") or "tokens_per_s" not in row:
        return row
    ours = {"transformers_compiled": "ours_compiled", "transformers_eager": "ours_eager"}
    mine = next((r for r in rows if r["section"] == ours[row["section"]]), {})
    if "tokens_per_s" in mine and mine.get("micro_batch") == row.get("micro_batch"):
        row["ours_over_transformers"] = mine["tokens_per_s"] / row["tokens_per_s"]
    return row


def print_table(rows: list[dict]) -> None:
    print(f"\n{'section':<24}{'status':<10}{'tok/s':>12}{'MFU':>8}{'peak GB':>9}  graph / note")
    for r in rows:
        status = "error" if "error" in r else "skipped" if "skipped" in r else "ok"
        rate = f"{r['tokens_per_s']:,.0f}" if r.get("tokens_per_s") else ""
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else ("unknown" if "mfu" in r else "")
        peak = f"{r['peak_allocated_gb']:.1f}" if r.get("peak_allocated_gb") else ""
        note = r.get("error") or r.get("skipped") or r.get("graph") or r.get("last_line") or ""
        print(f"{r['section']:<24}{status:<10}{rate:>12}{mfu:>8}{peak:>9}  {str(note)[:110]}")


# ----------------------------------------------------------------------------- the children

def child(key: str, params: dict, smoke: bool) -> dict:
    """One section's row (run in the child process)."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    functions = {"environment": environment_row, "trainer": trainer_row,
                 "decode": decode_row, "flash": flash_row}
    if key in functions:
        return functions[key](device, params, smoke)
    return training_row(device, params, smoke)


def environment_row(device: torch.device, params: dict, smoke: bool) -> dict:
    import torch

    from models.device import bf16_native, peak_flops
    from models.estimate import CUDA_CONTEXT_BYTES, device_memory_bytes
    from transformer_setup.transformer import flash_attn_func

    row = {"torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
           "flash_attn": None if flash_attn_func is None else
           __import__("flash_attn").__version__}
    if device.type != "cuda":
        return row
    torch.ones(64, 64, device=device) @ torch.ones(64, 64, device=device)  # cuBLAS handle
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info(device)
    outside = total - free - torch.cuda.memory_reserved(device)  # context, workspaces
    peak = peak_flops(device, torch.bfloat16)
    return {**row, "gpu": torch.cuda.get_device_name(device),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "memory_bytes": device_memory_bytes(device, 0),
            "context_gb": outside / 1e9, "context_allowed_gb": CUDA_CONTEXT_BYTES / 1e9,
            "peak_tflops_bf16": peak / 1e12 if peak else "unknown",
            "bf16_native": bf16_native(device)}


def training_row(device: torch.device, params: dict, smoke: bool) -> dict:
    """Full optimizer steps of ours (or transformers'), as the trainer takes them."""
    import torch

    from models.device import autocast, enable_tf32, peak_flops, resolve_dtype
    from models.estimate import meta_model, training_memory, usable_memory

    config, recipe = preset_config(smoke)
    config = dataclasses.replace(config, **params.get("fields", {}))
    if params.get("peer_shape") or params.get("model") == "transformers":
        config = dataclasses.replace(config, vocab_multiple=1)  # transformers' head: no padding
    dtype = resolve_dtype(params.get("dtype", "auto"), device)
    enable_tf32(device)
    micro, accumulation = params["micro_batch"], params.get("accumulation", 2)
    model, graph = training_model(config, device, params.get("model", "ours"),
                                  params["compile"] and not smoke)
    timing = timed_steps(model, device, dtype, autocast(device, dtype), config, micro,
                         accumulation, repeat=1 if smoke else 2)
    estimate = training_memory(config, meta_model(config).num_params(), micro, dtype)
    peak = peak_flops(device, dtype)
    flops = flops_per_token(config, micro)
    return {"micro_batch": micro, "accumulation": accumulation, "dtype": str(dtype),
            "graph": graph(), **timing,
            "mfu": flops[0] * timing["tokens_per_s"] / peak if peak else None,
            "hfu": sum(flops) * timing["tokens_per_s"] / peak if peak else None,
            "estimate_gb": estimate.total / 1e9,
            "usable_gb": usable_memory(torch.cuda.get_device_properties(device).total_memory)
            / 1e9 if device.type == "cuda" else None}


def flops_per_token(config: ModelConfig, micro_batch: int) -> tuple[int, int]:
    """(model FLOPs, recomputed FLOPs) per token, as the trainer counts them."""
    from models.estimate import meta_model

    model = meta_model(config)
    return model.flops_per_token(), \
        model.recomputed_flops_per_token(micro_batch * config.block_size)


def training_model(config: ModelConfig, device: torch.device, side: str, compile_model: bool):
    """The model to step and a function naming the graph measured."""
    import torch

    from scripts.benchmark import twin_models
    from transformer_setup.transformer import GPT

    torch.manual_seed(0)
    model = GPT(config).to(device) if side == "ours" else llama_loss(twin_models(config, device)[1])
    if not compile_model:
        return model, lambda: f"{side}, eager"
    counts = {"graphs": 0}
    torch._dynamo.reset()

    def backend(gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        counts["graphs"] += 1
        return compile_fx(gm, example_inputs)

    def graph() -> str:
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        return f"{side}, compiled (inductor): {counts['graphs']} graph(s), {breaks} break(s)"
    return torch.compile(model, backend=backend), graph


def timed_steps(model, device: torch.device, dtype: torch.dtype, ctx, config: ModelConfig,
                micro: int, accumulation: int, repeat: int) -> dict:
    """The first optimizer step (compilation included) and the best of `repeat` later ones,
    each `accumulation` micro-batches through the trainer's optimizer_step; peak memory."""
    import torch

    from models.trainer import optimizer_step

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randint(0, config.vocab_size, (micro, config.block_size + 1), device=device)
    batches = [(x[:, :-1], x[:, 1:])] * accumulation
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, results = [], []
    for _ in range(1 + repeat):
        sync(device)
        start = time.perf_counter()
        results.append(optimizer_step(model, optimizer, scaler, batches, ctx, 1.0))
        sync(device)
        seconds.append(time.perf_counter() - start)
    best = min(seconds[1:])
    cuda = device.type == "cuda"
    return {"first_step_s": seconds[0], "step_s": best,
            "tokens_per_s": micro * config.block_size * accumulation / best,
            "ms_per_micro_batch": 1000 * best / accumulation,
            "loss": results[-1].loss, "finite": all(not r.skipped for r in results),
            "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None,
            "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9 if cuda else None}


def llama_loss(model):
    """transformers' model called as ours is, model(x, y) -> mean loss: labels shift inside
    it, so it scores the inputs' next tokens (the last position has none)."""
    import torch

    class Loss(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x, y, reduction: str = "mean"):
            loss = self.model(input_ids=x, labels=x).loss  # mean over the shifted targets
            if reduction == "sum":  # as the trainer's optimizer_step asks
                return loss * x.shape[0] * (x.shape[1] - 1)
            return loss

    return Loss()


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def trainer_row(device: torch.device, params: dict, smoke: bool) -> dict:
    """gpt.py for real: run to the first step count with a checkpoint, resume to the second."""
    folder = Path(tempfile.mkdtemp(prefix="gpu_suite_trainer_"))
    write_text(folder / "train.txt", params["train_bytes"], seed=0)
    write_text(folder / "val.txt", params["val_bytes"], seed=1)
    first, last = params["steps"]
    args = ["--preset", "1b", "--data", str(folder / "train.txt"), "--val_data",
            str(folder / "val.txt"), "--tokenizer", "bytes", "--vocab_size", "50257",
            "--global_batch_tokens", str(params["global_batch_tokens"]), "--val_tokens",
            str(params["val_tokens"]), "--eval_interval", "1000", "--save_interval", str(first),
            "--log_interval", "5" if not smoke else "1", "--sample_tokens", "0",
            "--tensorboard", "false", "--eval_hellaswag", "0", "--out_dir", str(folder / "run")]
    if smoke:
        args += [item for k, v in SMOKE_SHAPE.items() for item in (f"--{k}", str(v))]
        args += ["--batch_size", "2", "--device", "cpu", "--dtype", "fp32", "--data_workers", "0"]
    try:
        runs = [run_gpt(args + ["--max_iters", str(first)]),
                run_gpt(args + ["--max_iters", str(last), "--resume"])]
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # 1b checkpoints: ~17 GB
    resumed = re.search(r"resumed from .* at step (\d+)", runs[1]["stdout"])
    row = {"graph": "gpt.py's own: compiled whole model (inductor)" if not smoke else "eager",
           "exit": [r["exit"] for r in runs], "seconds_each": [r["seconds"] for r in runs],
           "first_step_s": [r["first_step_s"] for r in runs],
           "resumed_at": int(resumed[1]) if resumed else None,
           "last_line": runs[1]["last_line"] or runs[0]["last_line"]}
    failed = [r["error"] for r in runs if r["error"]]
    return {**row, "error": failed[0]} if failed else row


def write_text(path: Path, n_bytes: int, seed: int) -> None:
    """Lines of random words: documents that never repeat, so the held-out file shares none
    with the training file."""
    words = ("the of and to in light plant cell energy water root leaf sun grows makes sugar "
             "air seed green model data train step").split()
    rng, written = random.Random(seed), 0
    with open(path, "w") as f:
        while written < n_bytes:
            line = " ".join(rng.choice(words) for _ in range(24)) + "\n"
            f.write(line)
            written += len(line)


def run_gpt(args: list[str]) -> dict:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, str(REPO / "models/gpt.py"), *args],
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("step ")
             and "tok/s" in line]
    first = re.search(r"first step: ([\d.]+) s", result.stdout)
    return {"exit": result.returncode, "seconds": time.perf_counter() - start,
            "stdout": result.stdout, "last_line": lines[-1] if lines else None,
            "first_step_s": float(first[1]) if first else None,
            "error": (result.stderr.strip().splitlines() or [""])[-1][:300]
            if result.returncode else None}


def decode_row(device: torch.device, params: dict, smoke: bool) -> dict:
    import torch

    from scripts.benchmark_generation import generation_row, random_checkpoint

    config, _ = preset_config(smoke)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ckpt = random_checkpoint("1b" if not smoke else "tiny", config.n_layer)
    row = generation_row(ckpt, device, dtype, 32 if not smoke else 8, 128 if not smoke else 8,
                         2 if not smoke else 1, f"{config.n_layer} layers")
    return {"graph": "both eager (KV cache)", **row}


def flash_row(device: torch.device, params: dict, smoke: bool) -> dict:
    from transformer_setup.transformer import flash_attn_func

    if flash_attn_func is None or device.type != "cuda":
        return {"skipped": "flash-attn not importable here (or no CUDA)"}
    import torch

    rows = {}
    for attention in ("flash", "sdpa"):
        torch._dynamo.reset()
        rows[attention] = training_row(device, dict(params, fields={"attention": attention}),
                                       smoke)
    return {"graph": rows["flash"]["graph"], "micro_batch": params["micro_batch"],
            "tokens_per_s": rows["flash"]["tokens_per_s"],
            "sdpa_tokens_per_s": rows["sdpa"]["tokens_per_s"],
            "flash_over_sdpa": rows["flash"]["tokens_per_s"] / rows["sdpa"]["tokens_per_s"]}


def child_main(key: str, params: dict, smoke: bool) -> None:
    """Print the section's row, or its exception as the row: one line either way."""
    try:
        row = child(key, params, smoke)
    except Exception as err:  # noqa: BLE001 - any failure is this section's row
        text = str(err).strip().splitlines()
        row = {"error": f"{type(err).__name__}: {text[0][:300] if text else ''}"}
    print("ROW " + json.dumps(row, default=str), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true",
                        help="tiny shapes on the CPU, no compilation: checks every section runs")
    parser.add_argument("--budget_s", type=positive_int, default=560,
                        help="skip the sections left after this many seconds")
    parser.add_argument("--sections", nargs="+", help="run only these (keys as in the rows)")
    parser.add_argument("--child", help=argparse_hidden())
    parser.add_argument("--params", default="{}", help=argparse_hidden())
    args = parser.parse_args(argv)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # as gpt.py
    if args.child:
        child_main(args.child, json.loads(args.params), args.smoke)
        return
    # The card's memory comes from the environment's child: this process never starts CUDA,
    # whose context would take memory from the sections'.
    start = time.monotonic()
    rows = run_suite([ENVIRONMENT], args.budget_s, smoke=args.smoke, table=False)
    try:
        sections = plan(rows[0].get("memory_bytes") or 80e9, args.smoke)
    except UserError as err:  # a card too small for the 1b preset: the table says so, and ends
        rows.append({"section": "plan", "error": str(err)})
        print_table(rows)
        return
    if args.sections:
        sections = [s for s in sections if s.key in args.sections]
    run_suite(sections, args.budget_s - (time.monotonic() - start), smoke=args.smoke, rows=rows)


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    run_main(main)
