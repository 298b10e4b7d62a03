"""Train a GPT from scratch.

    python models/gpt.py --preset tiny                      # a few minutes on a laptop CPU
    python models/gpt.py --preset 1b --dry_run              # size, FLOPs, memory; no weights
    python models/gpt.py --preset gpt2 --max_iters 100 --learning_rate 3e-4 --out_dir out/x

Any ModelConfig or TrainConfig field is a flag (see --help). Writes OUT_DIR/latest.pt (every
--save_interval steps and at the end), OUT_DIR/best_model.pt (best validation loss) and
TensorBoard logs under OUT_DIR.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from data.loader import PreparedLoader, StreamingLoader, take_batches
from data.shards import is_prepared
from data.sources import DataError, get_source
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.device import autocast, dtype_name, resolve_device, resolve_dtype
from models.estimate import meta_model, training_memory
from models.generate import generate_ids
from models.optim import learning_rate_at, make_optimizer
from tokenization.tokenizer import Tokenizer, get_tokenizer
from transformer_setup.cli import ArgumentParser, UserError, add_dataclass_arguments, run_main
from transformer_setup.params import ModelConfig, TrainConfig, build_configs
from transformer_setup.transformer import GPT


def parse_args(argv: list[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    parser = ArgumentParser(description="Train a GPT language model from scratch.")
    parser.add_argument("--preset", help="tiny | gpt2 | 1b (flags below override it)")
    add_dataclass_arguments(parser, ModelConfig, "model (ModelConfig)")
    add_dataclass_arguments(parser, TrainConfig, "training (TrainConfig)")
    overrides = vars(parser.parse_args(argv))
    return overrides.pop("preset", None), overrides


# ----------------------------------------------------------------------------- dry run

def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def dry_run(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Print what the run would cost, without allocating a single weight."""
    model = meta_model(model_config)
    n_params = model.num_params()
    device = resolve_device(train_config.device)
    dtype = resolve_dtype(train_config.dtype, device)
    assumed = ""
    if train_config.dtype == "auto" and device.type != "cuda":  # sizing a GPU run from a laptop
        dtype, assumed = torch.bfloat16, " (auto on a GPU)"
    memory = training_memory(model_config, n_params, train_config.batch_size, dtype)
    flops = model.flops_per_token()
    tokens_per_step = (train_config.batch_size * train_config.accumulation_steps
                       * model_config.block_size)
    print(f"parameters: {n_params:,}")
    print(f"FLOPs per token (training, forward+backward): {flops:,} ({flops / 1e9:.2f} GFLOP)")
    print(f"tokens per optimizer step: {tokens_per_step:,} "
          f"({train_config.batch_size} x {train_config.accumulation_steps} x "
          f"{model_config.block_size})")
    checkpointing = ", gradient checkpointing" if model_config.gradient_checkpointing else ""
    print(f"training memory estimate per process (micro-batch {train_config.batch_size}, "
          f"{dtype_name(dtype)}{assumed}{checkpointing}): {gigabytes(memory.total)} = "
          f"weights+grads+AdamW {gigabytes(memory.weights_and_optimizer)} + activations "
          f"{gigabytes(memory.activations)} + logits {gigabytes(memory.logits)}")


# ----------------------------------------------------------------------------- training

