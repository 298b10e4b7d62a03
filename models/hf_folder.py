"""A transformers model folder (or Hub id) as our config, weights and tokenizer.

Used to import a model (hugging_face/convert_from_hf.py) and to run inference and evaluation
on transformers folders with our own model (models.checkpoint.load_model). The name
correspondence between the two layouts is transformer_setup/hf_weights.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tokenization.tokenizer import Tokenizer, TokenizerError, get_tokenizer, tokenizer_from_folder
from transformer_setup.cli import UserError
from transformer_setup.params import ModelConfig

if TYPE_CHECKING:
    import torch

    from transformer_setup.transformer import GPT

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _hub_reachable(model_id: str) -> None:
    from huggingface_hub import HfApi

    if model_id.startswith((".", "/", "~")) or model_id.count("/") > 1:
        raise UserError(f"folder not found: {model_id}")
    try:
        HfApi().model_info(model_id, timeout=15)
    except Exception as err:  # DNS, connection, 401/404: all mean we cannot get it
        reason = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise UserError(f"no folder {model_id} here, and cannot reach model {model_id!r} on the "
                        f"Hugging Face Hub ({reason})") from None


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a transformers model folder (no config.json)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise UserError(f"{folder} has a config.json but no weights "
                        f"({' or '.join(WEIGHT_FILES[::2])})")


def load_hf_model(id_or_dir: str, tokenizer: str | None = None
                  ) -> tuple[ModelConfig, dict[str, torch.Tensor], Tokenizer]:
    """Our config, our state dict and the tokenizer of a transformers model folder or Hub id."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    from transformer_setup.hf_weights import from_hf_config, from_hf_state_dict

    transformers_logging.disable_progress_bar()

    local = Path(id_or_dir)
    if local.exists():
        _check_folder(local)
    else:
        _hub_reachable(id_or_dir)
    try:
        hf_config = AutoConfig.from_pretrained(id_or_dir)
    except (OSError, ValueError, KeyError) as err:
        raise UserError(f"cannot read the config of {id_or_dir} "
                        f"({str(err).splitlines()[0][:160]})") from None
    config = from_hf_config(hf_config)  # a ConfigError for unsupported architectures
    hf_model = AutoModelForCausalLM.from_pretrained(id_or_dir, dtype=torch.float32)
    state = from_hf_state_dict(hf_model.state_dict(), config)
    if tokenizer is not None:
        tok = get_tokenizer(tokenizer)
    elif local.exists():
        try:
            tok = tokenizer_from_folder(local)
        except TokenizerError as err:
            raise UserError(f"{err}; pass --tokenizer to choose one") from None
    else:
        from huggingface_hub import snapshot_download
        tok = tokenizer_from_folder(snapshot_download(id_or_dir, allow_patterns=["tokenizer*"]))
    if tok.n_vocab > config.vocab_size:
        raise UserError(f"the tokenizer has {tok.n_vocab} ids but the model only "
                        f"{config.vocab_size}")
    return config, state, tok


def model_from_hf(id_or_dir: str, device: torch.device | str = "cpu"
                  ) -> tuple[GPT, Tokenizer]:
    """Our model, with the weights of a transformers folder: for inference and evaluation."""
    from transformer_setup.transformer import GPT

    config, state, tok = load_hf_model(id_or_dir)
    model = GPT(config)
    model.load_state_dict(state)
    return model.to(device).eval(), tok
