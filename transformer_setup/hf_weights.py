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


def to_hf_config(config: ModelConfig, eot_id: int | None = None) -> PretrainedConfig:
    """The stock transformers config of our model; eot_id, when given, is bos and eos."""
    hf_config = _stock_config(config, eot_id)
    setattr(hf_config, PADDING_KEY, config.vocab_multiple)
    if isinstance(hf_config, LlamaConfig):
        # transformers 5 keeps rope_theta only inside rope_parameters; 4.x reads the top-level
        # key and would otherwise load its default 10000. Both read their own, equal, value.
        hf_config.rope_theta = config.rope_theta
    return hf_config


def _stock_config(config: ModelConfig, eot_id: int | None) -> PretrainedConfig:
    special = {} if eot_id is None else {"bos_token_id": eot_id, "eos_token_id": eot_id}
    if hf_family(config) == "llama":
        return LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.n_embd,
            intermediate_size=config.ffn_hidden, num_hidden_layers=config.n_layer,
            num_attention_heads=config.n_head, num_key_value_heads=config.n_kv_head,
            head_dim=config.head_dim, max_position_embeddings=config.block_size,
            rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, hidden_act="silu",
            attention_bias=config.bias, mlp_bias=config.bias,
            tie_word_embeddings=config.tie_embeddings, initializer_range=config.init_std,
            architectures=["LlamaForCausalLM"], **special)
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
        n_layer=config.n_layer, n_head=config.n_head, n_inner=config.ffn_hidden,
        activation_function="gelu_new", layer_norm_epsilon=config.norm_eps,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        tie_word_embeddings=config.tie_embeddings, initializer_range=config.init_std,
        architectures=["GPT2LMHeadModel"], **special)


