"""One command for every speed and memory figure, side by side with peers, as a table or JSON.

    python scripts/benchmark.py                                # all sections, CPU-sized
    python scripts/benchmark.py --preset 1b --batch_size 16 --dtype bf16 --sections train
    python scripts/benchmark.py --small --json                 # seconds, for a smoke test

Sections:
- train: tokens/s (and MFU on known GPUs) of a full training step (forward, backward, AdamW),
  ours against transformers' LlamaForCausalLM of identical shape and dtype, alternating in the
  same run, with the ratio; peak memory of a step (CUDA: allocator peak; CPU: not measured).
- generate: decode tokens/s with the KV cache, ours against transformers' generate, same weights.
- data: tokens/s of the streaming and prepared loaders.
- tokenizer: encode tokens/s of our tokenizers against `tokenizers`, one thread and all.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING

from transformer_setup.cli import ArgumentParser, positive_int, run_main
from transformer_setup.params import build_configs

if TYPE_CHECKING:
    import torch

    from transformer_setup.transformer import GPT

# torch, transformers and the sections' code are imported where used: --help answers at once.

SECTIONS = ("train", "generate", "data", "tokenizer")


def twin_models(config, device: torch.device) -> tuple[GPT, torch.nn.Module]:
    """Ours and transformers' LlamaForCausalLM of one shape, holding the same weights."""
    import torch
    from transformers import LlamaForCausalLM

    from transformer_setup.hf_weights import to_hf_config, to_hf_state_dict
    from transformer_setup.transformer import GPT

    torch.manual_seed(0)
    ours = GPT(config).to(device)
    theirs = LlamaForCausalLM(to_hf_config(config)).to(device)
    theirs.load_state_dict(to_hf_state_dict(ours.state_dict(), config))
    theirs.config.use_cache = False
    return ours, theirs


