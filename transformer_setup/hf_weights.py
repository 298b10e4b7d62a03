"""The correspondence between our model and transformers' stock classes.

Two families have a stock class that computes exactly what our model computes:
- "llama" (LlamaForCausalLM): RoPE, RMSNorm, SwiGLU; biases and tying optional;
- "gpt2" (GPT2LMHeadModel): learned positions, LayerNorm, GELU (tanh), biases, no GQA.

Our model fuses q/k/v into one matrix and gate/up into another; transformers keeps them apart,
and GPT-2 stores its linear layers transposed (Conv1D). Everything else is a rename.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers import GPT2Config, LlamaConfig, PretrainedConfig

from transformer_setup.params import ConfigError, ModelConfig

Tensor = torch.Tensor


def hf_family(config: ModelConfig) -> str:
    """"llama" or "gpt2"; a ConfigError naming the knobs in the way when neither fits."""
    llama_misfits = [f"{name}={getattr(config, name)!r}" for name, want in
                     (("pos_emb", "rope"), ("norm", "rmsnorm"), ("mlp", "swiglu"))
                     if getattr(config, name) != want]
    if not llama_misfits:
        return "llama"
    gpt2_misfits = [f"{name}={getattr(config, name)!r}" for name, want in
                    (("pos_emb", "learned"), ("norm", "layernorm"), ("mlp", "gelu"), ("bias", True))
                    if getattr(config, name) != want]
    if config.n_kv_head != config.n_head:
        gpt2_misfits.append(f"n_kv_head={config.n_kv_head} (GPT-2 has no grouped-query attention)")
    if not gpt2_misfits:
        return "gpt2"
    misfits = llama_misfits if len(llama_misfits) <= len(gpt2_misfits) else gpt2_misfits
    family = "Llama" if misfits is llama_misfits else "GPT-2"
    raise ConfigError(f"no stock transformers class matches this model; closest is {family}, "
                      f"which differs in {', '.join(misfits)}")


# Our embedding padding, kept in config.json (transformers ignores it) so imports restore it.
PADDING_KEY = "gpt_pretrain_vocab_multiple"


def to_hf_config(config: ModelConfig) -> PretrainedConfig:
    hf_config = _stock_config(config)
    setattr(hf_config, PADDING_KEY, config.vocab_multiple)
    return hf_config


def _stock_config(config: ModelConfig) -> PretrainedConfig:
    if hf_family(config) == "llama":
        return LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.n_embd,
            intermediate_size=config.ffn_hidden, num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
            head_dim=config.head_dim, max_position_embeddings=config.block_size,
            rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, hidden_act="silu",
            attention_bias=config.bias, mlp_bias=config.bias,
            tie_word_embeddings=config.tie_embeddings, initializer_range=config.init_std,
            architectures=["LlamaForCausalLM"])
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_hidden,
        activation_function="gelu_new", layer_norm_epsilon=config.norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=config.tie_embeddings, initializer_range=config.init_std,
        architectures=["GPT2LMHeadModel"])


def from_hf_config(hf_config: PretrainedConfig) -> ModelConfig:
    """Our ModelConfig for a transformers Llama or GPT-2 config."""
    config = _from_stock_config(hf_config)
    return dataclasses.replace(config, vocab_multiple=getattr(hf_config, PADDING_KEY, 1))


def _from_stock_config(hf_config: PretrainedConfig) -> ModelConfig:
    model_type = getattr(hf_config, "model_type", None)
    if model_type == "llama":
        rope = getattr(hf_config, "rope_parameters", None) or {}
        rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            raise ConfigError(f"rope scaling {rope.get('rope_type')!r} is not supported")
        head_dim = getattr(hf_config, "head_dim", None)
        if head_dim and head_dim * hf_config.num_attention_heads != hf_config.hidden_size:
            raise ConfigError("head_dim * num_attention_heads != hidden_size is not supported")
        if hf_config.attention_bias != getattr(hf_config, "mlp_bias", False):
            raise ConfigError("attention_bias and mlp_bias must agree")
        return ModelConfig(
            vocab_size=hf_config.vocab_size, block_size=hf_config.max_position_embeddings,
            n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
            n_kv_head=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            n_embd=hf_config.hidden_size, ffn_hidden=hf_config.intermediate_size,
            mlp="swiglu", norm="rmsnorm", norm_eps=hf_config.rms_norm_eps, pos_emb="rope",
            rope_theta=float(rope_theta), bias=bool(hf_config.attention_bias),
            tie_embeddings=bool(hf_config.tie_word_embeddings))
    if model_type == "gpt2":
        if hf_config.activation_function not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(f"GPT-2 activation {hf_config.activation_function!r} "
                              "is not supported")
        return ModelConfig(
            vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
            n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
            ffn_hidden=hf_config.n_inner or 4 * hf_config.n_embd, mlp="gelu", norm="layernorm",
            norm_eps=hf_config.layer_norm_epsilon, pos_emb="learned", bias=True,
            tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)))
    raise ConfigError(f"unsupported transformers model type {model_type!r} "
                      "(supported: llama, gpt2)")


def gpt2_names(config: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our name, GPT-2's name, stored transposed) for every GPT-2 tensor but the embedding."""
    names = [("pos_emb.weight", "transformer.wpe.weight", False),
             ("norm_f.weight", "transformer.ln_f.weight", False),
             ("norm_f.bias", "transformer.ln_f.bias", False)]
    for i in range(config.n_layer):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        for src, dst in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2"),
                         ("attn.qkv_proj", "attn.c_attn"), ("attn.out_proj", "attn.c_proj"),
                         ("mlp.up_proj", "mlp.c_fc"), ("mlp.down_proj", "mlp.c_proj")):
            linear = "proj" in src
            names.append((f"{ours}{src}.weight", f"{theirs}{dst}.weight", linear))  # Conv1D
            names.append((f"{ours}{src}.bias", f"{theirs}{dst}.bias", False))
    return names


