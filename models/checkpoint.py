"""Checkpoints: one `.pt` file of tensors and plain values, written atomically.

Loading uses `torch.load(..., weights_only=True)`, which refuses pickled classes and code, so
opening a checkpoint from a stranger cannot run anything. See docs/CHECKPOINTS.md for the keys.
"""

from __future__ import annotations

import os
import pickle
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
    """Write to a temporary file, fsync, then rename over `path`: a crash at any moment leaves
    either the old file or the new one, never a torn one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
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
    return ckpt


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
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the checkpoint's weights do not fit its config "
                              f"({str(err).splitlines()[0]})") from None
    return model.eval(), tokenizer


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[GPT, Tokenizer]:
    """The model and tokenizer of a checkpoint file, or of a transformers model folder (Llama or
    GPT-2 layout) run through our own model, so both are scored by identical code."""
    if Path(path).is_dir() and (Path(path) / "config.json").exists():
        from hugging_face.convert_from_hf import model_from_hf
        return model_from_hf(str(path), device)
    return model_from_checkpoint(load_checkpoint(path, map_location=device), device)