def prepare_out_dir(out_dir: Path) -> None:
    """Fail before training, not after an hour, when checkpoints could not be written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(f"output folder {out_dir} is not writable ({err.strerror})") from None


@torch.no_grad()
def evaluate(model: GPT, batches: list[tuple[torch.Tensor, torch.Tensor]], ctx,
             byte_lengths: torch.Tensor) -> tuple[float, float]:
    """Mean loss (nats per token) and bits per byte over fixed validation batches."""
    model.eval()
    nats = n_bytes = 0.0
    tokens = 0
    for x, y in batches:
        with ctx:
            loss = model(x, y).item()
        nats += loss * y.numel()
        tokens += y.numel()
        n_bytes += byte_lengths[y.cpu()].sum().item()
    model.train()
    return nats / tokens, nats / math.log(2) / max(n_bytes, 1.0)


def make_loaders(tc: TrainConfig, tokenizer: Tokenizer, block_size: int, device: torch.device,
                 rank: int = 0, world_size: int = 1):
    """The training loader and the fixed validation batches, for a prepared folder or a source."""
    if is_prepared(tc.data):
        train = PreparedLoader.from_folder(tc.data, "train", tokenizer, block_size,
                                           tc.batch_size, seed=tc.seed + rank, device=device)
        val = PreparedLoader.from_folder(tc.data, "val", tokenizer, block_size, tc.batch_size,
                                         seed=0, device=device)
        print(f"data: prepared shards in {tc.data}")
    else:
        source = get_source(tc.data, tc.text_field, tc.data_config, tc.min_int_score)
        train = StreamingLoader(source, tokenizer, block_size, tc.batch_size, "train", rank,
                                world_size, tc.data_workers, device)
        val = StreamingLoader(source, tokenizer, block_size, tc.batch_size, "val", device=device,
                              repeat=False, lanes=1)  # every validation token counts
        print(f"data: {source.name}, streamed ({tc.data_workers} worker processes)")
    val_batches = take_batches(val, tc.eval_iters)
    if not val_batches:
        raise DataError(f"the validation split of {tc.data} has less than one batch of text "
                        f"({tc.batch_size} x {block_size + 1} tokens); use more data or a "
                        "smaller --batch_size or --block_size")
    print(f"tokenizer: {tokenizer.name} ({tokenizer.n_vocab:,} ids); validation: "
          f"{len(val_batches)} batches")
    return train, val_batches


def check_resumable(ckpt: dict[str, Any], model_config: ModelConfig, tokenizer: Tokenizer) -> None:
    """Resuming with another model shape or tokenizer would silently train something else."""
    saved = ckpt["model_config"]
    ignored = {"attention", "gradient_checkpointing", "dropout"}  # do not change the weights
    for key, value in dataclasses.asdict(model_config).items():
        if key not in ignored and saved.get(key) != value:
            raise CheckpointError(f"cannot resume: {key} is {saved.get(key)!r} in the "
                                  f"checkpoint but {value!r} now")
    if ckpt["tokenizer"] != tokenizer.spec():
        raise CheckpointError(f"cannot resume: the checkpoint was trained with tokenizer "
                              f"{ckpt['tokenizer']['name']!r}, not {tokenizer.name!r}")


def train(model_config: ModelConfig, train_config: TrainConfig,
          tokenizer: Tokenizer) -> dict[str, float]:
    tc = train_config
    out_dir = Path(tc.out_dir)
    prepare_out_dir(out_dir)
    latest_path, best_path = out_dir / "latest.pt", out_dir / "best_model.pt"
    if tc.resume and not latest_path.exists():
        raise UserError(f"--resume: no checkpoint to resume from at {latest_path}")

    torch.manual_seed(tc.seed)
    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    ctx = autocast(device, dtype)
    loader, val_batches = make_loaders(tc, tokenizer, model_config.block_size, device)
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths())

    model = GPT(model_config).to(device)
    optimizer = make_optimizer(model, tc, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, best_val_loss, tokens_seen = 0, float("inf"), 0
    if tc.resume:
        ckpt = load_checkpoint(latest_path, map_location=device)
        check_resumable(ckpt, model_config, tokenizer)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        loader.load_state_dict(ckpt["data"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        step, best_val_loss = ckpt["step"], ckpt["best_val_loss"]
        tokens_seen = ckpt["tokens_seen"]
        print(f"resumed from {latest_path} at step {step}")

    print(f"model: {model.num_params():,} parameters, {model_config}")
    print(f"training: {tc}")
    print(f"device: {device}, dtype: {dtype_name(dtype)}")
    writer = None
    if tc.tensorboard:
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(log_dir=str(out_dir))

    def checkpoint_payload(with_training_state: bool) -> dict[str, Any]:
        payload = {"model_config": dataclasses.asdict(model_config),
                   "train_config": dataclasses.asdict(tc), "tokenizer": tokenizer.spec(),
                   "model": model.state_dict(), "step": step, "tokens_seen": tokens_seen,
                   "best_val_loss": best_val_loss}
        if with_training_state:
            payload.update(optimizer=optimizer.state_dict(), scaler=scaler.state_dict(),
                           data=loader.state_dict(), rng={"torch": torch.get_rng_state()})
        return payload

    tokens_per_step = tc.batch_size * tc.accumulation_steps * model_config.block_size
    sample_generator = torch.Generator(device=device)
    progress = tqdm(total=tc.max_iters, initial=step, desc="training", unit="step",
                    disable=None, dynamic_ncols=True)
    losses: list[float] = []
    timer, timed_steps = time.perf_counter(), 0  # throughput excludes evaluation and saving
    model.train()
    while step < tc.max_iters:
        lr = learning_rate_at(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        step_loss = 0.0
        for _ in range(tc.accumulation_steps):
            x, y = loader.next_batch()
            with ctx:
                loss = model(x, y) / tc.accumulation_steps
            scaler.scale(loss).backward()
            step_loss += loss.item()
        if tc.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        losses.append(step_loss)
        timed_steps += 1
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")

        if step % tc.log_interval == 0 or step == tc.max_iters:
            elapsed = time.perf_counter() - timer
            tokens_per_sec = tokens_per_step * timed_steps / elapsed
            progress.write(f"step {step}/{tc.max_iters} | loss {step_loss:.4f} | lr {lr:.2e} | "
                           f"{tokens_per_sec:,.0f} tok/s | {1000 * elapsed / timed_steps:.0f} "
                           "ms/step")
            if writer:
                writer.add_scalar("train/loss", step_loss, step)
                writer.add_scalar("train/lr", lr, step)
                writer.add_scalar("train/tokens_per_sec", tokens_per_sec, step)
            timer, timed_steps = time.perf_counter(), 0

        if step % tc.eval_interval == 0 or step == tc.max_iters:
            val_loss, val_bpb = evaluate(model, val_batches, ctx, byte_lengths)
            progress.write(f"step {step}: val loss {val_loss:.4f} | val bits/byte {val_bpb:.4f}")
            if writer:
                writer.add_scalar("val/loss", val_loss, step)
                writer.add_scalar("val/bpb", val_bpb, step)
            if tc.sample_tokens:
                sample_generator.manual_seed(tc.seed)
                with ctx:
                    ids = generate_ids(model, [tokenizer.eot_id], tc.sample_tokens,
                                       temperature=0.8, top_k=200, generator=sample_generator)[0]
                progress.write(f"sample: {tokenizer.decode(ids)!r}")
            if val_loss < best_val_loss:
                best_val_loss = val_loss
                save_checkpoint(checkpoint_payload(with_training_state=False), best_path)
            timer, timed_steps = time.perf_counter(), 0

        if step % tc.save_interval == 0 or step == tc.max_iters:
            save_checkpoint(checkpoint_payload(with_training_state=True), latest_path)
            timer, timed_steps = time.perf_counter(), 0
    progress.close()
    if writer:
        writer.close()
    print(f"done: {step} steps, {tokens_seen:,} tokens, best val loss {best_val_loss:.4f}; "
          f"checkpoints in {out_dir}")
    return {"best_val_loss": best_val_loss, "final_loss": losses[-1] if losses else float("nan")}


def main(argv: list[str] | None = None) -> None:
    preset, overrides = parse_args(argv)
    model_config, train_config = build_configs(preset, overrides)
    if train_config.dry_run:
        dry_run(model_config, train_config)
        return
    # The tokenizer decides the vocabulary, unless --vocab_size asks for more room.
    tokenizer = get_tokenizer(train_config.tokenizer)
    vocab_size = overrides.get("vocab_size", tokenizer.n_vocab)
    if vocab_size < tokenizer.n_vocab:
        raise UserError(f"--vocab_size {vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.n_vocab} ids")
    model_config = dataclasses.replace(model_config, vocab_size=vocab_size)
    train(model_config, train_config, tokenizer)


if __name__ == "__main__":
    run_main(main)
