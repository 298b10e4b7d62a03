"""Configuration: the model's shape (ModelConfig), the training recipe (TrainConfig) and presets.

Both configs are plain dataclasses validated on construction, so a bad value fails at once with a
message that names the field, not deep inside a forward pass. Checkpoints store them with
`dataclasses.asdict`, and `ModelConfig(**d)` rebuilds one.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from transformer_setup.cli import UserError


class ConfigError(UserError, ValueError):
    """A configuration value the user chose is invalid. Entry scripts print it as one line."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _require_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _require(value in choices, f"{name} must be one of {', '.join(choices)} (got {value!r})")


def _require_finite(obj: Any) -> None:
    """NaN or inf make no sense for any field: a learning rate of inf is a typo, not a run."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float):
            _require(math.isfinite(value), f"{f.name} must be a finite number (got {value})")


def _require_positive(obj: Any, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        _require(value > 0, f"{name} must be positive (got {value})")


@dataclass
class ModelConfig:
    """The shape of a decoder-only transformer. Defaults are the modern (Llama-style) family."""

    vocab_size: int = 50257  # tokens the tokenizer can produce
    vocab_multiple: int = 1  # pad the embedding rows to a multiple of this (64 is faster on GPUs)
    block_size: int = 1024  # context length
    n_layer: int = 12  # transformer blocks
    n_head: int = 12  # attention heads (query heads)
    n_kv_head: int | None = None  # key/value heads (grouped-query attention); None: n_head
    n_embd: int = 768  # width of the residual stream
    ffn_hidden: int | None = None  # MLP hidden size; None: 4*n_embd (gelu) or ~8/3*n_embd (swiglu)
    mlp: str = "swiglu"  # swiglu | gelu
    norm: str = "rmsnorm"  # rmsnorm | layernorm
    norm_eps: float = 1e-5  # epsilon of RMSNorm/LayerNorm
    pos_emb: str = "rope"  # rope | learned
    rope_theta: float = 10000.0  # RoPE base: larger reaches longer contexts
    bias: bool = False  # biases in linear layers and LayerNorm
    tie_embeddings: bool = False  # share the token embedding with the output head
    dropout: float = 0.0  # on attention, residual and MLP outputs (pretraining: 0)
    init_std: float = 0.02  # std of the normal init of matrices (GPT-2's)
    gradient_checkpointing: bool = False  # recompute blocks in backward to save memory
    checkpoint_every: int = 1  # with gradient_checkpointing: only every k-th block (k=2: half)
    checkpoint_selective: bool = False  # keep matmul/attention outputs, recompute the rest
    attention: str = "auto"  # auto (flash-attn if usable, else SDPA) | flash | sdpa

    def __post_init__(self) -> None:
        _require_finite(self)
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.ffn_hidden is None:
            self.ffn_hidden = default_ffn_hidden(self.n_embd, self.mlp)
        _require_positive(self, "vocab_size", "vocab_multiple", "block_size", "n_layer", "n_head",
                          "n_kv_head", "n_embd", "ffn_hidden", "norm_eps", "rope_theta", "init_std",
                          "checkpoint_every")
        _require(self.n_embd % self.n_head == 0,
                 f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        _require(self.n_head % self.n_kv_head == 0,
                 f"n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})")
        _require(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1) (got {self.dropout})")
        _require_choice("mlp", self.mlp, ("swiglu", "gelu"))
        _require_choice("norm", self.norm, ("rmsnorm", "layernorm"))
        _require_choice("pos_emb", self.pos_emb, ("rope", "learned"))
        _require_choice("attention", self.attention, ("auto", "flash", "sdpa"))
        if self.pos_emb == "rope":
            _require(self.head_dim % 2 == 0,
                     f"rope needs an even head size, n_embd / n_head = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding: vocab_size rounded up to vocab_multiple. Extra ids never occur."""
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple


# Fields that say how to run the model, not what it is: they may differ between the run that
# wrote a checkpoint and one that loads it (resume, --init_from, inference).
RUNTIME_FIELDS = ("dropout", "gradient_checkpointing", "checkpoint_every", "checkpoint_selective",
                  "attention")


def default_ffn_hidden(n_embd: int, mlp: str) -> int:
    """GELU: 4*n_embd. SwiGLU has three matrices, so 2/3 of that (as Llama), rounded up to 256."""
    if mlp == "gelu":
        return 4 * n_embd
    return 256 * math.ceil(8 * n_embd / 3 / 256)


