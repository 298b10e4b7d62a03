"""HellaSwag: pick the most likely of four endings for each context (Zellers et al., 2019), scored
exactly as lm-evaluation-harness 0.4 scores its `hellaswag` task, so that figures stand beside
published ones.

    python evaluation/hellaswag.py out/gpt2/best_model.pt                   # validation, online
    python evaluation/hellaswag.py out/hf-tiny --data hellaswag_val.jsonl --limit 500

How each example is built and scored (the harness's query, preprocessing and `acc_norm`) is in
evaluation/hellaswag_scoring.py, which training's in-loop HellaSwag (`--eval_hellaswag N`) calls
too: the two give the same numbers. Random guessing scores 0.25.
"""

from __future__ import annotations

import json

from evaluation.hellaswag_scoring import evaluate, load_examples
from transformer_setup.cli import ArgumentParser, positive_int, run_main

# torch is imported where it is used: --help answers at once.


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="HellaSwag multiple-choice accuracy, as "
                                        "lm-evaluation-harness scores it.")
    parser.add_argument("checkpoint", help="a .pt checkpoint or a transformers model folder")
    parser.add_argument("--data", default="hellaswag",
                        help="hellaswag (the Hub's validation split) or a local .jsonl file")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="score the first N examples")
    parser.add_argument("--batch_size", type=positive_int, default=8,
                        help="examples (each with its four endings) per forward pass")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="fp32", help="auto | bf16 | fp16 | fp32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from models.checkpoint import load_model
    from models.device import autocast, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    ctx = autocast(device, resolve_dtype(args.dtype, device))
    examples = load_examples(args.data, args.limit)
    model, tokenizer = load_model(args.checkpoint, device)
    result = evaluate(model, tokenizer, examples, args.batch_size, ctx, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return
    print(f"HellaSwag ({args.data}, {result['examples']} examples): acc {result['acc']:.4f} | "
          f"acc_norm {result['acc_norm']:.4f}")


if __name__ == "__main__":
    run_main(main)
