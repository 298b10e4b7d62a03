"""ModelConfig/TrainConfig validation and presets."""

import dataclasses

import pytest

from transformer_setup.params import (
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    build_configs,
    config_from_dict,
)


@pytest.mark.parametrize("fields, named", [
    (dict(n_embd=100, n_head=3), "n_embd"),
    (dict(n_head=12, n_kv_head=5), "n_kv_head"),
    (dict(n_layer=0), "n_layer"),
    (dict(vocab_size=-1), "vocab_size"),
    (dict(mlp="relu"), "mlp"),
    (dict(norm="batchnorm"), "norm"),
    (dict(pos_emb="alibi"), "pos_emb"),
    (dict(attention="xformers"), "attention"),
    (dict(dropout=1.0), "dropout"),
    (dict(n_embd=12, n_head=4), "rope"),  # head size 3 cannot rotate in pairs
])
def test_invalid_model_config_names_the_field(fields, named):
    with pytest.raises(ConfigError, match=named):
        ModelConfig(**fields)


@pytest.mark.parametrize("fields, named", [
    (dict(max_iters=0), "max_iters"),
    (dict(batch_size=0), "batch_size"),
    (dict(learning_rate=0), "learning_rate"),
    (dict(min_lr=1.0), "min_lr"),
    (dict(beta2=1.0), "beta2"),
    (dict(dtype="fp8"), "dtype"),
])
def test_invalid_train_config_names_the_field(fields, named):
    with pytest.raises(ConfigError, match=named):
        TrainConfig(**fields)


def test_defaults_are_resolved():
    config = ModelConfig(n_embd=768, n_head=12)
    assert config.n_kv_head == 12
    assert config.ffn_hidden == 2048  # 8/3 * 768 rounded up to a multiple of 256
    assert ModelConfig(n_embd=768, mlp="gelu").ffn_hidden == 3072
    assert ModelConfig(vocab_size=50257, vocab_multiple=64).padded_vocab_size == 50304
    assert TrainConfig(max_iters=77).lr_decay_iters == 77


def test_presets_build_and_overrides_win():
    for name in PRESETS:
        build_configs(name)
    model, train = build_configs("1b", {"n_layer": 2, "learning_rate": 1e-3})
    assert (model.n_layer, model.n_embd, train.learning_rate) == (2, 1536, 1e-3)
    gpt2, _ = build_configs("gpt2")
    assert (gpt2.pos_emb, gpt2.norm, gpt2.mlp, gpt2.bias, gpt2.tie_embeddings) == \
        ("learned", "layernorm", "gelu", True, True)
    flagship, recipe = build_configs("1b")
    assert (flagship.n_embd, flagship.n_layer, flagship.n_head, flagship.ffn_hidden) == \
        (1536, 24, 12, 6144)
    assert (recipe.batch_size, recipe.learning_rate) == (None, 6e-4)  # micro-batch: auto


def test_the_1b_preset_keeps_the_seeds_global_batch_at_any_micro_batch():
    """The seed trained 72 x 4 x 1024 tokens per step; the preset keeps exactly that, with the
    micro-batch picked for the GPU (18 x 16 on 80 GB) and accumulation making up the rest."""
    import torch

    from models.estimate import auto_micro_batch
    from models.trainer import resolve_accumulation

    config, recipe = build_configs("1b")
    assert recipe.global_batch_tokens == 72 * 4 * 1024 and not config.gradient_checkpointing
    for memory_gb, world in ((80, 1), (80, 8), (40, 1), (141, 1)):
        micro = auto_micro_batch(config, recipe.global_batch_tokens, world, torch.bfloat16,
                                 memory_gb * 1e9)
        tc = dataclasses.replace(recipe, batch_size=micro)
        accumulation = resolve_accumulation(tc, config.block_size, world)
        assert micro * accumulation * world * config.block_size == 294_912
    assert auto_micro_batch(config, recipe.global_batch_tokens, 1, torch.bfloat16, 80e9) == 18


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_trains_the_same_tokens_per_step_on_1_and_8_processes(preset):
    """The global batch is fixed in tokens: the micro-batch (auto, or the preset's) and the
    accumulation adapt to the number of processes, as the trainer picks them."""
    import torch

    from models.estimate import auto_micro_batch
    from models.trainer import resolve_accumulation

    config, recipe = build_configs(preset)
    tokens = []
    for world in (1, 8):
        micro = recipe.batch_size or auto_micro_batch(config, recipe.global_batch_tokens, world,
                                                      torch.bfloat16, 80e9)
        tc = dataclasses.replace(recipe, batch_size=micro)
        tokens.append(micro * resolve_accumulation(tc, config.block_size, world) * world *
                      config.block_size)
    assert tokens[0] == tokens[1] == recipe.global_batch_tokens


def test_an_explicit_accumulation_replaces_the_presets_global_batch():
    _, tc = build_configs("gpt2", {"accumulation_steps": 4, "batch_size": 8})
    assert (tc.global_batch_tokens, tc.accumulation_steps) == (None, 4)
    with pytest.raises(ConfigError, match="not both"):
        build_configs("gpt2", {"accumulation_steps": 4, "global_batch_tokens": 2**19})


def test_unknown_preset_and_field_are_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        build_configs("huge")
    with pytest.raises(ConfigError, match="unknown config field 'n_layers'"):
        build_configs(None, {"n_layers": 3})


def test_config_roundtrips_through_a_dict():
    config = ModelConfig(n_layer=3, n_kv_head=4)
    assert config_from_dict(ModelConfig, dataclasses.asdict(config)) == config
    # A field from another version of the code is ignored rather than crashing.
    assert config_from_dict(ModelConfig, {**dataclasses.asdict(config), "gone": 1}) == config