def from_hf_config(hf_config: PretrainedConfig) -> ModelConfig:
    """Our ModelConfig for a transformers Llama or GPT-2 config; a ConfigError naming every
    field whose value would make transformers compute something our model does not."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in ("llama", "gpt2"):
        raise ConfigError(f"unsupported transformers model type {model_type!r} "
                          "(supported: llama, gpt2)")
    misfits = llama_misfits(hf_config) if model_type == "llama" else gpt2_misfits(hf_config)
    misfits += _common_misfits(hf_config)
    if misfits:
        raise ConfigError(f"cannot import this {model_type} model: {'; '.join(misfits)}")
    config = _llama_config(hf_config) if model_type == "llama" else _gpt2_config(hf_config)
    return dataclasses.replace(config, vocab_multiple=getattr(hf_config, PADDING_KEY, 1))


# What each family's transformers class can be told to compute that ours does not. Configs are
# read in both transformers layouts: 4.x keeps rope_theta, rope_scaling and partial_rotary_factor
# at the top level, 5.x keeps them in rope_parameters (and reads 4.x files into it), so every
# place either version reads is checked, whichever version runs this.

def _rope_dicts(hf_config: PretrainedConfig) -> list[tuple[str, dict]]:
    """("rope_parameters" or "rope_scaling", its dict) for each that is set (5.x makes
    rope_scaling an alias of rope_parameters: that one is checked once)."""
    found: list[tuple[str, dict]] = []
    for key in ("rope_parameters", "rope_scaling"):
        value = getattr(hf_config, key, None)
        if isinstance(value, dict) and all(value != seen for _, seen in found):
            found.append((key, value))
    return found


def _rope_theta(hf_config: PretrainedConfig) -> float:
    for _, rope in _rope_dicts(hf_config):
        if "rope_theta" in rope:
            return float(rope["rope_theta"])
    return float(getattr(hf_config, "rope_theta", None) or 10000.0)


def llama_misfits(hf_config: PretrainedConfig) -> list[str]:
    misfits = []
    act = getattr(hf_config, "hidden_act", "silu")
    if act not in ("silu", "swish"):  # transformers' swish is silu
        misfits.append(f"hidden_act={act!r} (SwiGLU here gates with silu)")
    for key, rope in _rope_dicts(hf_config):
        if any(isinstance(v, dict) for v in rope.values()):
            misfits.append(f"{key} per layer type (one RoPE for every layer here)")
            continue
        kind = rope.get("rope_type") or rope.get("type") or "default"
        if kind != "default":
            misfits.append(f"{key} of type {kind!r} (plain RoPE here)")
        if rope.get("partial_rotary_factor", 1.0) not in (None, 1.0):
            misfits.append(f"{key} partial_rotary_factor={rope['partial_rotary_factor']} "
                           "(RoPE turns whole heads here)")
    partial = getattr(hf_config, "partial_rotary_factor", None)
    if partial not in (None, 1.0):
        misfits.append(f"partial_rotary_factor={partial} (RoPE turns whole heads here)")
    heads, width = hf_config.num_attention_heads, hf_config.hidden_size
    head_dim = getattr(hf_config, "head_dim", None)
    if head_dim and head_dim * heads != width:
        misfits.append(f"head_dim={head_dim} (hidden_size / num_attention_heads = "
                       f"{width // heads} here)")
    attention_bias = bool(getattr(hf_config, "attention_bias", False))
    mlp_bias = bool(getattr(hf_config, "mlp_bias", False))
    if attention_bias != mlp_bias:
        misfits.append(f"attention_bias={attention_bias} with mlp_bias={mlp_bias} (one bias "
                       "switch for both here)")
    window = getattr(hf_config, "sliding_window", None)
    if window and getattr(hf_config, "use_sliding_window", True) is not False:
        misfits.append(f"sliding_window={window} (attention spans the whole context here)")
    layer_types = getattr(hf_config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        misfits.append(f"layer_types={sorted(set(layer_types))} (full attention in every layer "
                       "here)")
    return misfits


GPT2_ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # the tanh approximation, ours


def gpt2_misfits(hf_config: PretrainedConfig) -> list[str]:
    misfits = []
    act = getattr(hf_config, "activation_function", "gelu_new")
    if act not in GPT2_ACTIVATIONS:
        misfits.append(f"activation_function={act!r} (tanh-approximated GELU here)")
    if getattr(hf_config, "scale_attn_weights", True) is not True:
        misfits.append("scale_attn_weights=False (attention scores are scaled by "
                       "1/sqrt(head_dim) here)")
    if getattr(hf_config, "scale_attn_by_inverse_layer_idx", False):
        misfits.append("scale_attn_by_inverse_layer_idx=True (no per-layer attention scaling "
                       "here)")
    if getattr(hf_config, "reorder_and_upcast_attn", False):
        misfits.append("reorder_and_upcast_attn=True (attention scores are not upcast to "
                       "float32 here)")
    if getattr(hf_config, "add_cross_attention", False):
        misfits.append("add_cross_attention=True (a decoder without cross-attention here)")
    return misfits


def _common_misfits(hf_config: PretrainedConfig) -> list[str]:
    quantization = getattr(hf_config, "quantization_config", None)
    if quantization:
        method = quantization.get("quant_method", "?") if isinstance(quantization, dict) else \
            getattr(quantization, "quant_method", "?")
        return [f"quantization_config ({method}: packed weights; import the unquantized model)"]
    return []


def _llama_config(hf_config: PretrainedConfig) -> ModelConfig:
    return ModelConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.max_position_embeddings,
        n_layer=hf_config.num_hidden_layers, n_head=hf_config.num_attention_heads,
        n_kv_head=hf_config.num_key_value_heads or hf_config.num_attention_heads,
        n_embd=hf_config.hidden_size, ffn_hidden=hf_config.intermediate_size,
        mlp="swiglu", norm="rmsnorm", norm_eps=hf_config.rms_norm_eps, pos_emb="rope",
        rope_theta=_rope_theta(hf_config), bias=bool(getattr(hf_config, "attention_bias", False)),
        tie_embeddings=bool(hf_config.tie_word_embeddings))


def _gpt2_config(hf_config: PretrainedConfig) -> ModelConfig:
    return ModelConfig(
        vocab_size=hf_config.vocab_size, block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer, n_head=hf_config.n_head, n_embd=hf_config.n_embd,
        ffn_hidden=hf_config.n_inner or 4 * hf_config.n_embd, mlp="gelu", norm="layernorm",
        norm_eps=hf_config.layer_norm_epsilon, pos_emb="learned", bias=True,
        tie_embeddings=bool(getattr(hf_config, "tie_word_embeddings", True)))


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
