"""Generation: KV-cache decoding equals recomputation, sampling options, sliding window."""

import pytest
import torch

from models.generate import generate, generate_ids, sample_next
from tests.helpers import run_script
from tokenization.tokenizer import TokenizerError, byte_tokenizer
from transformer_setup.params import ModelConfig
from transformer_setup.transformer import GPT


def small_model(**fields) -> GPT:
    torch.manual_seed(0)
    fields = dict(dict(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_kv_head=2,
                       n_embd=32), **fields)
    return GPT(ModelConfig(**fields)).eval()


def greedy_without_cache(model: GPT, prompt: list[int], n: int) -> list[int]:
    """The reference: rerun the whole (windowed) sequence for every new token."""
    ids, block, window = list(prompt), model.config.block_size, model.config.block_size
    out = []
    with torch.no_grad():
        for _ in range(n):
            if len(ids) > block:  # same sliding rule as generate(): restart from the last half
                window = block // 2 if window == block else window + 1
            else:
                window = len(ids)
            logits = model(torch.tensor([ids[-window:]]))[0, -1]
            out.append(int(logits.argmax()))
            ids.append(out[-1])
    return out


def test_greedy_with_kv_cache_equals_greedy_without():
    for fields in ({}, dict(mlp="gelu", norm="layernorm", pos_emb="learned", bias=True)):
        model = small_model(**fields)
        prompt = [3, 14, 15, 9, 2, 6]
        cached = generate_ids(model, prompt, 8, temperature=0)[0]
        assert cached == greedy_without_cache(model, prompt, 8)


def test_under_autocast_the_kv_cache_holds_autocast_dtype_and_decodes_the_same():
    """Keys and values come out of bf16 matmuls: an fp32 cache was cast whole to bf16 at
    every decoded token. In bf16 the cache is used as stored, with the same tokens."""
    model = small_model()
    prompt = [3, 14, 15, 9, 2, 6]
    with torch.autocast("cpu", torch.bfloat16):
        model.setup_kv_cache(1)
        assert model.blocks[0].attn.kv_cache.k.dtype == torch.bfloat16
        model.clear_kv_cache()
        cached = generate_ids(model, prompt, 8, temperature=0)[0]
        reference = greedy_without_cache(model, prompt, 8)
    assert cached == reference
    model.setup_kv_cache(1)  # no autocast: the weights' dtype, as before
    assert model.blocks[0].attn.kv_cache.k.dtype == torch.float32


def test_generation_continues_past_the_context_by_sliding():
    model = small_model()
    prompt = list(range(1, 12))
    cached = generate_ids(model, prompt, 30, temperature=0)[0]  # 41 tokens through a 16 window
    assert len(cached) == 30
    assert cached == greedy_without_cache(model, prompt, 30)


def test_long_prompt_keeps_its_last_tokens():
    model = small_model()
    long_prompt = list(range(40))
    assert generate_ids(model, long_prompt, 5, temperature=0) == \
        generate_ids(model, long_prompt[-16:], 5, temperature=0)


def test_same_seed_same_samples_and_stop_token():
    model = small_model()
    runs = [generate_ids(model, [1, 2], 12, temperature=1.0, num_samples=3,
                         generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 3
    first = runs[0][0][0]
    stopped = generate_ids(model, [1, 2], 12, temperature=1.0, stop_id=first,
                           generator=torch.Generator().manual_seed(5))
    assert stopped[0] == [first]


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(4, 50)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, 1.0, top_k=1), greedy)
    assert torch.equal(sample_next(logits, 1.0, top_p=1e-6), greedy)


def test_top_p_samples_only_from_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, top_p=0.7, generator=gen)) for _ in range(300)}
    assert draws == {0, 1}


def test_generate_restores_training_mode_and_clears_cache():
    model = small_model().train()
    list(generate(model, [1], 3, temperature=0))
    assert model.training and all(b.attn.kv_cache is None for b in model.blocks)


def padded_model() -> GPT:
    """320 rows for a 257-id tokenizer (`--vocab_size 320` with `bytes`), the extra rows made the
    likeliest, as an untrained or unlucky model may have them."""
    model = small_model(vocab_size=320)
    favour = torch.zeros(320)
    favour[257:] = 100.0
    model.register_forward_hook(lambda module, args, logits: logits + favour)
    return model


def test_ids_the_tokenizer_lacks_are_never_sampled():
    model, n_vocab = padded_model(), byte_tokenizer().n_vocab
    assert max(generate_ids(model, [1, 2], 8, temperature=0)[0]) >= n_vocab  # else no test
    for options in (dict(temperature=0), dict(temperature=2.0), dict(top_k=5), dict(top_p=0.9)):
        samples = generate_ids(model, [1, 2], 40, num_samples=4, n_vocab=n_vocab,
                               generator=torch.Generator().manual_seed(0), **options)
        assert max(max(s) for s in samples) < n_vocab, options
        byte_tokenizer().decode(samples[0])


def test_an_id_the_tokenizer_lacks_is_a_tokenizer_error():
    with pytest.raises(TokenizerError, match="cannot decode id 306: .*'bytes' has ids 0-256"):
        byte_tokenizer().decode([104, 105, 306])


def test_a_padded_vocabulary_samples_while_training_and_in_inference(tmp_path):
    """`--vocab_size 320` with the bytes tokenizer: the step-0 sample and inference.py at a high
    temperature (which picked padding ids, 63 of 320, nearly every few tokens) both decode."""
    result = run_script("models/gpt.py", "--preset", "tiny", "--tokenizer", "bytes",
                        "--vocab_size", "320", "--max_iters", "1", "--eval_iters", "1",
                        "--batch_size", "2", "--block_size", "32", "--sample_tokens", "64",
                        "--out_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sample:" in result.stdout + result.stderr
    result = run_script("models/inference.py", str(tmp_path / "run" / "latest.pt"), "--prompt",
                        "def", "--max_new_tokens", "64", "--temperature", "3", "--top_k", "0",
                        "--num_samples", "2", "--seed", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