def same_targets(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and our targets such that we score what transformers scores with labels=inputs:
    it shifts labels inside, so the last position has no target (-1 for us)."""
    inputs, targets = x[:, :-1], x[:, 1:].clone()
    targets[:, -1] = -1
    return inputs, targets


def train_rows(preset: str, n_layer: int | None, batch_size: int, block_size: int | None,
               steps: int, repeat: int, device: torch.device, dtype: torch.dtype,
               compile_model: bool) -> list[dict]:
    """A training step of ours and of LlamaForCausalLM, same shape and dtype, alternating."""
    import torch

    from models.device import autocast, dtype_name, peak_flops
    from models.estimate import meta_model
    overrides = {k: v for k, v in (("n_layer", n_layer), ("block_size", block_size)) if v}
    config, _ = build_configs(preset, overrides)
    # Like for like: the same head (no padding) and no recomputation (the 1b preset's
    # gradient checkpointing would make ours do a third more work than transformers' model).
    config = dataclasses.replace(config, vocab_multiple=1, gradient_checkpointing=False)
    ours, theirs = twin_models(config, device)
    if compile_model:
        ours, theirs = torch.compile(ours), torch.compile(theirs)
    x = torch.randint(0, config.vocab_size, (batch_size, config.block_size + 1), device=device)
    inputs, targets = same_targets(x)
    ctx = autocast(device, dtype)
    fused = device.type == "cuda"
    with torch.no_grad(), ctx:  # the two sides compute the same loss on the same targets
        losses = (ours(inputs, targets).item(),
                  theirs(input_ids=inputs, labels=inputs).loss.item())

    def make_step(model, loss_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)

        def step() -> None:
            with ctx:
                loss = loss_fn(model)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    steps_fn = {
        "ours": make_step(ours, lambda m: m(inputs, targets)),
        "transformers Llama": make_step(theirs, lambda m: m(input_ids=inputs,
                                                            labels=inputs).loss),
    }
    best = {name: float("inf") for name in steps_fn}
    peak_mem = {}
    for step in steps_fn.values():  # warm-up (and compile)
        step()
    for _ in range(repeat):
        for name, step in steps_fn.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak_mem[name] = torch.cuda.max_memory_allocated(device) / 1e9
            best[name] = min(best[name], (time.perf_counter() - start) / steps)
    tokens = batch_size * config.block_size
    flops = meta_model(config).flops_per_token()
    peak = peak_flops(device, dtype)
    ours_rate, theirs_rate = tokens / best["ours"], tokens / best["transformers Llama"]
    return [{"section": "train", "name": "ours vs transformers Llama",
             "shape": f"{preset}, {config.n_layer} layers, batch {batch_size} x "
                      f"{config.block_size}, {dtype_name(dtype)}",
             "ours_loss": losses[0], "transformers_loss": losses[1],
             "ours_tokens_per_s": ours_rate, "transformers_tokens_per_s": theirs_rate,
             "speedup": ours_rate / theirs_rate,
             "ours_mfu": flops * ours_rate / peak if peak else None,
             "transformers_mfu": flops * theirs_rate / peak if peak else None,
             "ours_peak_memory_gb": peak_mem.get("ours"),
             "transformers_peak_memory_gb": peak_mem.get("transformers Llama")}]


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--n_layer", type=positive_int, default=None, help="default: 2 on CPU")
    parser.add_argument("--batch_size", type=positive_int, default=None,
                        help="default: 4 on CPU, 16 GPU")
    parser.add_argument("--block_size", type=positive_int, default=None)
    parser.add_argument("--steps", type=positive_int, default=3)
    parser.add_argument("--repeat", type=positive_int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--small", action="store_true",
                        help="tiny sizes everywhere: checks the benchmark runs, in seconds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from models.device import dtype_name, resolve_device, resolve_dtype
    from scripts.benchmark_data import speed_rows
    from scripts.benchmark_generation import generation_row, random_checkpoint
    from scripts.benchmark_tokenizers import benchmark_documents, measure
    from tokenization.tokenizer import byte_tokenizer, get_tokenizer

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    on_gpu = device.type == "cuda"
    n_layer = args.n_layer or (None if on_gpu else 2)
    batch = args.batch_size or (16 if on_gpu else 4)
    block = args.block_size
    if args.small:
        n_layer, batch, block = 1, 2, 64
    rows: list[dict] = []
    if "train" in args.sections:
        rows += train_rows("tiny" if args.small else args.preset, n_layer, batch, block,
                           1 if args.small else args.steps, 1 if args.small else args.repeat,
                           device, dtype, args.compile)
    if "generate" in args.sections:
        preset = "tiny" if args.small else args.preset
        ckpt = random_checkpoint(preset, n_layer or 2)
        row = generation_row(ckpt, device, dtype, 8 if args.small else 32,
                             8 if args.small else 64, 1 if args.small else 3,
                             f"{preset}, {n_layer or 2} layers")
        rows.append({"section": "generate", "name": "ours vs transformers generate", **row})
    if "data" in args.sections:
        for row in speed_rows("pydocs", "bytes" if args.small else "gpt2", batch,
                               block or 1024, 0.5 if args.small else 5.0,
                               [0] if args.small else [0, 2]):
            rows.append({"section": "data", "name": row.pop("loader"), **row})
    if "tokenizer" in args.sections:
        docs = benchmark_documents(200_000 if args.small else 3_000_000)
        tokenizer = byte_tokenizer() if args.small else get_tokenizer("gpt2")
        for row in measure(tokenizer, docs, 1 if args.small else 3):
            rows.append({"section": "tokenizer", "name": f"{row['tokenizer']}, "
                         f"{row['threads']} threads", **row})
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return
    print(f"device {device}, dtype {dtype_name(dtype)}")
    print(f"{'section':<10}{'what':<34}{'ours tok/s':>14}{'peer tok/s':>14}{'ours/peer':>11}"
          f"{'extra':>24}")
    for r in rows:
        ours = r.get("ours_tokens_per_s") or r.get("tokens_per_s")
        peer = r.get("transformers_tokens_per_s") or r.get("tokenizers_tokens_per_s")
        extra = ""
        if r.get("ours_mfu") is not None:
            extra = f"MFU {100 * r['ours_mfu']:.1f}% vs {100 * r['transformers_mfu']:.1f}%"
        elif r.get("peak_rss_mb") is not None:
            extra = f"{r['peak_rss_mb']:,.0f} MB RSS"
        peer_text = f"{peer:,.1f}" if peer else ""
        ratio_text = f"{r['speedup']:.2f}x" if peer else ""
        print(f"{r['section']:<10}{r['name'][:33]:<34}{ours:>14,.1f}{peer_text:>14}"
              f"{ratio_text:>11}{extra:>24}")


if __name__ == "__main__":
    run_main(main)
