"""Export a checkpoint as a folder that transformers' Auto classes load, with no custom code.

    python hugging_face/convert_to_hf.py --checkpoint out/tiny/best_model.pt \
        --output_dir out/hf-tiny

The folder holds config.json and safetensors weights for the stock class of the model's family
(LlamaForCausalLM for RoPE/RMSNorm/SwiGLU, GPT2LMHeadModel for the GPT-2 layout), sharded when
large; generation_config.json; the tokenizer (AutoTokenizer gives our ids; <|endoftext|> is bos,
eos and pad); and a model card README.md with the Hub's metadata and the facts of the training
run. transformers 4.x (from 4.46) loads it as 5.x does. --overwrite replaces an earlier export in
the folder and refuses a folder holding anything else (a run's checkpoints, say).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from pathlib import Path
from typing import Any

from tokenization.tokenizer import Tokenizer
from transformer_setup.cli import ArgumentParser, UserError, run_main
from transformer_setup.params import ModelConfig, config_from_dict

# torch and transformers are imported where they are used: --help answers at once.

HUB_DATASETS = {"fineweb-edu": "HuggingFaceFW/fineweb-edu", "wikitext-103": "Salesforce/wikitext"}
# The files an export writes, in transformers 5 or 4.x (4.x adds special_tokens_map.json). Only
# these are replaced by --overwrite, and publishing removes the Hub's copies the new export lacks.
EXPORT_FILES = ("config.json", "generation_config.json", "model.safetensors",
                "model.safetensors.index.json", "model-*-of-*.safetensors", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "README.md")
REPO_PLACEHOLDER = "PATH_OR_REPO"  # in the card's snippet; publish_model.py fills in the repo


def is_export_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in EXPORT_FILES)


def prepare_output_dir(path: Path, overwrite: bool) -> None:
    """An empty folder to write into. --overwrite removes an earlier export's files and nothing
    else: a folder holding anything an export does not write (a run's checkpoints and logs, say)
    is refused whole, before anything is deleted."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    entries = sorted(path.iterdir()) if path.exists() else []
    if entries and not overwrite:
        raise UserError(f"{path} exists and is not empty; choose another --output_dir or "
                        "pass --overwrite")
    foreign = [e for e in entries if not (e.is_file() and is_export_file(e.name))]
    if foreign:
        checkpoints = [e.name for e in foreign if e.suffix == ".pt"]
        what = (f"checkpoints ({', '.join(checkpoints[:3])})" if checkpoints else
                f"files an export does not write ({', '.join(e.name for e in foreign[:3])})")
        raise UserError(f"{path} holds {what}; --overwrite replaces only an earlier export's "
                        "files: choose another --output_dir")
    for entry in entries:
        entry.unlink()
    path.mkdir(parents=True, exist_ok=True)


def imported_from(ckpt: dict[str, Any]) -> str | None:
    """The transformers model a checkpoint was imported from (convert_from_hf.py), if it was.
    Imports before `imported_from` existed wrote the model as their only train_config entry."""
    train = ckpt.get("train_config") or {}
    return ckpt.get("imported_from") or (train["data"] if set(train) == {"data"} else None)


def card_front_matter(ckpt: dict[str, Any], family: str, license_id: str) -> list[str]:
    """The Hub's YAML metadata: license, tags, the training data or the model imported."""
    source = imported_from(ckpt)
    data = "" if source else (ckpt.get("train_config") or {}).get("data", "")
    datasets = [HUB_DATASETS[data]] if data in HUB_DATASETS else \
        [data] if data.count("/") == 1 and not Path(data).exists() else []
    front = ["---", f"license: {license_id}", "language:", "- en", "library_name: transformers",
             "pipeline_tag: text-generation", "tags:", "- text-generation", "- causal-lm",
             f"- {family}", "- gpt-pretrain"]
    if datasets:
        front += ["datasets:"] + [f"- {d}" for d in datasets]
    if source and source.count("/") == 1 and not Path(source).exists():  # a Hub id
        front.append(f"base_model: {source}")
    return front + ["---"]


def card_facts(ckpt: dict[str, Any], config: ModelConfig, n_params: int,
               n_tokens: int) -> list[str]:
    """The table rows: shape, tokenizer, and how the model was trained or where it came from."""
    source = imported_from(ckpt)
    vocab = f"{n_tokens:,} ids" if n_tokens == config.vocab_size else \
        f"{n_tokens:,} ids; the model has {config.vocab_size:,} rows, the rest never produced"
    facts = [f"| parameters | {n_params:,} |",
             f"| layers / width / heads / KV heads | {config.n_layer} / {config.n_embd} / "
             f"{config.n_head} / {config.n_kv_head} |",
             f"| context | {config.block_size} tokens |",
             f"| tokenizer | {ckpt['tokenizer']['name']} ({vocab}) |"]
    if source:
        facts.append(f"| imported from | {source} |")
    else:
        data = (ckpt.get("train_config") or {}).get("data", "")
        facts += [f"| training data | {data or 'unknown'} |",
                  f"| optimizer steps | {ckpt.get('step', 0):,} |",
                  f"| tokens seen | {ckpt.get('tokens_seen', 0):,} |"]
    val_loss = ckpt.get("best_val_loss")
    if val_loss is not None and math.isfinite(val_loss):
        facts += [f"| best validation loss | {val_loss:.4f} nats/token |",
                  f"| validation perplexity | {math.exp(val_loss):.2f} |"]
    return facts


def model_card(ckpt: dict[str, Any], config: ModelConfig, family: str, n_params: int,
               license_id: str, n_tokens: int) -> str:
    """README.md: YAML front matter for the Hub, then what the model is and how it was trained."""
    front = card_front_matter(ckpt, family, license_id)
    facts = card_facts(ckpt, config, n_params, n_tokens)
    source = imported_from(ckpt)
    cls = "LlamaForCausalLM" if family == "llama" else "GPT2LMHeadModel"
    name = cls.replace("ForCausalLM", "").replace("LMHeadModel", "")
    title, origin = (f"{name} model imported from {source}",
                     f"A decoder-only language model imported from `{source}` into gpt-pretrain")\
        if source else (f"{name} model pretrained from scratch",
                        "A decoder-only language model trained with gpt-pretrain")
    body = f"""
# {title}

{origin} and exported to the stock transformers class `{cls}`: no custom code is needed to load
it.

| | |
| --- | --- |
{chr(10).join(facts)}

## Use

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{REPO_PLACEHOLDER}")
model = AutoModelForCausalLM.from_pretrained("{REPO_PLACEHOLDER}")
ids = tokenizer("The meaning of life is", return_tensors="pt").input_ids
print(tokenizer.decode(model.generate(ids, max_new_tokens=40)[0]))
```

This is a base model: it continues text, it does not follow instructions.
"""
    return "\n".join(front) + "\n" + body


def export(ckpt: dict[str, Any], output_dir: Path, overwrite: bool = False,
           license_id: str = "apache-2.0") -> str:
    """Write the folder; returns the family. Nothing is written if the model has no stock class."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig
    from transformers.utils import logging as transformers_logging

    from transformer_setup.hf_weights import hf_family, to_hf_config, to_hf_state_dict

    transformers_logging.disable_progress_bar()  # our one line says what was written

    config = config_from_dict(ModelConfig, ckpt["model_config"])
    family = hf_family(config)  # raises, naming the knobs in the way, before anything is written
    tokenizer = Tokenizer.from_spec(ckpt["tokenizer"])
    if tokenizer.n_vocab > config.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.n_vocab} ids but the model only "
                        f"{config.vocab_size}; such a checkpoint cannot be exported consistently")
    prepare_output_dir(output_dir, overwrite)
    hf_config = to_hf_config(config, tokenizer.eot_id)
    with torch.device("meta"):
        hf_model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    state = to_hf_state_dict(ckpt["model"], config)
    missing, unexpected = hf_model.load_state_dict(state, strict=False, assign=True)
    if unexpected or any(key != "lm_head.weight" for key in missing):
        raise RuntimeError(f"weight names do not match: missing {missing}, unexpected {unexpected}")
    hf_model.tie_weights()
    hf_model.save_pretrained(output_dir, max_shard_size="2GB")
    # Rows past the tokenizer's ids (a --vocab_size above it) are kept, so that the logits and
    # their softmax equal ours; generate() is told never to pick them (nothing decodes them).
    unused = list(range(tokenizer.n_vocab, config.vocab_size))
    GenerationConfig(bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id,
                     pad_token_id=tokenizer.eot_id, do_sample=True, temperature=0.8, top_k=200,
                     max_new_tokens=200, suppress_tokens=unused or None
                     ).save_pretrained(output_dir)
    tokenizer.save(output_dir)
    n_params = sum(t.numel() for t in state.values())
    (output_dir / "README.md").write_text(model_card(ckpt, config, family, n_params, license_id,
                                                     tokenizer.n_vocab))
    return family


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Export a checkpoint to a transformers model folder.")
    parser.add_argument("--checkpoint", required=True, help="a .pt checkpoint (best_model.pt)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --output_dir (only its files)")
    parser.add_argument("--license", default="apache-2.0", help="license id for the model card")
    args = parser.parse_args(argv)
    from models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    family = export(ckpt, Path(args.output_dir), args.overwrite, args.license)
    config = dataclasses.asdict(config_from_dict(ModelConfig, ckpt["model_config"]))
    print(f"exported {args.checkpoint} ({family}, {config['n_layer']} layers) to "
          f"{args.output_dir}; load it with AutoModelForCausalLM.from_pretrained")


if __name__ == "__main__":
    run_main(main)