def to_hf_state_dict(state_dict: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """Our weights under transformers' names (padding rows of the vocabulary dropped)."""
    sd = state_dict
    V, C = config.vocab_size, config.n_embd
    kv = config.n_kv_head * config.head_dim
    out: dict[str, Tensor] = {}
    family = hf_family(config)
    if family == "llama":
        out["model.embed_tokens.weight"] = sd["tok_emb.weight"][:V]
        out["model.norm.weight"] = sd["norm_f.weight"]
        if not config.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"][:V]
        for i in range(config.n_layer):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            out[theirs + "input_layernorm.weight"] = sd[ours + "attn_norm.weight"]
            out[theirs + "post_attention_layernorm.weight"] = sd[ours + "mlp_norm.weight"]
            for kind in ("weight", "bias") if config.bias else ("weight",):
                q, k, v = sd[f"{ours}attn.qkv_proj.{kind}"].split([C, kv, kv], dim=0)
                out[f"{theirs}self_attn.q_proj.{kind}"] = q
                out[f"{theirs}self_attn.k_proj.{kind}"] = k
                out[f"{theirs}self_attn.v_proj.{kind}"] = v
                out[f"{theirs}self_attn.o_proj.{kind}"] = sd[f"{ours}attn.out_proj.{kind}"]
                gate, up = sd[f"{ours}mlp.up_proj.{kind}"].chunk(2, dim=0)
                out[f"{theirs}mlp.gate_proj.{kind}"] = gate
                out[f"{theirs}mlp.up_proj.{kind}"] = up
                out[f"{theirs}mlp.down_proj.{kind}"] = sd[f"{ours}mlp.down_proj.{kind}"]
    else:
        out["transformer.wte.weight"] = sd["tok_emb.weight"][:V]
        if not config.tie_embeddings:
            out["lm_head.weight"] = sd["lm_head.weight"][:V]
        for ours, theirs, transposed in gpt2_names(config):
            out[theirs] = sd[ours].t() if transposed else sd[ours]
    return {k: v.contiguous() for k, v in out.items()}


def from_hf_state_dict(hf_sd: dict[str, Tensor], config: ModelConfig) -> dict[str, Tensor]:
    """transformers weights under our names, with the vocabulary padded to config's rows."""
    def pad_vocab(w: Tensor) -> Tensor:
        extra = config.padded_vocab_size - w.shape[0]
        return torch.cat([w, w.new_zeros(extra, w.shape[1])]) if extra else w

    out: dict[str, Tensor] = {}
    if hf_family(config) == "llama":
        out["tok_emb.weight"] = pad_vocab(hf_sd["model.embed_tokens.weight"])
        out["norm_f.weight"] = hf_sd["model.norm.weight"]
        head = hf_sd.get("lm_head.weight", hf_sd["model.embed_tokens.weight"])
        for i in range(config.n_layer):
            ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
            out[ours + "attn_norm.weight"] = hf_sd[theirs + "input_layernorm.weight"]
            out[ours + "mlp_norm.weight"] = hf_sd[theirs + "post_attention_layernorm.weight"]
            for kind in ("weight", "bias") if config.bias else ("weight",):
                attn, mlp = f"{theirs}self_attn.", f"{theirs}mlp."
                out[f"{ours}attn.qkv_proj.{kind}"] = torch.cat(
                    [hf_sd[f"{attn}{p}_proj.{kind}"] for p in ("q", "k", "v")])
                out[f"{ours}attn.out_proj.{kind}"] = hf_sd[f"{attn}o_proj.{kind}"]
                out[f"{ours}mlp.up_proj.{kind}"] = torch.cat(
                    [hf_sd[f"{mlp}gate_proj.{kind}"], hf_sd[f"{mlp}up_proj.{kind}"]])
                out[f"{ours}mlp.down_proj.{kind}"] = hf_sd[f"{mlp}down_proj.{kind}"]
    else:
        out["tok_emb.weight"] = pad_vocab(hf_sd["transformer.wte.weight"])
        head = hf_sd.get("lm_head.weight", hf_sd["transformer.wte.weight"])
        for ours, theirs, transposed in gpt2_names(config):
            out[ours] = hf_sd[theirs].t() if transposed else hf_sd[theirs]
    if not config.tie_embeddings:
        out["lm_head.weight"] = pad_vocab(head)
    return {k: v.contiguous() for k, v in out.items()}
