"""Autoregressive generation with the model's KV cache.

The prompt is run once (prefill), then each new token costs one forward pass of a single
position. When the context fills up, the window slides: the most recent half of the context is
run again as a fresh prompt, and generation continues.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from transformer_setup.transformer import GPT


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                n_vocab: int | None = None) -> torch.Tensor:
    """One id per row of logits (B, V). temperature 0 is greedy; top_k keeps the k likeliest;
    top_p keeps the smallest set whose probability reaches p (nucleus sampling). Only ids below
    n_vocab are drawn: a model may have more rows than its tokenizer has ids (`--vocab_size 320`
    with the 257 of `bytes`), and those ids decode to nothing."""
    if n_vocab is not None:
        logits = logits[..., :n_vocab]
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p (the first stays).
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    # multinomial's CUDA kernel cannot take a CPU generator; draw on the generator's device.
    gen_device = generator.device if generator is not None else probs.device
    return torch.multinomial(probs.to(gen_device), 1, generator=generator).squeeze(-1).to(
        logits.device)


@torch.inference_mode()
def generate(model: GPT, prompt: Sequence[int], max_new_tokens: int, *,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             num_samples: int = 1, stop_id: int | None = None,
             generator: torch.Generator | None = None,
             n_vocab: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the next token of each of num_samples continuations, shape (num_samples,), one step
    at a time. A prompt longer than the context keeps its last block_size tokens. A sample that
    produced stop_id keeps yielding stop_id; generation ends when all have stopped. Pass the
    tokenizer's n_vocab so that no id it cannot decode is drawn (see sample_next)."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token")
    block_size = model.config.block_size
    device = model.tok_emb.weight.device
    history = torch.tensor(list(prompt)[-block_size:], device=device).repeat(num_samples, 1)
    finished = torch.zeros(num_samples, dtype=torch.bool, device=device)
    was_training = model.training
    model.eval()
    model.setup_kv_cache(num_samples)
    try:
        logits = model(history)[:, -1]
        position = history.shape[1]
        for _ in range(max_new_tokens):
            token = sample_next(logits, temperature, top_k, top_p, generator, n_vocab)
            if stop_id is not None:
                token = token.masked_fill(finished, stop_id)
                finished |= token == stop_id
            yield token
            if finished.all():
                return
            history = torch.cat([history, token[:, None]], dim=1)[:, -block_size:]
            if position < block_size:
                logits = model(token[:, None], start=position)[:, -1]
                position += 1
            else:  # context full: restart from the most recent half of it
                position = block_size // 2
                logits = model(history[:, -position:])[:, -1]
    finally:
        model.clear_kv_cache()
        model.train(was_training)


def generate_ids(model: GPT, prompt: Sequence[int], max_new_tokens: int,
                 **kwargs) -> list[list[int]]:
    """All new tokens of each sample, cut after stop_id if given."""
    steps = list(generate(model, prompt, max_new_tokens, **kwargs))
    if not steps:
        return [[] for _ in range(kwargs.get("num_samples", 1))]
    samples = torch.stack(steps, dim=1).tolist()
    stop_id = kwargs.get("stop_id")
    if stop_id is not None:
        samples = [s[:s.index(stop_id) + 1] if stop_id in s else s for s in samples]
    return samples