@dataclass
class TrainConfig:
    """How to train: data, optimisation, evaluation and checkpointing. The defaults complete a
    preset; they are not a run of their own (models/gpt.py applies 1b when none is named)."""

    data: str = "pydocs"  # dataset name, local path or glob, Hub id, or prepared folder
    val_data: str | None = None  # validation text (any --data spec); None: held out of --data
    tokenizer: str = "gpt2"  # gpt2 | bytes | a trained tokenizer's folder
    data_workers: int = 2  # processes reading and tokenizing a streamed source ahead (0: none)
    text_field: str = "text"  # column holding the text in jsonl/parquet/Hub rows
    data_config: str | None = None  # Hub dataset configuration (fineweb-edu: sample-10BT)
    min_int_score: int | None = None  # FineWeb-Edu: keep documents scoring at least this
    out_dir: str = "out"  # checkpoints, train.log and TensorBoard logs (one run per folder)
    max_iters: int = 5000  # optimizer steps
    batch_size: int | None = 16  # sequences per micro-batch (per process); None/auto: the
    # largest that fits the GPU by the memory estimate (and divides the global batch)
    accumulation_steps: int = 1  # micro-batches per optimizer step; given on the command
    # line, it replaces the preset's global_batch_tokens
    global_batch_tokens: int | None = None  # tokens per optimizer step, the same at any number
    # of processes: accumulation = this / (batch x block x processes); every preset sets it
    optimizer: str = "adamw"  # adamw | muon (Muon for the blocks' matrices, AdamW for the rest)
    learning_rate: float = 6e-4  # peak, reached after warmup
    min_lr: float = 6e-5  # floor of the cosine decay
    warmup_iters: int = 100  # steps of linear warmup to learning_rate
    lr_decay_iters: int | None = None  # the step whose rate is min_lr, ending the cosine
    # decay; None: max_iters (stored resolved: a run extended with --max_iters keeps it)
    weight_decay: float = 0.1  # on matrices only (embeddings included); norms and biases not
    beta1: float = 0.9  # AdamW's first-moment decay
    beta2: float = 0.95  # AdamW's second-moment decay
    muon_lr: float | None = None  # Muon's peak learning rate; None: learning_rate (its
    # updates are scaled to AdamW's size, so the same rate carries over)
    muon_momentum: float = 0.95  # Muon's momentum (Nesterov)
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_interval: int = 250  # steps between validation passes
    eval_iters: int = 20  # validation size in batches of 32 rows of block_size tokens: the
    # same tokens at any number of processes, micro-batch or accumulation (val_tokens overrides)
    val_tokens: int | None = None  # held-out tokens scored per evaluation; None: from eval_iters
    save_interval: int = 1000  # steps between writes of latest.pt (also written at the end)
    log_interval: int = 10  # steps between log lines (loss, tok/s, MFU)
    sample_tokens: int = 64  # length of the sample printed at each evaluation; 0 disables
    eval_hellaswag: int = 0  # at each evaluation, HellaSwag acc_norm on this many validation
    # examples (spread evenly over the split, the same every time, shared over processes); 0: off
    hellaswag_data: str = "hellaswag"  # eval_hellaswag's examples: hellaswag (the Hub's
    # validation split) or a local .jsonl in HellaSwag's format
    seed: int = 1337  # initial weights and the data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32
    compile: bool | None = None  # torch.compile the model; None: on for CUDA, off elsewhere
    fsdp: bool = False  # shard parameters, gradients and optimizer state (FSDP2) under torchrun
    keep_checkpoints: int = 0  # also keep the last k numbered checkpoints (ckpt_STEP.pt); 0: none
    max_bad_steps: int = 10  # non-finite steps in a row before the run stops
    collective_timeout_s: float = 1800.0  # torchrun: how long a process waits for the others
    # (long enough for rank 0 to write a 1b checkpoint, ~13 GB, to a slow disk)
    # (a stuck or lost rank) before the run stops; above the longest wait of a healthy run, rank
    # 0 writing latest.pt (12.7 GB for the 1b preset: 2 minutes at 100 MB/s)
    tensorboard: bool = True  # write TensorBoard logs to out_dir
    profile: int = 0  # trace this many steps with torch.profiler into out_dir/profile (0: off)
    dry_run: bool = False  # print size, FLOPs and memory estimate, then exit
    gpu_memory_gb: float = 80.0  # dry run: size the micro-batch for a GPU with this memory
    gpu_tflops: float = 989.0  # dry run: its dense bf16 peak (H100: 989)
    assumed_mfu: float = 0.4  # dry run: the fraction of that peak a run reaches
    resume: bool = False  # continue from out_dir/latest.pt with the checkpoint's configuration;
    # only flags given on the command line change it
    allow_schedule_change: bool = False  # on --resume: apply flags that make the learning rate
    # jump at the resumed step (refused without this)
    init_from: str | None = None  # start from this checkpoint's weights (fresh optimizer)

    def __post_init__(self) -> None:
        _require_finite(self)
        if self.lr_decay_iters is None:
            self.lr_decay_iters = self.max_iters
        _require_positive(self, "max_iters", "accumulation_steps", "eval_interval",
                          "eval_iters", "save_interval", "log_interval")
        _require(self.val_tokens is None or self.val_tokens > 0,
                 f"val_tokens must be positive (got {self.val_tokens})")
        _require(self.batch_size is None or self.batch_size > 0,
                 f"batch_size must be positive or auto (got {self.batch_size})")
        _require(self.learning_rate > 0,
                 f"learning_rate must be positive (got {self.learning_rate})")
        _require(self.min_lr >= 0, f"min_lr must be >= 0 (got {self.min_lr})")
        _require(self.min_lr <= self.learning_rate,
                 f"min_lr ({self.min_lr:g}) is above the peak learning_rate "
                 f"({self.learning_rate:g}); the decay would raise the rate")
        _require(self.warmup_iters >= 0, f"warmup_iters must be >= 0 (got {self.warmup_iters})")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0 (got {self.weight_decay})")
        _require(self.grad_clip >= 0, f"grad_clip must be >= 0 (got {self.grad_clip})")
        _require(self.sample_tokens >= 0, f"sample_tokens must be >= 0 (got {self.sample_tokens})")
        _require(self.eval_hellaswag >= 0,
                 f"eval_hellaswag must be >= 0 (got {self.eval_hellaswag})")
        _require(self.data_workers >= 0, f"data_workers must be >= 0 (got {self.data_workers})")
        _require(self.keep_checkpoints >= 0,
                 f"keep_checkpoints must be >= 0 (got {self.keep_checkpoints})")
        _require(self.max_bad_steps >= 1, f"max_bad_steps must be >= 1 (got {self.max_bad_steps})")
        _require(self.collective_timeout_s > 0,
                 f"collective_timeout_s must be positive (got {self.collective_timeout_s})")
        _require(self.profile >= 0, f"profile must be >= 0 (got {self.profile})")
        _require(self.global_batch_tokens is None or self.global_batch_tokens > 0,
                 f"global_batch_tokens must be positive (got {self.global_batch_tokens})")
        _require(self.batch_size is not None or self.global_batch_tokens is not None,
                 "an auto batch_size is chosen to divide global_batch_tokens: give "
                 "--batch_size with --accumulation_steps, or --global_batch_tokens")
        _require(self.global_batch_tokens is None or self.accumulation_steps == 1,
                 f"give global_batch_tokens ({self.global_batch_tokens}) or accumulation_steps "
                 f"({self.accumulation_steps}), not both: one decides the other")
        _require(not (self.fsdp and self.dtype == "fp16"),
                 "fsdp with dtype fp16 is not supported; use bf16 (or fp32)")
        _require_choice("optimizer", self.optimizer, ("adamw", "muon"))
        _require(not (self.fsdp and self.optimizer == "muon"),
                 "optimizer muon with fsdp is not supported: Muon orthogonalises whole matrices, "
                 "FSDP shards them; use DDP (no --fsdp) or --optimizer adamw")
        _require(self.muon_lr is None or self.muon_lr > 0,
                 f"muon_lr must be positive (got {self.muon_lr})")
        _require(0 <= self.muon_momentum < 1,
                 f"muon_momentum must be in [0, 1) (got {self.muon_momentum})")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _require(0 <= value < 1, f"{name} must be in [0, 1) (got {value})")
        _require_choice("dtype", self.dtype, ("auto", "bf16", "fp16", "fp32"))
        _require(self.gpu_memory_gb > 0 and self.gpu_tflops > 0 and 0 < self.assumed_mfu <= 1,
                 "gpu_memory_gb and gpu_tflops must be positive, assumed_mfu in (0, 1]")


