"""Generate text from a trained checkpoint.

    python models/inference.py out/tiny/best_model.pt                      # interactive loop
    python models/inference.py out/tiny/best_model.pt --prompt "The list"  # one continuation

In the loop, each line you type is a prompt; the continuation streams as it is generated.
`exit`, end of input (Ctrl-D) or Ctrl-C quits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from transformer_setup.cli import (
    ArgumentParser,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    probability,
    run_main,
)

if TYPE_CHECKING:
    import torch

    from tokenization.tokenizer import Tokenizer
    from transformer_setup.transformer import GPT

# torch is imported once the arguments are parsed: --help and mistakes answer at once.


def parse_args(argv: list[str] | None = None):
    parser = ArgumentParser(description="Generate text with a trained checkpoint.")
    parser.add_argument("checkpoint", help="a .pt checkpoint, or a transformers model folder")
    parser.add_argument("--prompt", help="generate one continuation of this text, then exit")
    parser.add_argument("--max_new_tokens", type=positive_int, default=200,
                        help="tokens to generate per continuation (default 200)")
    parser.add_argument("--temperature", type=nonnegative_float, default=0.8,
                        help="sampling temperature; 0 = greedy (default 0.8)")
    parser.add_argument("--top_k", type=nonnegative_int, default=200,
                        help="sample among the k most likely tokens; 0 = no limit (default 200)")
    parser.add_argument("--top_p", type=probability, default=1.0,
                        help="nucleus sampling: the smallest set with this probability; 1 = off")
    parser.add_argument("--num_samples", type=positive_int, default=1,
                        help="continuations per prompt (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="same seed, same text")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32")
    return parser.parse_args(argv)


class TextStream:
    """Turns tokens into printable text as they arrive. A character split across tokens
    (multi-byte UTF-8) is held back until its last byte arrives."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = 0

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        new, self.emitted = text[self.emitted:], len(text)
        return new

    def flush(self) -> str:
        text = self.tokenizer.decode(self.ids)
        new, self.emitted = text[self.emitted:], len(text)
        return new


class Generator:
    """The model, its tokenizer and the sampling options: a prompt in, text out."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, args, device: torch.device,
                 dtype: torch.dtype) -> None:
        import torch

        from models.device import autocast

        self.model, self.tokenizer, self.args = model, tokenizer, args
        self.ctx = autocast(device, dtype)
        self.rng = torch.Generator(device=device)
        if args.seed is not None:
            self.rng.manual_seed(args.seed)
        else:
            self.rng.seed()
        self.warned_long_prompt = False

    def prompt_ids(self, prompt: str) -> list[int]:
        # An empty prompt starts a fresh document, as training data does.
        ids = [self.tokenizer.eot_id] + self.tokenizer.encode(prompt)
        block_size = self.model.config.block_size
        if len(ids) > block_size and not self.warned_long_prompt:
            print(f"note: the prompt is {len(ids)} tokens; the model sees the last {block_size}",
                  file=sys.stderr)
            self.warned_long_prompt = True
        return ids

    def tokens(self, prompt: str) -> Iterable[torch.Tensor]:
        from models.generate import generate

        args = self.args
        with self.ctx:
            yield from generate(self.model, self.prompt_ids(prompt), args.max_new_tokens,
                                temperature=args.temperature, top_k=args.top_k or None,
                                top_p=args.top_p, num_samples=args.num_samples,
                                stop_id=self.tokenizer.eot_id, generator=self.rng,
                                n_vocab=self.tokenizer.n_vocab)

    def respond(self, prompt: str, out=sys.stdout) -> None:
        """Print the continuation(s) of prompt; one sample streams token by token."""
        eot = self.tokenizer.eot_id
        if self.args.num_samples == 1:
            stream = TextStream(self.tokenizer)
            for token in self.tokens(prompt):
                if token.item() == eot:
                    break
                out.write(stream.push(token.item()))
                out.flush()
            out.write(stream.flush() + "\n")
            return
        steps = list(self.tokens(prompt))
        samples = [list(ids) for ids in zip(*(step.tolist() for step in steps))]
        for i, ids in enumerate(samples, start=1):
            ids = ids[:ids.index(eot)] if eot in ids else ids
            out.write(f"--- sample {i} ---\n{self.tokenizer.decode(ids)}\n")
        out.flush()


def interactive(generator: Generator) -> None:
    print("Type a prompt and press Enter; `exit` or Ctrl-D quits.")
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            print()
            return
        if prompt.strip() in ("exit", "quit"):
            return
        generator.respond(prompt)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from models.checkpoint import load_model
    from models.device import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    model, tokenizer = load_model(args.checkpoint, device)
    generator = Generator(model, tokenizer, args, device, dtype)
    if args.prompt is not None:
        generator.respond(args.prompt)
        return
    print(f"loaded {args.checkpoint}: {model.num_params():,} parameters, "
          f"tokenizer {tokenizer.name}")
    try:
        interactive(generator)
    except KeyboardInterrupt:
        print()


if __name__ == "__main__":
    run_main(main)
