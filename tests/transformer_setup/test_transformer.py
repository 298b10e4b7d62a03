"""The model: causality, KV cache, gradient checkpointing, attention backends, reference logits."""

import dataclasses

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from models.estimate import meta_model
from transformer_setup.hf_weights import from_hf_config, from_hf_state_dict, to_hf_config
from transformer_setup.params import ModelConfig, build_configs
from transformer_setup.transformer import GPT, flash_attn_func

LLAMA_SMALL = dict(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                   ffn_hidden=96)
GPT2_SMALL = dict(vocab_size=101, block_size=32, n_layer=2, n_head=4, n_embd=64, mlp="gelu",
                  norm="layernorm", pos_emb="learned", bias=True, tie_embeddings=True)


def make_model(seed: int = 0, **fields) -> GPT:
    torch.manual_seed(seed)
    return GPT(ModelConfig(**fields)).eval()


@pytest.mark.parametrize("fields", [LLAMA_SMALL, GPT2_SMALL], ids=["llama", "gpt2"])
def test_changing_a_token_never_changes_earlier_logits(fields):
    model = make_model(**fields)
    idx = torch.randint(0, 101, (2, 20))
    with torch.no_grad():
        before = model(idx)
        for t in (0, 7, 19):
            changed = idx.clone()
            changed[:, t] = (changed[:, t] + 1) % 101
            after = model(changed)
            torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=0)
            assert not torch.allclose(after[:, t], before[:, t])


@pytest.mark.parametrize("fields", [LLAMA_SMALL, GPT2_SMALL, dict(LLAMA_SMALL, vocab_multiple=64)],
                         ids=["llama-gqa", "gpt2", "padded-vocab"])
def test_kv_cache_decoding_matches_full_forward(fields):
    model = make_model(**fields)
    idx = torch.randint(0, 101, (3, 24))
    with torch.no_grad():
        full = model(idx)
        model.setup_kv_cache(batch_size=3)
        # Prefill 10 tokens, then a chunk of 5, then one token at a time.
        pieces = [model(idx[:, :10], start=0), model(idx[:, 10:15], start=10)]
        pieces += [model(idx[:, t:t + 1], start=t) for t in range(15, 24)]
        model.clear_kv_cache()
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)
    assert full.shape[-1] == 101  # padding ids are never exposed as logits


CHECKPOINTING = {"full": dict(gradient_checkpointing=True),
                 "every 2nd block": dict(gradient_checkpointing=True, checkpoint_every=2),
                 "selective": dict(gradient_checkpointing=True, checkpoint_selective=True)}


@pytest.mark.parametrize("dropout", [0.0, 0.1])
@pytest.mark.parametrize("policy", CHECKPOINTING)
def test_gradient_checkpointing_gives_same_loss_and_gradients(dropout, policy):
    fields = dict(LLAMA_SMALL, dropout=dropout)
    idx, targets = torch.randint(0, 101, (2, 32)), torch.randint(0, 101, (2, 32))
    results = []
    for ckpt in ({}, CHECKPOINTING[policy]):
        model = make_model(**fields, **ckpt).train()
        torch.manual_seed(123)  # the same dropout masks in both runs
        loss = model(idx, targets)
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=0, atol=0)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-6, atol=1e-7)


def saved_activation_bytes(model: GPT, idx: torch.Tensor, targets: torch.Tensor) -> int:
    """Bytes autograd keeps for backward (parameters excluded), seen while the graph is built."""
    params = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.data_ptr() not in params:
            saved[(t.data_ptr(), t.shape)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets)
    return sum(saved.values())


def test_gradient_checkpointing_really_keeps_less_for_backward():
    fields = dict(LLAMA_SMALL, n_layer=6)
    idx, targets = torch.randint(0, 101, (4, 32)), torch.randint(0, 101, (4, 32))
    kept = {name: saved_activation_bytes(make_model(**fields, **ckpt).train(), idx, targets)
            for name, ckpt in {"none": {}, **CHECKPOINTING}.items()}
    assert kept["full"] < kept["none"] / 3, kept
    assert kept["full"] < kept["every 2nd block"] < kept["none"], kept
    assert kept["full"] < kept["selective"] < 0.8 * kept["none"], kept


