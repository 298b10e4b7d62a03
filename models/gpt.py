"""Train a GPT from scratch.

    python models/gpt.py                                    # the flagship: --preset 1b
    python models/gpt.py --preset tiny                      # a few minutes on a laptop CPU
    python models/gpt.py --dry_run                          # size, FLOPs, memory; no weights
    python models/gpt.py --preset gpt2 --max_iters 100 --learning_rate 3e-4 --out_dir out/x
    torchrun --nproc_per_node 8 models/gpt.py               # the flagship on 8 GPUs
    python models/gpt.py --resume                           # continue checkpoints_1B/latest.pt

Any ModelConfig or TrainConfig field is a flag (see --help); with no --preset, the 1b preset is
applied. Writes OUT_DIR/latest.pt (every --save_interval steps and at the end),
OUT_DIR/best_model.pt (best validation loss) and TensorBoard logs under OUT_DIR. A run too slow
for the device found (the flagship on a CPU) stops before reading any data, unless --device is
named.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import TYPE_CHECKING, Any

from transformer_setup.cli import (
    ArgumentParser,
    UserError,
    add_dataclass_arguments,
    nonnegative_float,
    positive_float,
    positive_int,
    run_main,
)
from transformer_setup.params import (
    DEFAULT_PRESET,
    PRESETS,
    RUNTIME_FIELDS,
    ModelConfig,
    TrainConfig,
    build_configs,
    config_from_dict,
)

if TYPE_CHECKING:
    import torch

    from tokenization.tokenizer import Tokenizer

SLOW_STEP_SECONDS = 60.0  # an estimated optimizer step longer than this on the device found
# (not named with --device) stops the run before it reads data

# torch and the training machinery are imported where they are used, after the arguments are
# parsed: `--help` and a mistyped flag answer at once instead of after seconds of imports.


PLAN_OPTIONS = ("gpus", "gpu_type", "hours", "tokens", "price_per_gpu_hour")


def parse_args(argv: list[str] | None = None
               ) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """(the preset named, the config fields given, the dry run's planning options given)."""
    first = ArgumentParser(add_help=False)
    first.add_argument("--preset", choices=list(PRESETS))
    preset = first.parse_known_args(argv)[0].preset  # its values become the defaults shown
    overrides = vars(make_parser(preset).parse_args(argv))
    plan = {k: overrides.pop(k) for k in PLAN_OPTIONS if k in overrides}
    if plan and not overrides.get("dry_run"):
        raise UserError(f"--{' --'.join(plan)} plan a run: add --dry_run")
    return overrides.pop("preset", None), overrides, plan


def add_plan_arguments(parser: ArgumentParser) -> None:
    group = parser.add_argument_group(
        "planning a run (with --dry_run): time, tokens and cost at --assumed_mfu")
    suppress = {"default": argparse.SUPPRESS}
    group.add_argument("--gpus", type=positive_int, metavar="N", **suppress,
                       help="GPUs the run uses (assumed to scale perfectly; default 1)")
    group.add_argument("--gpu_type", metavar="NAME", **suppress,
                       help="H100, H200, A100, L40S, ... (models/device.py's table): its "
                            "dense bf16 peak replaces --gpu_tflops")
    group.add_argument("--hours", type=positive_float, metavar="H", **suppress,
                       help="the tokens reachable in this many hours, and per parameter")
    group.add_argument("--tokens", type=positive_float, metavar="N", **suppress,
                       help="the hours (and cost) to train on this many tokens, e.g. 2e10")
    group.add_argument("--price_per_gpu_hour", type=nonnegative_float, metavar="USD",
                       **suppress, help="the cost of the hours above at this price")


def make_parser(preset: str | None = None) -> ArgumentParser:
    """Every config field as a flag, described by its comment, with the preset's values (the
    default preset's when none is named)."""
    shown_preset = preset or DEFAULT_PRESET
    values = {**PRESETS[shown_preset]["model"], **PRESETS[shown_preset]["train"]}
    shown = {k: (v, f" with --preset {shown_preset}") for k, v in values.items()}
    parser = ArgumentParser(description="Train a GPT language model from scratch. Every field "
                            "of ModelConfig and TrainConfig is a flag; a preset sets many at "
                            "once, and flags override it (put --preset first to see its values "
                            f"below). With no --preset, --preset {DEFAULT_PRESET} (the flagship) "
                            "is applied. With --resume, the checkpoint's configuration is used "
                            "and only the flags given change it.")
    parser.add_argument("--preset", help=f"{' | '.join(PRESETS)} (default: {DEFAULT_PRESET}): "
                        "tiny trains on a CPU in minutes, offline; gpt2 is GPT-2 small; 1b is "
                        "the flagship")
    add_dataclass_arguments(parser, ModelConfig, "model (ModelConfig)", shown)
    add_dataclass_arguments(parser, TrainConfig, "training (TrainConfig)", shown)
    add_plan_arguments(parser)
    return parser


# ----------------------------------------------------------------------------- dry run

def gigabytes(n_bytes: float) -> str:
    return f"{n_bytes / 1e9:.1f} GB"


def step_layout(model_config: ModelConfig, tc: TrainConfig, dtype: torch.dtype,
                memory_bytes: float, world_size: int = 1) -> tuple[int, int]:
    """(micro-batch, accumulation) of one process, as the trainer will pick them."""
    from models.estimate import auto_micro_batch

    batch = tc.batch_size or auto_micro_batch(model_config, tc.global_batch_tokens, world_size,
                                              dtype, memory_bytes)
    if tc.global_batch_tokens is None:
        return batch, tc.accumulation_steps
    return batch, max(1, tc.global_batch_tokens // (batch * model_config.block_size * world_size))


def machine_speed(device: torch.device, dtype: torch.dtype) -> tuple[float, str] | None:
    """The peak FLOP/s of the device found, with words saying where the figure comes from:
    a known GPU's data sheet (for dtype), or a matmul timed on the CPU; None where neither is
    known."""
    from models.device import peak_flops
    from models.estimate import matmul_flops_per_second

    if device.type == "cuda":
        peak = peak_flops(device, dtype)
        return (peak, f"{peak / 1e12:g} TFLOP/s peak") if peak else None
    if device.type == "cpu":
        peak = matmul_flops_per_second(device)
        return peak, f"{peak / 1e9:.0f} GFLOP/s in a float32 matmul"
    return None


def estimate_on_this_machine(model_config: ModelConfig, tc: TrainConfig, world_size: int = 1
                             ) -> tuple[float, str] | None:
    """Seconds per optimizer step on the device found (--device), at --assumed_mfu of its
    peak, and the words to show: the estimate both the dry run and the speed check use."""
    from models.device import resolve_device, resolve_dtype
    from models.estimate import device_memory_bytes, duration, meta_model, seconds_per_step

    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    speed = machine_speed(device, dtype)
    if speed is None:
        return None
    peak, source = speed
    batch, accumulation = step_layout(model_config, tc, dtype,
                                      device_memory_bytes(device, tc.gpu_memory_gb), world_size)
    tokens = batch * accumulation * model_config.block_size  # this process's share
    seconds = seconds_per_step(meta_model(model_config).flops_per_token(), tokens,
                               peak * tc.assumed_mfu)
    longer = f" ({duration(seconds)})" if seconds >= 120 else ""
    return seconds, (f"about {seconds:,.1f} s{longer} per optimizer step on this "
                     f"{device.type} ({source}, at {100 * tc.assumed_mfu:g}% of it)")


def dry_run(model_config: ModelConfig, train_config: TrainConfig,
            plan_options: dict[str, Any] | None = None) -> None:
    """Print what the run would cost on one process, without allocating a single weight; with
    planning options (--gpus, --hours, ...), what the whole run would take."""
    import torch

    from models.device import dtype_name, resolve_device, resolve_dtype
    from models.estimate import (
        device_memory_bytes,
        largest_micro_batch,
        meta_model,
        training_memory,
        usable_memory,
    )

    tc = train_config
    if plan_options:  # --gpu_type's peak is the GPU sized for (refused before any output)
        peak = plan_peak_flops(tc, plan_options.get("gpu_type"))
        tc = dataclasses.replace(tc, gpu_tflops=peak / 1e12)
    model = meta_model(model_config)
    n_params = model.num_params()
    device = resolve_device(tc.device)
    dtype = resolve_dtype(tc.dtype, device)
    assumed = ""
    if tc.dtype == "auto" and device.type != "cuda":  # sizing a GPU run from a laptop
        dtype, assumed = torch.bfloat16, " (auto on a GPU)"
    memory_bytes = device_memory_bytes(device, tc.gpu_memory_gb)
    batch, accumulation = step_layout(model_config, tc, dtype, memory_bytes)
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
    here = estimate_on_this_machine(model_config, tc)
    if here is not None and device.type != "cuda":
        print(f"on this machine: {here[1]}")
    if plan_options is not None:
        print_plan(model_config, tc, plan_options, n_params, flops, tokens * accumulation)


def amount(x: float) -> str:
    """1,234 or 12.3 or 0.0123: whole numbers from 100, else three significant digits."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


# --gpu_type's memory (GB), where it is smaller than the dry run's default 80 GB.
GPU_MEMORY_GB = {"A100-40GB": 40, "L40S": 48, "L40": 48, "L4": 24, "A10": 24, "A10G": 24,
                 "RTX4090": 24, "RTX3090": 24}


def plan_peak_flops(tc: TrainConfig, gpu_type: str | None) -> float:
    """One GPU's dense bf16 peak: --gpu_type's from the table, else --gpu_tflops."""
    from models.device import GPU_TYPES, planned_peak_flops

    if gpu_type is None:
        return tc.gpu_tflops * 1e12
    peak = planned_peak_flops(gpu_type)
    if peak is None:
        raise UserError(f"unknown --gpu_type {gpu_type!r}; known: {', '.join(GPU_TYPES)} "
                        "(or give its dense bf16 peak with --gpu_tflops)")
    return peak


def print_plan(model_config: ModelConfig, tc: TrainConfig, options: dict[str, Any],
               n_params: int, flops_per_token: int, tokens_per_step: int) -> None:
    """The planner: tokens/s on the GPUs named at --assumed_mfu, the tokens reachable in
    --hours (per parameter, beside the compute-optimal ~20), the hours for --tokens and for
    this configuration, and what they cost at --price_per_gpu_hour."""
    from models.estimate import COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER, Plan

    gpus, gpu_type = options.get("gpus", 1), options.get("gpu_type")
    peak = plan_peak_flops(tc, gpu_type)
    plan = Plan(gpus, peak, tc.assumed_mfu, flops_per_token, n_params)
    card_gb = GPU_MEMORY_GB.get(str(gpu_type).upper())
    if card_gb is not None and card_gb < tc.gpu_memory_gb:
        print(f"warning: the layout above is sized for {tc.gpu_memory_gb:g} GB; a {gpu_type} has "
              f"{card_gb:g} GB: add --gpu_memory_gb {card_gb:g} to size for it")
    name = f"{gpu_type} ({peak / 1e12:g} TFLOP/s" if gpu_type else f"GPU ({peak / 1e12:g} TFLOP/s"
    print(f"plan: {gpus} x {name} dense bf16 each) at {100 * tc.assumed_mfu:g}% MFU, assumed "
          "(--assumed_mfu; scripts/gpu_suite.py measures it on a GPU), scaling perfectly "
          "across GPUs:")
    print(f"  {plan.tokens_per_second:,.0f} tokens/s = {gpus} x {peak / 1e12:g}e12 FLOP/s x "
          f"{tc.assumed_mfu:g} / {flops_per_token:,} FLOPs per token")
    optimal = COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER * n_params
    budgets = []  # (what, hours)
    if "hours" in options:
        hours = options["hours"]
        reached = plan.tokens_in(hours)
        print(f"  in {hours:g} hours: {reached:,.0f} tokens = "
              f"{plan.tokens_per_parameter(reached):.1f} tokens per parameter")
        budgets.append((f"{hours:g} hours", hours))
    if "tokens" in options:
        hours = plan.hours_for(options["tokens"])
        print(f"  {options['tokens']:,.0f} tokens (--tokens): {amount(hours)} hours, "
              f"{amount(plan.gpu_hours(hours))} GPU-hours; "
              f"{plan.tokens_per_parameter(options['tokens']):.1f} tokens per parameter")
        budgets.append(("--tokens", hours))
    run_tokens = tc.max_iters * tokens_per_step
    hours = plan.hours_for(run_tokens)
    print(f"  this configuration, max_iters {tc.max_iters:,} x {tokens_per_step:,} tokens = "
          f"{run_tokens:,} tokens ({plan.tokens_per_parameter(run_tokens):.1f} per parameter):"
          f" {amount(hours)} hours, {amount(plan.gpu_hours(hours))} GPU-hours")
    budgets.append(("this configuration", hours))
    print(f"  compute-optimal (Hoffmann et al. 2022): about {COMPUTE_OPTIMAL_TOKENS_PER_PARAMETER}"
          f" tokens per parameter, {optimal:,} tokens: {amount(plan.hours_for(optimal))} hours")
    if "price_per_gpu_hour" in options:
        price = options["price_per_gpu_hour"]
        costs = ", ".join(f"{what} ${plan.cost(h, price):,.2f}" for what, h in budgets)
        print(f"  cost at ${price:.2f} per GPU-hour: {costs}")


def check_speed(model_config: ModelConfig, tc: TrainConfig) -> None:
    """Stop, before any data is read, a run the device found cannot train at a useful speed
    (the flagship on a CPU): one line with the dry run's estimate. Naming --device runs it."""
    if tc.device != "auto":
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    estimate = estimate_on_this_machine(model_config, tc, world_size)
    if estimate is None or estimate[0] <= SLOW_STEP_SECONDS:
        return
    from models.device import resolve_device

    device = resolve_device(tc.device).type
    raise UserError(f"this configuration would take {estimate[1]}: it is sized for GPUs. "
                    "`python models/gpt.py --preset tiny` trains a small model on a CPU in "
                    f"minutes; add --device {device} to run this here anyway")


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
    named_preset, overrides, plan_options = parse_args(argv)
    from models.device import use_expandable_segments

    use_expandable_segments()  # before anything starts CUDA (the speed check, the dtype)
    preset = named_preset or DEFAULT_PRESET
    tokenizer = None
    if overrides.get("resume"):  # the checkpoint's configuration; the flags given change it
        from models.resume import resumed_configs

        out_dir = overrides.get("out_dir", PRESETS[preset]["train"].get(
            "out_dir", TrainConfig.out_dir))
        model_config, train_config, tokenizer = resumed_configs(out_dir, overrides)
    else:
        model_config, train_config = build_configs(preset, overrides)
    if train_config.dry_run:
        dry_run(model_config, train_config, plan_options or None)
        return
    if tokenizer is None and train_config.init_from:
        model_config, tokenizer = config_from_init(train_config.init_from, overrides)
    if tokenizer is None:
        tokenizer, model_config = tokenizer_and_vocabulary(model_config, train_config,
                                                           overrides, named_preset)
    check_speed(model_config, train_config)
    from models.trainer import train

    train(model_config, train_config, tokenizer)


def tokenizer_and_vocabulary(model_config: ModelConfig, tc: TrainConfig,
                             overrides: dict[str, Any], named_preset: str | None
                             ) -> tuple[Tokenizer, ModelConfig]:
    """The tokenizer decides the vocabulary, unless --vocab_size asks for more room."""
    from tokenization.tokenizer import get_tokenizer

    try:
        tokenizer = get_tokenizer(tc.tokenizer)
    except UserError as err:
        if named_preset is None:  # likely a first try: say where an offline start is
            raise UserError(f"{err}; new here? `python models/gpt.py --preset tiny` trains a "
                            "small model offline on a CPU in minutes") from None
        raise
    vocab_size = overrides.get("vocab_size", tokenizer.n_vocab)
    if vocab_size < tokenizer.n_vocab:
        raise UserError(f"--vocab_size {vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.n_vocab} ids")
    return tokenizer, dataclasses.replace(model_config, vocab_size=vocab_size)


if __name__ == "__main__":
    run_main(main)
