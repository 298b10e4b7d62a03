"""Import a transformers Llama or GPT-2 model into our checkpoint format.

    python hugging_face/convert_from_hf.py --model out/hf-tiny --output out/imported.pt
    python hugging_face/convert_from_hf.py --model openai-community/gpt2 --output out/gpt2.pt
    python models/gpt.py --init_from out/gpt2.pt --data fineweb-edu ...   # continue pretraining

The model's tokenizer comes from its folder (a byte-level BPE tokenizer.json), or from
--tokenizer. The checkpoint then works with every script here: inference, evaluation, training.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformer_setup.cli import ArgumentParser, run_main

# torch and transformers are imported where they are used: --help answers at once.


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Import a transformers Llama or GPT-2 model.")
    parser.add_argument("--model", required=True, help="a model folder or a Hub id")
    parser.add_argument("--output", required=True, help="the checkpoint to write (.pt)")
    parser.add_argument("--tokenizer", default=None,
                        help="gpt2, bytes or a folder (default: the model's own tokenizer)")
    args = parser.parse_args(argv)
    from models.checkpoint import save_checkpoint
    from models.hf_folder import load_hf_model

    config, state, tok = load_hf_model(args.model, args.tokenizer)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model_config": dataclasses.asdict(config), "tokenizer": tok.spec(),
                     "model": state, "step": 0, "tokens_seen": 0,
                     "best_val_loss": float("inf"), "train_config": {},
                     "imported_from": args.model, "world_size": 1}, output)
    n_params = sum(t.numel() for t in state.values())
    print(f"imported {args.model}: {n_params:,} parameters ({config.n_layer} layers, "
          f"{config.pos_emb}/{config.norm}/{config.mlp}), tokenizer {tok.name}; wrote {output}")


if __name__ == "__main__":
    run_main(main)
