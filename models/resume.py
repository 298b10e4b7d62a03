"""Resuming a run: the configuration it continues with, and what it may change.

A resumed run continues the run it resumes. Its configuration is the checkpoint's own; only flags
given on the command line change it (a preset named again changes nothing, and `--max_iters`
alone keeps the saved `lr_decay_iters`, so an extended run stays at min_lr after its decay). The
tokenizer is the one embedded in the checkpoint, or `--tokenizer` if it encodes the same way
(compared by fingerprint, not by name). What would silently train something else is refused;
a change that makes the learning rate jump at the resumed step is refused unless
`--allow_schedule_change`. Every change is listed in one block at start-up and recorded in the
checkpoint (`config_changes`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from models.checkpoint import CheckpointError, load_checkpoint
from models.optim import coherent_schedule, learning_rate_at
from tokenization.tokenizer import Tokenizer, get_tokenizer
from transformer_setup.cli import UserError
from transformer_setup.params import (
    RUNTIME_FIELDS,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
)

# These alter the data order or what a step means, so they are refused (the global batch, block
# size and the data itself are checked by the loader and the model config).
REFUSED_CHANGES = ("seed", "text_field", "data_config", "min_int_score", "fsdp", "optimizer")
# Where and how this invocation runs, not what the run is: never listed as changes.
UNTRACKED = ("resume", "dry_run", "out_dir", "init_from", "profile", "allow_schedule_change")
# Flags of one invocation: a resumed run takes them from its own command line only.
ONE_INVOCATION = ("dry_run", "profile", "allow_schedule_change")
SCHEDULE_FIELDS = ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "max_iters",
                   "muon_lr")
SCHEDULE_TOLERANCE = 0.01  # a relative change of the rate at the resumed step above this: a jump


def resumed_configs(out_dir: str, overrides: dict[str, Any]
                    ) -> tuple[ModelConfig, TrainConfig, Tokenizer]:
    """The checkpoint's configuration with the command line's flags (`overrides`) over it, and
    the tokenizer to continue with."""
    path = Path(out_dir) / "latest.pt"
    if not path.exists():
        raise UserError(f"--resume: no checkpoint to resume from at {path}")
    ckpt = load_checkpoint(path, mmap=True)  # the weights are read later, by the trainer
    require_training_state(ckpt)
    saved = {k: v for k, v in ckpt["train_config"].items()
             if k in TrainConfig.__dataclass_fields__ and k not in ONE_INVOCATION}
    model_base = {k: v for k, v in ckpt["model_config"].items()
                  if k in ModelConfig.__dataclass_fields__}
    model_config, train_config = apply_overrides(
        model_base, {**saved, "out_dir": out_dir, "resume": True}, overrides)
    if "tokenizer" in overrides:  # checked against the checkpoint's by check_resumable
        tokenizer = get_tokenizer(overrides["tokenizer"])
    else:  # the folder it came from may be gone: the checkpoint carries the whole tokenizer
        tokenizer = Tokenizer.from_spec(ckpt["tokenizer"])
    return model_config, train_config, tokenizer


def require_training_state(ckpt: dict[str, Any]) -> None:
    if "optimizer" not in ckpt or "train_config" not in ckpt:
        raise CheckpointError("cannot resume from a weights-only checkpoint (best_model.pt); "
                              "use latest.pt")


def check_resumable(ckpt: dict[str, Any], model_config: ModelConfig, tokenizer: Tokenizer,
                    tc: TrainConfig) -> list[dict[str, Any]]:
    """Refuse what would silently train something else, and a jump of the learning rate not
    asked for; return the changes made, as recorded in `config_changes`."""
    require_training_state(ckpt)
    saved = ckpt["model_config"]
    for key, value in dataclasses.asdict(model_config).items():
        if key not in RUNTIME_FIELDS and saved.get(key) != value:
            raise CheckpointError(f"cannot resume: {key} is {saved.get(key)!r} in the "
                                  f"checkpoint but {value!r} now")
    check_same_tokenizer(ckpt["tokenizer"], tokenizer, tc.tokenizer)
    before = ckpt["train_config"]
    for key in REFUSED_CHANGES:
        if key in before and before[key] != getattr(tc, key):
            raise CheckpointError(f"cannot resume: {key} was {before[key]!r}, now "
                                  f"{getattr(tc, key)!r} (it changes the data or the run's "
                                  "layout); resume with the same value")
    changes = [{"step": ckpt["step"], "field": key, "from": before[key], "to": value}
               for key, value in dataclasses.asdict(tc).items()
               if key in before and before[key] != value and key not in UNTRACKED]
    changes += [{"step": ckpt["step"], "field": key, "from": saved.get(key), "to": value}
                for key, value in dataclasses.asdict(model_config).items()
                if key in RUNTIME_FIELDS and key in saved and saved[key] != value]
    jump = rate_jump(ckpt, tc)
    if jump and not tc.allow_schedule_change:
        fields = ", ".join(f"{c['field']} {c['from']} -> {c['to']}" for c in changes
                           if c["field"] in SCHEDULE_FIELDS)
        raise CheckpointError(f"cannot resume: {fields} would move {jump}; add "
                              "--allow_schedule_change to apply it, or leave those flags out "
                              "to continue the run's own schedule")
    return changes


def check_same_tokenizer(spec: dict[str, Any], tokenizer: Tokenizer, given: str) -> None:
    """Equal if they compute the same ids (ranks, pattern, special tokens), whatever their
    names or folders."""
    if spec == tokenizer.spec():
        return
    saved = Tokenizer.from_spec(spec)
    if saved.fingerprint() != tokenizer.fingerprint():
        raise CheckpointError(
            f"cannot resume: the checkpoint was trained with tokenizer {saved.name!r} "
            f"(fingerprint {saved.fingerprint()}), but --tokenizer {given} is "
            f"{tokenizer.name!r} (fingerprint {tokenizer.fingerprint()}), which encodes text "
            "differently; resume without --tokenizer to use the checkpoint's own")


def scheduled_rates(step: int, tc: TrainConfig) -> dict[str, float]:
    """The learning rates of optimizer step `step` (from 0): AdamW's, and Muon's if it differs."""
    lr = learning_rate_at(step, tc)
    rates = {"the learning rate": lr}
    if tc.optimizer == "muon":  # its own peak, or AdamW's when none is given
        rates["Muon's learning rate"] = lr * (tc.muon_lr or tc.learning_rate) / tc.learning_rate
    return rates


def saved_schedule(ckpt: dict[str, Any]) -> TrainConfig:
    return coherent_schedule(config_from_dict(TrainConfig, ckpt["train_config"]))[0]


def rate_changes(ckpt: dict[str, Any], tc: TrainConfig) -> list[tuple[str, float, float]]:
    """(name, before, after) of each rate at the resumed step: the checkpoint's schedule, then
    this run's."""
    step = ckpt["step"]
    before, after = scheduled_rates(step, saved_schedule(ckpt)), scheduled_rates(step, tc)
    return [(name, before.get(name, after[name]), after[name]) for name in after]


