"""Decode speed with the KV cache: ours against transformers' `generate`, same weights, same run.

    python scripts/benchmark_generation.py                          # a 1b-shaped model, 2 layers
    python scripts/benchmark_generation.py --checkpoint out/tiny/best_model.pt --json

The model (a checkpoint, or a random one of --preset's shape with --n_layer layers) is exported
to a transformers folder and loaded back with AutoModelForCausalLM, so both sides run identical
weights. Both decode greedily from the same prompt with a KV cache, stopping at <|endoftext|> or
--new_tokens, alternating, best of --repeat; the script reports whether the ids agree.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from hugging_face.convert_to_hf import export
from models.checkpoint import load_checkpoint
from models.device import autocast, resolve_device, resolve_dtype
from models.generate import generate_ids
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.cli import ArgumentParser, UserError, positive_int, run_main
from transformer_setup.params import build_configs
from transformer_setup.transformer import GPT


def random_checkpoint(preset: str, n_layer: int) -> dict:
    config, _ = build_configs(preset, {"n_layer": n_layer, "vocab_size": 257})
    torch.manual_seed(0)
    model = GPT(config)
    return {"model_config": dataclasses.asdict(config), "model": model.state_dict(),
            "tokenizer": byte_tokenizer().spec(), "step": 0}


def timed(fn, repeat: int) -> tuple[float, list[int]]:
    best, out = float("inf"), []
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def generation_row(ckpt: dict, device: torch.device, dtype: torch.dtype, prompt_tokens: int,
                   new_tokens: int, repeat: int, label: str) -> dict:
    """Greedy decode speed of ours and of transformers' generate on the same exported weights."""
    from transformers import AutoModelForCausalLM

    from models.checkpoint import load_model

    with tempfile.TemporaryDirectory() as folder:
        export(ckpt, Path(folder) / "hf")
        ours, tok = load_model(str(Path(folder) / "hf"), device)
        theirs = AutoModelForCausalLM.from_pretrained(Path(folder) / "hf", dtype=torch.float32)
        theirs = theirs.to(device).eval()
    prompt = [tok.eot_id] + [65 + i % 26 for i in range(prompt_tokens - 1)]
    if len(prompt) + new_tokens > ours.config.block_size:
        raise UserError("prompt plus new tokens exceed the context")
    ctx = autocast(device, dtype)

    def run_ours() -> list[int]:
        with ctx:
            return generate_ids(ours, prompt, new_tokens, temperature=0, stop_id=tok.eot_id,
                                n_vocab=tok.n_vocab)[0]

    def run_theirs() -> list[int]:
        with torch.no_grad(), ctx:
            out = theirs.generate(torch.tensor([prompt], device=device), do_sample=False,
                                  max_new_tokens=new_tokens)
        return out[0, len(prompt):].tolist()

    run_ours(), run_theirs()  # warm-up
    ours_s, ours_ids, theirs_s, theirs_ids = float("inf"), [], float("inf"), []
    for _ in range(repeat):  # alternate, so drifts in machine speed hit both
        t, ours_ids = timed(run_ours, 1)
        ours_s = min(ours_s, t)
        t, theirs_ids = timed(run_theirs, 1)
        theirs_s = min(theirs_s, t)
    return {"model": label, "params": ours.num_params(), "device": str(device),
            "dtype": str(dtype), "new_tokens": len(ours_ids),
            "ours_tokens_per_s": len(ours_ids) / ours_s,
            "transformers_tokens_per_s": len(theirs_ids) / theirs_s,
            "speedup": theirs_s / ours_s, "same_ids": ours_ids == theirs_ids}


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--preset", default="1b")
    parser.add_argument("--n_layer", type=positive_int, default=2)
    parser.add_argument("--prompt_tokens", type=positive_int, default=32)
    parser.add_argument("--new_tokens", type=positive_int, default=64)
    parser.add_argument("--repeat", type=positive_int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    ckpt = load_checkpoint(args.checkpoint) if args.checkpoint else \
        random_checkpoint(args.preset, args.n_layer)
    row = generation_row(ckpt, device, dtype, args.prompt_tokens, args.new_tokens, args.repeat,
                         args.checkpoint or f"{args.preset} shape, {args.n_layer} layers")
    if args.json:
        print(json.dumps(row))
        return
    print(f"{row['model']}: {row['params']:,} parameters, {device}, {row['dtype']}; "
          f"greedy ids identical: {row['same_ids']}")
    print(f"ours {row['ours_tokens_per_s']:,.1f} tok/s | transformers generate "
          f"{row['transformers_tokens_per_s']:,.1f} tok/s | ours / theirs {row['speedup']:.2f}x")


if __name__ == "__main__":
    run_main(main)
