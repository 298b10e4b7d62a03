"""Train a GPT from scratch.

    python models/gpt.py --preset tiny                      # a few minutes on a laptop CPU
    python models/gpt.py --preset 1b --dry_run              # size, FLOPs, memory; no weights
    python models/gpt.py --preset gpt2 --max_iters 100 --learning_rate 3e-4 --out_dir out/x
    torchrun --nproc_per_node 8 models/gpt.py --preset 1b     # data-parallel on 8 GPUs

Any ModelConfig or TrainConfig field is a flag (see --help). Writes OUT_DIR/latest.pt (every
--save_interval steps and at the end), OUT_DIR/best_model.pt (best validation loss) and
TensorBoard logs under OUT_DIR.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from transformer_setup.cli import ArgumentParser, UserError, add_dataclass_arguments, run_main
from transformer_setup.params import (
    PRESETS,
    RUNTIME_FIELDS,
    ModelConfig,
    TrainConfig,
    build_configs,
    config_from_dict,
)

if TYPE_CHECKING:
    from tokenization.tokenizer import Tokenizer

# torch and the training machinery are imported where they are used, after the arguments are
# parsed: `--help` and a mistyped flag answer at once instead of after seconds of imports.


def parse_args(argv: list[str] | None = None) -> tuple[str | None, dict[str, Any]]:
    first = ArgumentParser(add_help=False)
    first.add_argument("--preset", choices=list(PRESETS))
    preset = first.parse_known_args(argv)[0].preset  # its values become the defaults shown
    overrides = vars(make_parser(preset).parse_args(argv))
    return overrides.pop("preset", None), overrides


def make_parser(preset: str | None = None) -> ArgumentParser:
    """Every config field as a flag, described by its comment, with the preset's values."""
    shown = {}
    if preset:
        values = {**PRESETS[preset]["model"], **PRESETS[preset]["train"]}
        shown = {k: (v, f" with --preset {preset}") for k, v in values.items()}
    parser = ArgumentParser(description="Train a GPT language model from scratch. Every field "
                            "of ModelConfig and TrainConfig is a flag; a preset sets many at "
                            "once, and flags override it (put --preset first to see its values "
                            "below).")
    parser.add_argument("--preset", help=f"{' | '.join(PRESETS)}: tiny trains on a CPU in "
                        "minutes, offline; gpt2 is GPT-2 small; 1b is the flagship")
    add_dataclass_arguments(parser, ModelConfig, "model (ModelConfig)", shown)
    add_dataclass_arguments(parser, TrainConfig, "training (TrainConfig)", shown)
    return parser


# ----------------------------------------------------------------------------- dry run