def rate_jump(ckpt: dict[str, Any], tc: TrainConfig) -> str | None:
    """Words for the first rate that jumps at the resumed step, or None."""
    for name, before, after in rate_changes(ckpt, tc):
        if abs(after - before) > SCHEDULE_TOLERANCE * before:
            ratio = f" (x{after / before:.2f})" if before > 0 else ""
            return f"{name} at step {ckpt['step'] + 1} from {before:.3e} to {after:.3e}{ratio}"
    return None


def resume_summary(path: Path, ckpt: dict[str, Any], tc: TrainConfig,
                   changes: list[dict[str, Any]]) -> str:
    """One block for the log: where the run resumes, and every change the command line made."""
    head = f"resumed from {path} at step {ckpt['step']}"
    if not changes:
        return f"{head} with the checkpoint's configuration"
    lines = [f"{head}; the command line changes {len(changes)} setting"
             f"{'s' if len(changes) > 1 else ''} of the checkpoint's configuration:"]
    lines += [f"  {c['field']}: {c['from']} -> {c['to']}" for c in changes]
    if any(c["field"] in SCHEDULE_FIELDS for c in changes):
        step = ckpt["step"] + 1
        for name, before, after in rate_changes(ckpt, tc):
            allowed = " (--allow_schedule_change)" if abs(after - before) > \
                SCHEDULE_TOLERANCE * before else ""
            lines.append(f"  {name} at step {step}: {before:.3e} -> {after:.3e}{allowed}")
    if tc.max_iters < tc.lr_decay_iters:
        last = learning_rate_at(tc.max_iters - 1, tc)
        lines.append(f"  note: the run now ends at step {tc.max_iters}, before its decay ends "
                     f"(step {tc.lr_decay_iters}): its last rate is {last:.3e}, not min_lr; "
                     f"--lr_decay_iters {tc.max_iters} --allow_schedule_change ends the decay "
                     "there")
    return "\n".join(lines)
