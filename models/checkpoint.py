"""Checkpoints: one `.pt` file of tensors and plain values, written atomically.

Loading uses `torch.load(..., weights_only=True)`, which refuses pickled classes and code, so
opening a checkpoint from a stranger cannot run anything. See docs/CHECKPOINTS.md for the keys.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from tokenization.tokenizer import Tokenizer
from transformer_setup.cli import UserError
from transformer_setup.params import ModelConfig, config_from_dict
from transformer_setup.transformer import GPT

FORMAT = "gpt-pretrain-checkpoint/1"


class CheckpointError(UserError):
    pass


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> None:
    """Write to a temporary file of this process, fsync, then rename over `path`: a crash at any
    moment leaves either the old file or the new one, never a torn one. A failed write (a full
    disk) removes the temporary file and raises a CheckpointError naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{write_error(err, path.parent)} writing {path}") from None


def copy_atomically(source: Path, target: Path) -> None:
    """A copy that appears whole or not at all, like save_checkpoint."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"{write_error(err, target.parent)} writing {target}") from None


def write_error(err: Exception, folder: Path) -> str:
    """What went wrong, in words: a full disk is named as such, whatever layer noticed it."""
    if getattr(err, "errno", None) == errno.ENOSPC or shutil.disk_usage(folder).free < 1 << 20:
        return "no space left on the device"
    return getattr(err, "strerror", None) or str(err).splitlines()[0][:120]


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """The checkpoint's dict; a CheckpointError with one clear line for anything else.
    mmap=True maps tensors from the file instead of reading them: cheap when only the
    configuration is needed."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file")
    if not path.is_file():  # a FIFO or a device would block or stream forever
        raise CheckpointError(f"{path} is not a regular file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except PermissionError:
        raise CheckpointError(f"no permission to read {path}") from None
    except pickle.UnpicklingError as err:
        if "GLOBAL" in str(err):  # a pickled class or function: loading it could run code
            raise CheckpointError(f"{path} contains Python objects that could run code when "
                                  "loaded; refusing it (only tensors and plain values are "
                                  "allowed)") from None
        raise CheckpointError(f"{path} is not a checkpoint (not a PyTorch file)") from None
    except Exception:  # torch.load fails in many ways on arbitrary bytes; all mean the same
        raise CheckpointError(f"{path} is not a readable checkpoint: truncated, corrupt or "
                              "not a PyTorch file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project")
    check_weights_fit(ckpt, path)
    return ckpt


REQUIRED_KEYS = ("model_config", "tokenizer", "model")


def check_weights_fit(ckpt: dict[str, Any], path: str | Path) -> None:
    """The checkpoint has a valid config and weights of exactly the shapes it implies: checked
    on the meta device, before any memory is allocated for the model."""
    missing = [key for key in REQUIRED_KEYS if not isinstance(ckpt.get(key), dict)]
    if missing:
        raise CheckpointError(f"{path} is incomplete: no {', '.join(missing)}")
    try:
        config = config_from_dict(ModelConfig, ckpt["model_config"])
    except (UserError, TypeError) as err:
        raise CheckpointError(f"{path} has an invalid model config ({err})") from None
    with torch.device("meta"):
        expected = {k: v.shape for k, v in GPT(config).state_dict().items()}
    weights = ckpt["model"]
    for name, shape in expected.items():
        found = weights.get(name)
        if not isinstance(found, torch.Tensor) or found.shape != shape:
            what = "missing" if found is None else \
                f"of shape {tuple(getattr(found, 'shape', ()))}"
            raise CheckpointError(f"{path}: weight {name} is {what}, but its config needs "
                                  f"{tuple(shape)}")
    extra = sorted(set(weights) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: weights its config has no place for ({extra[0]}, ...)")


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device | str = "cpu",
                          attention: str = "auto") -> tuple[GPT, Tokenizer]:
    """The trained model (eval mode) and its tokenizer, from a loaded checkpoint."""
    config: ModelConfig = config_from_dict(ModelConfig, {**ckpt["model_config"],
                                                         "attention": attention,
                                                         "dropout": 0.0})
    tokenizer = Tokenizer.from_spec(ckpt["tokenizer"])
    with torch.device("meta"):  # no time spent on a random init that is overwritten next
        model = GPT(config)
    model.to_empty(device=device)
    model.init_buffers()
    model.load_state_dict(ckpt["model"])  # shapes checked by load_checkpoint
    return model.eval(), tokenizer


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a checkpoint file, or of a transformers model folder (Llama or
    GPT-2 layout) run through our own model, so both are scored by identical code."""
    if Path(path).is_dir() and (Path(path) / "config.json").is_file():
        from models.hf_folder import model_from_hf
        return model_from_hf(str(path), device)
    return model_from_checkpoint(load_checkpoint(path, map_location=device), device)