# Presets: field overrides for (ModelConfig, TrainConfig). Command-line values override these.
# Each fixes its global batch in tokens, so any number of processes trains the same steps; the
# micro-batch (auto: the largest that fits and divides a process's share) and the accumulation
# adapt. `python models/gpt.py` with no preset named is the 1b preset.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # A character-level model that learns visible structure in a few minutes on 2 CPU cores.
    # Muon: AdamW's final loss in 0.60x its tokens at this shape, each at its best rate
    # (docs/BENCHMARKS.md). The seed's recipe: --optimizer adamw --learning_rate 2e-3
    # --min_lr 2e-4.
    "tiny": {
        "model": dict(block_size=128, n_layer=4, n_head=4, n_embd=128, vocab_multiple=64),
        "train": dict(tokenizer="bytes", data="pydocs", data_workers=1, out_dir="out/tiny",
                      max_iters=600, optimizer="muon", batch_size=None,
                      global_batch_tokens=32 * 128, learning_rate=8e-3, min_lr=8e-4,
                      warmup_iters=30,
                      weight_decay=0.1, eval_interval=100, eval_iters=10, save_interval=200,
                      log_interval=20, dtype="fp32"),
    },
    # GPT-2 small (124M): learned positions, LayerNorm, GELU, biases, tied embeddings; about
    # 0.5M tokens per step (2**19 = 524,288: 16 x 32 x 1024 on one process, as it was).
    "gpt2": {
        "model": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                      mlp="gelu", norm="layernorm", pos_emb="learned", bias=True,
                      tie_embeddings=True),
        "train": dict(tokenizer="gpt2", data="fineweb-edu", out_dir="out/gpt2", batch_size=None,
                      global_batch_tokens=2**19, learning_rate=6e-4, min_lr=6e-5,
                      warmup_iters=700, max_iters=19000, eval_interval=1000),
    },
    # The flagship (~1.06B with the GPT-2 vocabulary): Llama-style SwiGLU/RoPE/RMSNorm. The
    # seed's global batch, 72 x 4 x 1024 = 294,912 tokens per step, is kept; the micro-batch is
    # the largest that fits the GPU without recomputation (16-18 on 80 GB by the estimate), and
    # accumulation makes up the rest: gradient checkpointing would cost a third more FLOPs.
    # HellaSwag on 4,000 examples at each evaluation costs under 2% of the training time
    # (evaluation/README.md has the arithmetic).
    "1b": {
        "model": dict(vocab_size=50257, vocab_multiple=64, block_size=1024, n_layer=24,
                      n_head=12, n_embd=1536, ffn_hidden=6144, mlp="swiglu", norm="rmsnorm",
                      pos_emb="rope", bias=False, tie_embeddings=False),
        "train": dict(tokenizer="gpt2", data="fineweb-edu", out_dir="checkpoints_1B",
                      batch_size=None, global_batch_tokens=294_912, learning_rate=6e-4,
                      min_lr=6e-5, warmup_iters=2000, max_iters=100000, grad_clip=1.0,
                      eval_interval=1000, eval_iters=128, save_interval=1000,
                      eval_hellaswag=4000),
    },
}