def test_recomputed_flops_count_what_each_policy_runs_again():
    config, _ = build_configs("1b", {"gradient_checkpointing": False})
    base = meta_model(config)
    assert base.recomputed_flops_per_token(16 * 1024) == 2 * 1536 * 50304  # the loss chunks
    assert base.recomputed_flops_per_token(4096) == 0
    full = meta_model(dataclasses.replace(config, gradient_checkpointing=True))
    per_block = 2 * (4 * 1536**2 + 3 * 1536 * 6144) + 4 * 1536 * 1024
    assert full.recomputed_flops_per_token(4096) == 24 * per_block  # 1.96 GFLOP
    half = meta_model(dataclasses.replace(config, gradient_checkpointing=True, checkpoint_every=2))
    assert half.recomputed_flops_per_token(4096) == 12 * per_block
    selective = meta_model(dataclasses.replace(config, gradient_checkpointing=True,
                                               checkpoint_selective=True))
    assert selective.recomputed_flops_per_token(4096) == 0


@pytest.mark.skipif(flash_attn_func is None or not torch.cuda.is_available(),
                    reason="flash-attn needs its package and a CUDA device")
@pytest.mark.parametrize("fields", [LLAMA_SMALL, dict(LLAMA_SMALL, n_kv_head=4)])
def test_flash_attn_and_sdpa_agree(fields):
    flash = make_model(**fields, attention="flash").cuda()
    sdpa = make_model(**fields, attention="sdpa").cuda()
    idx = torch.randint(0, 101, (2, 32), device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(flash(idx).float(), sdpa(idx).float(), rtol=2e-2, atol=2e-2)


def copy_from_reference(ref: torch.nn.Module) -> GPT:
    config = from_hf_config(ref.config)
    model = GPT(config).eval()
    model.load_state_dict(from_hf_state_dict(ref.state_dict(), config))
    return model


@pytest.mark.parametrize("reference, fields", [
    (LlamaForCausalLM, LLAMA_SMALL),
    (LlamaForCausalLM, dict(LLAMA_SMALL, n_kv_head=4, bias=True, tie_embeddings=True,
                            rope_theta=500.0)),
    (LlamaForCausalLM, dict(LLAMA_SMALL, n_kv_head=1, norm_eps=1e-6)),
    (GPT2LMHeadModel, GPT2_SMALL),
    (GPT2LMHeadModel, dict(GPT2_SMALL, ffn_hidden=80)),
], ids=["llama-gqa", "llama-mha-bias-tied", "llama-mqa", "gpt2", "gpt2-ffn80"])
def test_logits_equal_transformers(reference, fields):
    torch.manual_seed(0)
    ref = reference(to_hf_config(ModelConfig(**fields))).eval()
    model = copy_from_reference(ref)
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(model(idx), ref(idx).logits, rtol=1e-5, atol=1e-5)


def count_params(preset: str, **overrides) -> int:
    model_config, _ = build_configs(preset, overrides)
    with torch.device("meta"):
        return GPT(model_config).num_params()


def test_parameter_counts():
    assert count_params("gpt2") == 124_439_808
    tinyllama = dict(n_layer=22, n_embd=2048, n_head=32, n_kv_head=4, ffn_hidden=5632,
                     vocab_size=32000)
    assert count_params("1b", **tinyllama) == 1_100_048_384
    assert 1.0e9 <= count_params("1b") <= 1.2e9


def test_parameter_count_matches_transformers():
    for fields in (LLAMA_SMALL, GPT2_SMALL):
        torch.manual_seed(0)
        config = ModelConfig(**fields)
        ref_cls = LlamaForCausalLM if fields is LLAMA_SMALL else GPT2LMHeadModel
        assert GPT(config).num_params() == ref_cls(to_hf_config(config)).num_parameters()


def test_flops_per_token_counts_matmuls_and_attention():
    config = ModelConfig(**LLAMA_SMALL)
    C, kv, F, V, L, T = 64, 32, 96, 101, 2, 32
    per_layer = C * (C + 2 * kv) + C * C + C * 2 * F + F * C
    expected = 6 * (L * per_layer + V * C) + 12 * L * C * T
    assert GPT(config).flops_per_token() == expected


@pytest.mark.parametrize("fields", [dict(LLAMA_SMALL, vocab_multiple=64),
                                    dict(LLAMA_SMALL, bias=True, tie_embeddings=True),
                                    dict(GPT2_SMALL, vocab_multiple=64),
                                    dict(GPT2_SMALL, tie_embeddings=False)])
def test_weights_round_trip_through_transformers_names(fields):
    from transformer_setup.hf_weights import to_hf_state_dict
    config = ModelConfig(**fields)
    ours = make_model(**fields).state_dict()
    theirs = to_hf_state_dict(ours, config)
    assert all(t.shape[0] == 101 for k, t in theirs.items() if "wte" in k or "embed" in k)
    back = from_hf_state_dict(theirs, config)
    assert back.keys() == ours.keys()
    for name, tensor in ours.items():
        if name in ("tok_emb.weight", "lm_head.weight"):  # padding rows are not exported
            tensor, back[name] = tensor[:101], back[name][:101]
        assert torch.equal(back[name], tensor), name


def test_padding_ids_are_never_predicted_sampled_or_counted():
    from models.generate import generate_ids

    model = make_model(**dict(LLAMA_SMALL, vocab_multiple=64))  # 101 ids, 128 rows
    assert model.lm_head.weight.shape[0] == 128
    idx, targets = torch.randint(0, 101, (2, 16)), torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        loss_before = model(idx, targets)
        model.lm_head.weight[101:] = 1e3 * model.norm_f.weight  # padding rows would now win
        assert torch.equal(model(idx, targets), loss_before)
        logits = model(idx)
    assert logits.shape[-1] == 101
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, 101), targets.reshape(-1))
    torch.testing.assert_close(loss_before, expected)
    samples = generate_ids(model, [1, 2, 3], 20, temperature=2.0, num_samples=4,
                           generator=torch.Generator().manual_seed(0))
    assert max(max(s) for s in samples) < 101


