"""AdamW against Muon, loss for loss: the same model, data, seed and token budget, each at its
own best learning rate from a small sweep.

    python scripts/compare_optimizers.py --shape tiny --lrs 2e-3 4e-3 8e-3
    python scripts/compare_optimizers.py --shape 10m --steps 300 --batch_size 16 \
        --lrs 5e-4 1e-3 2e-3 4e-3 --muon_lrs 2e-3 4e-3
    python scripts/compare_optimizers.py --smoke            # seconds: checks it runs

Data: `pydocs` (offline), prepared once into byte-level shards under --out. Every run trains from
the same initial weights on the same blocks in the same order (prepared shards, one seed), and
scores the same held-out text every --eval_interval steps. Writes --out/results.json (every
run's validation loss and bits per byte against tokens seen, the best learning rate of each
optimizer, and the tokens Muon needs to reach AdamW's final validation loss, as a fraction of
AdamW's) and --out/comparison.png.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

from transformer_setup.cli import ArgumentParser, positive_float, positive_int, run_main

SHAPES = {  # ModelConfig fields over the tiny preset (bytes tokenizer, context 128)
    "tiny": {},  # 4 layers x 128: 1.1M parameters
    "10m": {"n_layer": 6, "n_embd": 384, "n_head": 6},  # 10.7M parameters
    "smoke": {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32},
}


def prepare_data(out: Path) -> Path:
    from data import prepare

    shards = out / "pydocs-bytes"
    with contextlib.redirect_stdout(io.StringIO()):
        prepare.main(["--data", "pydocs", "--tokenizer", "bytes", "--out", str(shards)])
    return shards


def one_run(shards: Path, shape: str, optimizer: str, lr: float, steps: int, batch: int,
            eval_interval: int, out: Path) -> dict:
    """Train once; the validation curve from the run's log."""
    import dataclasses

    from models.trainer import train
    from tokenization.tokenizer import byte_tokenizer
    from transformer_setup.params import build_configs

    run_dir = out / f"{shape}-{optimizer}-{lr:g}"
    fields = {**SHAPES[shape], "data": str(shards), "optimizer": optimizer, "learning_rate": lr,
              "min_lr": lr / 10, "max_iters": steps, "batch_size": batch, "accumulation_steps": 1,
              "warmup_iters": max(1, steps // 20), "eval_interval": eval_interval,
              "eval_iters": 8, "sample_tokens": 0, "log_interval": eval_interval,
              "save_interval": steps, "out_dir": str(run_dir), "tensorboard": False,
              "data_workers": 0}
    model_config, train_config = build_configs("tiny", fields)
    model_config = dataclasses.replace(model_config, vocab_size=257)
    log_path = run_dir / "train.log"
    finished = log_path.exists() and f"done: {steps} steps" in log_path.read_text() and \
        f"training: {train_config}" in log_path.read_text()
    if not finished:  # a run of the same settings is reused: a wider sweep adds only new rates
        log_path.unlink(missing_ok=True)
        for stale in run_dir.glob("*.pt"):
            stale.unlink()
        with contextlib.redirect_stdout(io.StringIO()):
            train(model_config, train_config, byte_tokenizer())
    log = log_path.read_text()
    tokens_per_step = batch * model_config.block_size
    curve = [(int(step) * tokens_per_step, float(loss), float(bpb)) for step, loss, bpb in
             re.findall(r"^step (\d+): val loss ([\d.]+) \| val bits/byte ([\d.]+)", log, re.M)]
    return {"optimizer": optimizer, "lr": lr, "tokens": [c[0] for c in curve],
            "val_loss": [c[1] for c in curve], "val_bpb": [c[2] for c in curve]}


def tokens_to_reach(run: dict, target: float) -> float | None:
    """The first token count at which a run's validation loss reaches target (linear between
    evaluations), or None if it never does."""
    points = list(zip(run["tokens"], run["val_loss"]))
    for (t0, l0), (t1, l1) in zip(points, points[1:]):
        if l1 <= target:
            return t1 if l0 == l1 else t0 + (l0 - target) / (l0 - l1) * (t1 - t0)
    return None


def summarize(runs: list[dict]) -> dict:
    best = {name: min((r for r in runs if r["optimizer"] == name),
                      key=lambda r: r["val_loss"][-1]) for name in ("adamw", "muon")}
    target = best["adamw"]["val_loss"][-1]
    reached = tokens_to_reach(best["muon"], target)
    return {"best_lr": {k: v["lr"] for k, v in best.items()},
            "final_val_loss": {k: v["val_loss"][-1] for k, v in best.items()},
            "final_val_bpb": {k: v["val_bpb"][-1] for k, v in best.items()},
            "adamw_tokens": best["adamw"]["tokens"][-1],
            "muon_tokens_to_adamw_final_loss": reached,
            "muon_token_ratio": reached / best["adamw"]["tokens"][-1] if reached else None}


def plot(runs: list[dict], summary: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    colors = {"adamw": "tab:blue", "muon": "tab:red"}
    for run in runs:
        best = run["lr"] == summary["best_lr"][run["optimizer"]]
        ax.plot(run["tokens"], run["val_loss"], color=colors[run["optimizer"]],
                alpha=1.0 if best else 0.35, linewidth=2.2 if best else 1.0,
                label=f"{run['optimizer']} lr {run['lr']:g}" + (" (best)" if best else ""))
    ax.set(title=title, xlabel="training tokens", ylabel="validation loss (nats per byte)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="tiny")
    parser.add_argument("--steps", type=positive_int, default=600)
    parser.add_argument("--batch_size", type=positive_int, default=32)
    parser.add_argument("--eval_interval", type=positive_int, default=50)
    parser.add_argument("--lrs", type=positive_float, nargs="+", default=[1e-3, 2e-3, 4e-3],
                        help="peak learning rates tried for each optimizer")
    parser.add_argument("--muon_lrs", type=positive_float, nargs="+",
                        help="Muon's own rates, where its best lies outside --lrs")
    parser.add_argument("--out", default="out/compare_optimizers")
    parser.add_argument("--smoke", action="store_true", help="a tiny shape for a few steps")
    args = parser.parse_args(argv)
    if args.smoke:
        args.shape, args.steps, args.batch_size, args.eval_interval = "smoke", 6, 4, 3
        args.lrs, args.muon_lrs = args.lrs[:2], (args.muon_lrs or args.lrs)[:2]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shards = prepare_data(out)
    runs = []
    for optimizer, lrs in (("adamw", args.lrs), ("muon", args.muon_lrs or args.lrs)):
        for lr in lrs:
            run = one_run(shards, args.shape, optimizer, lr, args.steps, args.batch_size,
                          args.eval_interval, out)
            runs.append(run)
            print(f"{optimizer:6} lr {lr:<8g} final val loss {run['val_loss'][-1]:.4f} "
                  f"({run['val_bpb'][-1]:.4f} bits/byte)", flush=True)
    summary = summarize(runs)
    title = (f"{args.shape}: AdamW vs Muon on pydocs, {args.steps} steps x "
             f"{args.batch_size} rows")
    plot(runs, summary, title, out / "comparison.png")
    (out / "results.json").write_text(json.dumps({"shape": args.shape, "steps": args.steps,
                                                  "batch_size": args.batch_size, "runs": runs,
                                                  "summary": summary}, indent=2))
    ratio = summary["muon_token_ratio"]
    best, final = summary["best_lr"], summary["final_val_loss"]
    print(f"best: AdamW lr {best['adamw']:g} -> {final['adamw']:.4f}; "
          f"Muon lr {best['muon']:g} -> {final['muon']:.4f}")
    print("Muon reaches AdamW's final validation loss with "
          + (f"{ratio:.2f}x AdamW's tokens" if ratio else "no fewer tokens (not reached)")
          + f"; plot {out / 'comparison.png'}")


if __name__ == "__main__":
    run_main(main)