DEFAULT_PRESET = "1b"  # a bare `python models/gpt.py` is the flagship run, as in the seed


def build_configs(preset: str | None = None,
                  overrides: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Start from defaults, apply a preset, then overrides (keys of either config)."""
    if preset is not None:
        _require(preset in PRESETS,
                 f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset is not None else {"model": {}, "train": {}}
    return apply_overrides(base["model"], base["train"], overrides or {})


def apply_overrides(model_base: dict[str, Any], train_base: dict[str, Any],
                    overrides: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Configs from base values (a preset's, or a checkpoint's) and overrides. An
    accumulation_steps given without global_batch_tokens replaces the base's global batch in
    tokens: the user chose how the batch is made."""
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = [key for key in overrides if key not in model_fields | train_fields]
    if unknown:
        raise ConfigError(f"unknown config field {unknown[0]!r}")
    model_kwargs = {**model_base, **{k: v for k, v in overrides.items() if k in model_fields}}
    train_kwargs = {**train_base, **{k: v for k, v in overrides.items() if k in train_fields}}
    if "accumulation_steps" in overrides and "global_batch_tokens" not in overrides:
        train_kwargs["global_batch_tokens"] = None
    if "global_batch_tokens" in overrides and "accumulation_steps" not in overrides:
        train_kwargs["accumulation_steps"] = 1  # derived from it
    return ModelConfig(**model_kwargs), TrainConfig(**train_kwargs)


def config_from_dict(cls: type, values: dict[str, Any]) -> Any:
    """Rebuild a config stored in a checkpoint, ignoring fields this version no longer has."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


__all__ = ["ConfigError", "ModelConfig", "TrainConfig", "PRESETS", "DEFAULT_PRESET",
           "RUNTIME_FIELDS", "apply_overrides", "build_configs", "config_from_dict",
           "default_ffn_hidden"]