def test_vocab_padding_is_on_for_1b_and_off_for_gpt2():
    assert build_configs("1b")[0].padded_vocab_size == 50304
    assert build_configs("gpt2")[0].padded_vocab_size == 50257


@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_equals_plain_cross_entropy(tie):
    from transformer_setup.transformer import chunked_cross_entropy

    torch.manual_seed(0)
    model = GPT(ModelConfig(**dict(LLAMA_SMALL, vocab_multiple=64, tie_embeddings=tie)))
    x = torch.randn(3, 32, 64, requires_grad=True)
    targets = torch.randint(0, 101, (3, 32))
    targets[0, :5] = -1  # ignored positions
    head = model.tok_emb.weight if tie else model.lm_head.weight
    plain = torch.nn.functional.cross_entropy(
        torch.nn.functional.linear(x, head)[..., :101].reshape(-1, 101), targets.reshape(-1),
        ignore_index=-1)
    grads_plain = torch.autograd.grad(plain, [x, head])
    chunked = chunked_cross_entropy(x, head, targets, 101, chunk_tokens=7)
    grads_chunked = torch.autograd.grad(chunked, [x, head])
    torch.testing.assert_close(chunked, plain, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads_chunked, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_the_model_uses_the_chunked_loss_for_large_batches(monkeypatch):
    from transformer_setup import transformer

    model = make_model(**LLAMA_SMALL).train()
    idx, targets = torch.randint(0, 101, (4, 32)), torch.randint(0, 101, (4, 32))
    plain = model(idx, targets)
    monkeypatch.setattr(transformer, "LOSS_CHUNK_TOKENS", 20)  # 128 tokens: 7 chunks
    torch.testing.assert_close(model(idx, targets), plain, rtol=1e-6, atol=1e-6)


def test_flops_per_token_match_an_independent_count_for_gpt2_and_1b():
    # gpt2: 12 layers x (attention 4 x 768^2 + MLP 2 x 768 x 3072) + head 50257 x 768.
    gpt2 = 12 * (4 * 768**2 + 2 * 768 * 3072) + 50257 * 768
    assert count_flops("gpt2") == 6 * gpt2 + 12 * 12 * 768 * 1024
    # 1b: 24 x (4 x 1536^2 + 3 x 1536 x 6144) + padded head 50304 x 1536.
    flagship = 24 * (4 * 1536**2 + 3 * 1536 * 6144) + 50304 * 1536
    assert count_flops("1b") == 6 * flagship + 12 * 24 * 1536 * 1024


def count_flops(preset: str) -> int:
    model_config, _ = build_configs(preset)
    with torch.device("meta"):
        return GPT(model_config).flops_per_token()