def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def dry_run(model_config: ModelConfig, train_config: TrainConfig) -> None:
    """Print what the run would cost on one process, without allocating a single weight."""
    import torch

    from models.device import dtype_name, resolve_device, resolve_dtype
    from models.estimate import (
        auto_micro_batch,
        device_memory_bytes,
        largest_micro_batch,
        meta_model,
        training_memory,
        usable_memory,
    )

    tc = train_config
    model = meta_model(model_config)
    n_params = model.num_params()
    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    assumed = ""
    if tc.dtype == "auto" and device.type != "cuda":  # sizing a GPU run from a laptop
        dtype, assumed = torch.bfloat16, " (auto on a GPU)"
    memory_bytes = device_memory_bytes(device, tc.gpu_memory_gb)
    batch = tc.batch_size or auto_micro_batch(model_config, tc.global_batch_tokens, 1, dtype,
                                              memory_bytes)
    accumulation = tc.accumulation_steps if tc.global_batch_tokens is None else \
        tc.global_batch_tokens // (batch * model_config.block_size)
    tokens = batch * model_config.block_size
    memory = training_memory(model_config, n_params, batch, dtype)
    flops, recomputed = model.flops_per_token(), model.recomputed_flops_per_token(tokens)
    print(f"parameters: {n_params:,}")
    print(f"FLOPs per token (training, forward+backward): {flops:,} ({flops / 1e9:.2f} GFLOP); "
          f"recomputed in backward: {recomputed / 1e9:.2f} GFLOP (+{100 * recomputed / flops:.1f}%"
          f", counted by HFU, not MFU)")
    auto = " (auto: the largest that fits and divides the global batch)" \
        if tc.batch_size is None else ""
    print(f"tokens per optimizer step: {tokens * accumulation:,} ({batch} x {accumulation} x "
          f"{model_config.block_size}); micro-batch {batch}{auto}")
    checkpointing = ""
    if model_config.gradient_checkpointing:
        checkpointing = ", selective checkpointing" if model_config.checkpoint_selective else \
            ", gradient checkpointing"
        if model_config.checkpoint_every > 1:
            checkpointing += f" of every {model_config.checkpoint_every} blocks"
    print(f"training memory estimate per process (micro-batch {batch}, "
          f"{dtype_name(dtype)}{assumed}{checkpointing}): {gigabytes(memory.total)} = "
          f"weights+grads+AdamW {gigabytes(memory.weights_and_optimizer)} + activations "
          f"{gigabytes(memory.activations)} + logits {gigabytes(memory.logits)}")
    policies = {"without gradient checkpointing": dict(gradient_checkpointing=False),
                "with selective": dict(gradient_checkpointing=True, checkpoint_selective=True),
                "with full": dict(gradient_checkpointing=True, checkpoint_selective=False,
                                  checkpoint_every=1)}
    fits = []
    usable = usable_memory(memory_bytes)
    for name, fields in policies.items():
        config = dataclasses.replace(model_config, **fields)
        fits.append(f"{largest_micro_batch(config, n_params, dtype, usable)} {name}")
    print(f"largest micro-batch for {memory_bytes / 1e9:g} GB ({usable / 1e9:.1f} GB usable: "
          f"less the CUDA context and a fragmentation margin): {', '.join(fits)}")
    seconds_per_token = flops / (tc.gpu_tflops * 1e12 * tc.assumed_mfu)
    print(f"estimated speed on a {tc.gpu_tflops:g} TFLOP/s GPU at "
          f"{100 * tc.assumed_mfu:g}% MFU: {1 / seconds_per_token:,.0f} tokens/s "
          f"({1e6 * seconds_per_token:.2f} us per token; "
          f"{seconds_per_token * tokens * accumulation:.2f} s per optimizer step)")


def config_from_init(path: str, overrides: dict[str, Any]) -> tuple[ModelConfig, Tokenizer]:
    """The model shape and tokenizer of the checkpoint to start from; the command line may
    change only what does not touch the weights."""
    from models.checkpoint import load_checkpoint
    from tokenization.tokenizer import Tokenizer

    ckpt = load_checkpoint(path, mmap=True)  # the weights are read later, by the trainer
    config = config_from_dict(ModelConfig, ckpt["model_config"])
    for key, value in overrides.items():
        if key in ModelConfig.__dataclass_fields__ and key not in RUNTIME_FIELDS and \
                getattr(config, key) != value:
            raise UserError(f"--{key} {value} contradicts --init_from {path} "
                            f"({key} = {getattr(config, key)}); the shape comes from it")
    runtime = {k: overrides[k] for k in RUNTIME_FIELDS if k in overrides}
    return dataclasses.replace(config, **runtime), Tokenizer.from_spec(ckpt["tokenizer"])


def main(argv: list[str] | None = None) -> None:
    preset, overrides = parse_args(argv)
    model_config, train_config = build_configs(preset, overrides)
    if train_config.dry_run:
        dry_run(model_config, train_config)
        return
    from models.trainer import train
    from tokenization.tokenizer import get_tokenizer

    if train_config.init_from and not train_config.resume:
        model_config, tokenizer = config_from_init(train_config.init_from, overrides)
        train(model_config, train_config, tokenizer)
        return
    # The tokenizer decides the vocabulary, unless --vocab_size asks for more room.
    try:
        tokenizer = get_tokenizer(train_config.tokenizer)
    except UserError as err:
        if preset is None:  # likely a first try: say where an offline start is
            raise UserError(f"{err}; new here? `python models/gpt.py --preset tiny` trains a "
                            "small model offline on a CPU in minutes") from None
        raise
    vocab_size = overrides.get("vocab_size", tokenizer.n_vocab)
    if vocab_size < tokenizer.n_vocab:
        raise UserError(f"--vocab_size {vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.n_vocab} ids")
    model_config = dataclasses.replace(model_config, vocab_size=vocab_size)
    train(model_config, train_config, tokenizer)


if __name__ == "__main__":
    run_main(main)
