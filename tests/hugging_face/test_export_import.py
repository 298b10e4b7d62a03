"""Export to transformers (loaded by the locked release and by a 4.x one), import from it (and
what an import refuses), publish (through a stand-in HfApi): all without the Hub."""

import dataclasses
import inspect
import json
import os
import shutil

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2LMHeadModel, LlamaForCausalLM

from data.sources import get_source
from hugging_face import convert_from_hf
from hugging_face.convert_to_hf import export
from models.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from models.generate import generate_ids
from models.gpt import config_from_init
from models.trainer import train
from tests.helpers import FIXTURES, REPO, assert_one_line_error, run_isolated, run_script
from tokenization.tokenizer import byte_tokenizer, get_tokenizer
from transformer_setup.cli import UserError
from transformer_setup.hf_weights import from_hf_config, to_hf_config
from transformer_setup.params import ConfigError, ModelConfig, build_configs
from transformer_setup.transformer import GPT

GPT2_LAYOUT = dict(mlp="gelu", norm="layernorm", pos_emb="learned", bias=True,
                   tie_embeddings=True)


def real_text() -> str:
    path = FIXTURES / "wikitext-2" / "valid.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")[:20_000]
    return "\n".join(get_source("pydocs").documents("val"))[:20_000]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained tiny checkpoint of each family (a few steps of real training, in-process)."""
    root = tmp_path_factory.mktemp("families")
    paths = {}
    for family, extra in (("llama", {"n_kv_head": 2}), ("gpt2", GPT2_LAYOUT)):
        model_config, train_config = build_configs("tiny", dict(
            max_iters=6, batch_size=4, accumulation_steps=1, eval_iters=1, eval_interval=3,
            sample_tokens=0, data_workers=0, tensorboard=False, out_dir=str(root / family),
            **extra))
        train(dataclasses.replace(model_config, vocab_size=257), train_config, byte_tokenizer())
        paths[family] = root / family / "latest.pt"
    return paths


@pytest.fixture(scope="module")
def exported(checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("exported")
    for family, ckpt in checkpoints.items():
        export(load_checkpoint(ckpt), root / family)
    return {family: root / family for family in checkpoints}


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_exported_model_equals_ours(family, checkpoints, exported):
    ours, tokenizer = model_from_checkpoint(load_checkpoint(checkpoints[family]))
    hf = AutoModelForCausalLM.from_pretrained(exported[family]).eval()
    assert type(hf) is (LlamaForCausalLM if family == "llama" else GPT2LMHeadModel)
    hf_tokenizer = AutoTokenizer.from_pretrained(exported[family])
    text = real_text()
    ids = tokenizer.encode(text)
    assert hf_tokenizer(text)["input_ids"] == ids
    x = torch.tensor([ids[:128]])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), rtol=1e-5, atol=1e-5)
    prompt = ids[:20]
    ours_greedy = generate_ids(ours, prompt, 30, temperature=0)[0]
    hf_greedy = hf.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False,
                            eos_token_id=None)[0, 20:].tolist()
    assert hf_greedy == ours_greedy
    assert hf.generation_config.eos_token_id == tokenizer.eot_id == hf_tokenizer.eos_token_id


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_import_of_export_gives_the_same_weights_bitwise(family, checkpoints, exported,
                                                         tmp_path):
    result = run_script("hugging_face/convert_from_hf.py", "--model", str(exported[family]),
                        "--output", str(tmp_path / "back.pt"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    original, back = load_checkpoint(checkpoints[family]), load_checkpoint(tmp_path / "back.pt")
    assert back["model"].keys() == original["model"].keys()
    for name, tensor in original["model"].items():
        assert torch.equal(back["model"][name], tensor), name
    assert back["tokenizer"]["ranks"] == original["tokenizer"]["ranks"]


def test_model_card_front_matter(checkpoints, exported):
    text = (exported["llama"] / "README.md").read_text()
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"llama", "text-generation"} <= set(meta["tags"])
    ckpt = load_checkpoint(checkpoints["llama"])
    assert f"| optimizer steps | {ckpt['step']:,} |" in body
    assert f"| tokens seen | {ckpt['tokens_seen']:,} |" in body
    assert "validation perplexity" in body


@pytest.mark.parametrize("reference", [LlamaForCausalLM, GPT2LMHeadModel])
def test_import_of_a_random_transformers_model_matches_its_logits(reference, tmp_path):
    fields = dict(vocab_size=257, block_size=64, n_layer=2, n_head=4, n_embd=64)
    if reference is GPT2LMHeadModel:
        fields.update(mlp="gelu", norm="layernorm", pos_emb="learned", bias=True,
                      tie_embeddings=True)
    else:
        fields.update(n_kv_head=2, ffn_hidden=96)
    torch.manual_seed(0)
    source = reference(to_hf_config(ModelConfig(**fields))).eval()
    source.save_pretrained(tmp_path / "src")
    result = run_script("hugging_face/convert_from_hf.py", "--model", str(tmp_path / "src"),
                        "--tokenizer", "bytes", "--output", str(tmp_path / "imported.pt"),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "imported.pt"))
    x = torch.randint(0, 257, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x).logits, rtol=1e-5, atol=1e-5)


def test_an_imported_checkpoint_continues_pretraining(checkpoints, exported, tmp_path):
    convert_from_hf.main(["--model", str(exported["gpt2"]), "--output",
                          str(tmp_path / "start.pt")])
    result = run_script("models/gpt.py", "--preset", "tiny", "--init_from",
                        str(tmp_path / "start.pt"), "--max_iters", "2", "--batch_size", "2",
                        "--accumulation_steps", "1", "--eval_iters", "1",
                        "--sample_tokens", "0", "--data_workers", "0", "--n_layer", "4",
                        "--out_dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "initialised from" in result.stdout
    ckpt = load_checkpoint(tmp_path / "run" / "latest.pt")
    assert ckpt["model_config"]["mlp"] == "gelu" and ckpt["step"] == 2
    with pytest.raises(UserError, match="--n_layer 9 contradicts --init_from"):
        config_from_init(str(tmp_path / "start.pt"), {"n_layer": 9})


def test_publish_dry_run_lists_files_offline_and_never_prints_the_token(exported, tmp_path):
    secret = "hf_ThisIsASecretTokenValue1234567890"
    env = {**os.environ, "HF_TOKEN": secret, "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_script("hugging_face/publish_model.py", "--model_dir", str(exported["llama"]),
                        "--repo_id", "someone/tiny", "--private", "--dry_run", cwd=tmp_path,
                        env=env)
    assert result.returncode == 0, result.stderr
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md"):
        assert name in result.stdout
    assert "loads as LlamaForCausalLM" in result.stdout and "nothing uploaded" in result.stdout
    assert secret not in result.stdout + result.stderr


def test_publish_failure_is_one_line_without_the_token(exported, tmp_path):
    secret = "hf_ThisIsASecretTokenValue1234567890"
    env = {**os.environ, "HF_TOKEN": secret, "HF_ENDPOINT": "http://127.0.0.1:9"}
    result = run_script("hugging_face/publish_model.py", "--model_dir", str(exported["llama"]),
                        "--repo_id", "someone/tiny", cwd=tmp_path, env=env)
    assert result.returncode != 0
    assert "upload to someone/tiny failed" in result.stderr and "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr


def test_export_refuses_a_model_without_a_stock_class(tmp_path):
    config = ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16,
                         norm="layernorm")  # RoPE + LayerNorm: neither Llama nor GPT-2
    save_checkpoint({"model_config": dataclasses.asdict(config), "model": GPT(config).state_dict(),
                     "tokenizer": byte_tokenizer().spec(), "step": 0}, tmp_path / "odd.pt")
    result = run_script("hugging_face/convert_to_hf.py", "--checkpoint", str(tmp_path / "odd.pt"),
                        "--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert_one_line_error(result, "no stock transformers class", "norm='layernorm'")
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_folder_unless_overwrite(checkpoints, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = ["hugging_face/convert_to_hf.py", "--checkpoint", str(checkpoints["llama"]),
            "--output_dir", str(tmp_path / "out")]
    assert_one_line_error(run_script(*args, cwd=tmp_path), "not empty", "--overwrite")
    assert (tmp_path / "out" / "keep.txt").exists()
    # --overwrite replaces an earlier export, never a file it did not write
    assert_one_line_error(run_script(*args, "--overwrite", cwd=tmp_path), "keep.txt",
                          "only an earlier export's files")
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_overwrite_never_deletes_a_run_folder(checkpoints, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(checkpoints["llama"].parent, run)
    before = sorted(p.name for p in run.iterdir())
    assert "latest.pt" in before
    result = run_script("hugging_face/convert_to_hf.py", "--checkpoint", str(run / "latest.pt"),
                        "--output_dir", str(run), "--overwrite", cwd=tmp_path)
    assert_one_line_error(result, "checkpoints (", "latest.pt", "choose another --output_dir")
    assert sorted(p.name for p in run.iterdir()) == before


def test_overwrite_replaces_an_earlier_export_and_its_stale_shards(checkpoints, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                 "model.safetensors.index.json", "config.json", "special_tokens_map.json",
                 "README.md"):  # a sharded export, as a 4.x transformers writes it
        (out / name).write_text("old")
    export(load_checkpoint(checkpoints["llama"]), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    assert type(AutoModelForCausalLM.from_pretrained(out)) is LlamaForCausalLM


def test_import_bad_input(tmp_path):
    (tmp_path / "notamodel").mkdir()
    assert_one_line_error(run_script("hugging_face/convert_from_hf.py", "--model",
                                     str(tmp_path / "notamodel"), "--output", "x.pt",
                                     cwd=tmp_path), "not a transformers model folder")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert_one_line_error(run_script("hugging_face/convert_from_hf.py", "--model",
                                     "someone/some-model", "--output", "x.pt", cwd=tmp_path,
                                     env=env), "cannot reach model 'someone/some-model'")


# ---------------------------------------------------------------- exports any transformers loads

def random_checkpoint(**fields) -> dict:
    """A checkpoint of an untrained model with weights spread wide enough to show differences."""
    config = ModelConfig(**{**dict(vocab_size=257, block_size=64, n_layer=2, n_head=4,
                                   n_embd=64), **fields})
    torch.manual_seed(0)
    model = GPT(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    return {"model_config": dataclasses.asdict(config), "model": model.state_dict(),
            "tokenizer": byte_tokenizer().spec(), "step": 0}


WIDE = dict(vocab_size=320, n_kv_head=2, rope_theta=500_000.0, bias=True)  # rows past the tokenizer


@pytest.fixture(scope="module")
def wide_export(tmp_path_factory):
    """A Llama whose vocabulary is larger than its tokenizer's (--vocab_size 320 with bytes) and
    whose RoPE base is not transformers' default."""
    folder = tmp_path_factory.mktemp("wide") / "hf"
    ckpt = random_checkpoint(**WIDE)
    export(ckpt, folder)
    return ckpt, folder


def test_a_vocabulary_larger_than_the_tokenizer_exports_and_imports_back(wide_export, tmp_path):
    ckpt, folder = wide_export
    ours, tokenizer = model_from_checkpoint(ckpt)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert hf.config.vocab_size == 320 and tokenizer.n_vocab == 257
    x = torch.tensor([tokenizer.encode(real_text()[:60])])
    with torch.no_grad():  # every row kept: the softmax over 320 logits is ours
        torch.testing.assert_close(hf(x).logits, ours(x), rtol=1e-5, atol=1e-5)
    assert hf.generation_config.suppress_tokens == list(range(257, 320))
    sampled = hf.generate(x[:, :10], max_new_tokens=200, do_sample=True, top_k=0,
                          temperature=5.0, eos_token_id=None)
    assert sampled.max() < 257  # transformers never samples an id the tokenizer cannot decode
    convert_from_hf.main(["--model", str(folder), "--output", str(tmp_path / "back.pt")])
    back = load_checkpoint(tmp_path / "back.pt")
    assert back["model_config"]["vocab_size"] == 320
    for name, tensor in ckpt["model"].items():
        assert torch.equal(back["model"][name], tensor), name


def test_exported_files_name_what_transformers_4x_reads(wide_export):
    _, folder = wide_export
    config = json.loads((folder / "config.json").read_text())
    assert config["rope_theta"] == 500_000.0  # 4.x reads this key, 5.x rope_parameters
    assert config["rope_parameters"]["rope_theta"] == 500_000.0
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast"  # in 4.x and 5.x


def test_exported_tokenizer_pads_batches(exported):
    tokenizer = AutoTokenizer.from_pretrained(exported["gpt2"])
    assert tokenizer.pad_token == "<|endoftext|>"
    batch = tokenizer(["a short one", "and a longer line of text"], padding=True,
                      return_tensors="pt")
    assert batch["attention_mask"][0].tolist().count(0) > 0


def test_exports_load_alike_in_transformers_4x(checkpoints, exported, wide_export, tmp_path):
    """The locked transformers (5.x) and a 4.x release load the same folders to the same
    logits and ids: the 4.x side runs in a throwaway environment built by uv."""
    text = real_text()[:3000]
    ids = byte_tokenizer().encode(text)[:64]
    folders = {"gpt2": exported["gpt2"], "llama": exported["llama"], "wide": wide_export[1]}
    gpt2_file = FIXTURES / "gpt2.tiktoken"
    if gpt2_file.exists():  # GPT-2's merges, through the tokenizers release 4.x pins
        get_tokenizer(str(gpt2_file)).save(tmp_path / "gpt2-tokenizer")
        folders["gpt2-tokenizer"] = tmp_path / "gpt2-tokenizer"
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"text": text, "ids": ids,
                                   "folders": {k: str(v) for k, v in folders.items()}}))
    result = run_isolated(["transformers==4.57.*"],
                          REPO / "tests/hugging_face/transformers_release_check.py",
                          str(request), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["version"].startswith("4.57")
    models = {"gpt2": model_from_checkpoint(load_checkpoint(checkpoints["gpt2"]))[0],
              "llama": model_from_checkpoint(load_checkpoint(checkpoints["llama"]))[0],
              "wide": model_from_checkpoint(wide_export[0])[0]}
    for name, folder in folders.items():
        old = seen["folders"][name]
        assert old["tokenizer_class"] == "PreTrainedTokenizerFast", name
        assert old["ids"] == AutoTokenizer.from_pretrained(folder)(text)["input_ids"], name
        assert old["pad_token"] == "<|endoftext|>" and 0 in old["padded"][0], name
        if name in models:
            with torch.no_grad():
                ours = models[name](torch.tensor([ids]))[0]
            torch.testing.assert_close(torch.tensor(old["logits"]), ours, rtol=1e-5, atol=1e-5)
    assert seen["folders"]["wide"]["rope_theta"] == 500_000.0
    if gpt2_file.exists():
        assert seen["folders"]["gpt2-tokenizer"]["ids"] == get_tokenizer(
            str(gpt2_file)).encode(text)


# ---------------------------------------------------------------- what an import refuses

LLAMA_FIELDS = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=257,
                    hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    rms_norm_eps=1e-5, tie_word_embeddings=False)
GPT2_FIELDS = dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=257,
                   n_positions=64, n_embd=64, n_layer=2, n_head=4)
LLAMA3_SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=32)
# (name, config.json fields, a fragment of the refusal, or None where the import must succeed).
# "v4" fields are laid out as transformers 4.x writes them (rope_theta, rope_scaling and
# partial_rotary_factor at the top), "v5" as 5.x does (inside rope_parameters).
IMPORT_CASES = [
    ("llama", LLAMA_FIELDS, None),
    ("llama-v4-rope-theta", {**LLAMA_FIELDS, "rope_theta": 500000.0}, None),
    ("llama-v5-rope-theta", {**LLAMA_FIELDS, "rope_parameters": {
        "rope_type": "default", "rope_theta": 500000.0}}, None),
    ("gpt2", GPT2_FIELDS, None),
    ("gpt2-gelu-pytorch-tanh", {**GPT2_FIELDS, "activation_function": "gelu_pytorch_tanh"},
     None),
    ("llama-gelu", {**LLAMA_FIELDS, "hidden_act": "gelu"}, "hidden_act='gelu'"),
    ("llama-v4-llama3-rope", {**LLAMA_FIELDS, "rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", **LLAMA3_SCALING}}, "'llama3'"),
    ("llama-v4-linear-rope-old-key", {**LLAMA_FIELDS, "rope_scaling": {
        "type": "linear", "factor": 2.0}}, "'linear'"),
    ("llama-v5-yarn-rope", {**LLAMA_FIELDS, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 2.0,
        "original_max_position_embeddings": 32}}, "'yarn'"),
    ("llama-v4-partial-rotary", {**LLAMA_FIELDS, "partial_rotary_factor": 0.5},
     "partial_rotary_factor"),
    ("llama-v5-partial-rotary", {**LLAMA_FIELDS, "rope_parameters": {
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
     "partial_rotary_factor"),
    ("llama-head-dim", {**LLAMA_FIELDS, "head_dim": 32}, "head_dim=32"),
    ("llama-attention-bias-only", {**LLAMA_FIELDS, "attention_bias": True},
     "attention_bias=True"),
    ("llama-sliding-window", {**LLAMA_FIELDS, "sliding_window": 32}, "sliding_window=32"),
    ("llama-quantized", {**LLAMA_FIELDS, "quantization_config": {
        "quant_method": "gptq", "bits": 4, "group_size": 32}}, "quantization_config"),
    ("gpt2-relu", {**GPT2_FIELDS, "activation_function": "relu"},
     "activation_function='relu'"),
    ("gpt2-unscaled-attention", {**GPT2_FIELDS, "scale_attn_weights": False},
     "scale_attn_weights=False"),
    ("gpt2-inverse-layer-scaling", {**GPT2_FIELDS, "scale_attn_by_inverse_layer_idx": True},
     "scale_attn_by_inverse_layer_idx=True"),
    ("gpt2-reorder-and-upcast", {**GPT2_FIELDS, "reorder_and_upcast_attn": True},
     "reorder_and_upcast_attn=True"),
    ("gpt2-cross-attention", {**GPT2_FIELDS, "add_cross_attention": True},
     "add_cross_attention=True"),
]


def expected_rope_theta(fields: dict) -> float:
    return fields.get("rope_theta", fields.get("rope_parameters", {}).get("rope_theta", 10000.0))


@pytest.mark.parametrize("name, fields, refusal", IMPORT_CASES, ids=[c[0] for c in IMPORT_CASES])
def test_import_refuses_every_config_it_cannot_compute(name, fields, refusal, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(fields))
    from transformers import AutoConfig

    hf_config = AutoConfig.from_pretrained(tmp_path)
    if refusal is None:
        assert from_hf_config(hf_config).rope_theta == expected_rope_theta(fields)
        return
    with pytest.raises(ConfigError, match="cannot import this") as caught:
        from_hf_config(hf_config)
    assert refusal in str(caught.value) and "\n" not in str(caught.value)


def test_import_refusals_hold_under_transformers_4x(tmp_path):
    """The same table read by a 4.x release, whose configs keep RoPE settings at the top."""
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"text": "", "ids": [],
                                   "imports": {name: fields for name, fields, _ in IMPORT_CASES}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = run_isolated(["transformers==4.57.*"],
                          REPO / "tests/hugging_face/transformers_release_check.py",
                          str(request), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])["imports"]
    for name, fields, refusal in IMPORT_CASES:
        if refusal is None:
            assert seen[name] == f"accepted: rope_theta={expected_rope_theta(fields)}", name
        else:
            assert seen[name].startswith("refused:") and refusal in seen[name], (name, seen[name])


def test_an_unsupported_config_is_one_line_from_the_command_line(tmp_path):
    source = tmp_path / "src"
    LlamaForCausalLM(to_hf_config(ModelConfig(vocab_size=257, block_size=64, n_layer=1, n_head=4,
                                              n_embd=64))).save_pretrained(source)
    config = json.loads((source / "config.json").read_text())
    (source / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    result = run_script("hugging_face/convert_from_hf.py", "--model", str(source), "--tokenizer",
                        "bytes", "--output", str(tmp_path / "x.pt"), cwd=tmp_path)
    assert_one_line_error(result, "cannot import this llama model", "hidden_act='gelu'")
    assert not (tmp_path / "x.pt").exists()


# ---------------------------------------------------------------- the card of an imported model

def test_a_reexported_import_names_its_base_model_not_a_dataset(tmp_path):
    ckpt = random_checkpoint()
    save_checkpoint({**ckpt, "train_config": {}, "imported_from": "someone/base-model"},
                    tmp_path / "imported.pt")
    export(load_checkpoint(tmp_path / "imported.pt"), tmp_path / "hf")
    _, front, body = (tmp_path / "hf" / "README.md").read_text().split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["base_model"] == "someone/base-model" and "datasets" not in meta
    assert "| imported from | someone/base-model |" in body and "from scratch" not in body


def test_an_import_records_where_it_came_from(exported, tmp_path):
    convert_from_hf.main(["--model", str(exported["gpt2"]), "--output", str(tmp_path / "x.pt")])
    ckpt = load_checkpoint(tmp_path / "x.pt")
    assert ckpt["imported_from"] == str(exported["gpt2"]) and ckpt["train_config"] == {}


# ---------------------------------------------------------------- publishing, against a stand-in

class StandInHub:
    """What the Hub keeps of model repos: visibility and files (an org default for new repos)."""

    def __init__(self, org_private_default: bool = False) -> None:
        self.repos: dict[str, dict] = {}
        self.org_private_default = org_private_default
        self.calls: list[tuple[str, dict]] = []
        self.refuse_settings = False


def stand_in_api(hub: StandInHub):
    """An HfApi whose network methods act on `hub`; each call is first bound to the real
    method's signature, so a misspelt or removed argument fails here as it would online."""
    from huggingface_hub import HfApi

    def checked(name, *args, **kwargs):
        inspect.signature(getattr(HfApi, name)).bind(None, *args, **kwargs)
        hub.calls.append((name, dict(kwargs)))

    class StandIn(HfApi):
        def create_repo(self, repo_id, **kwargs):
            checked("create_repo", repo_id, **kwargs)
            if repo_id in hub.repos and not kwargs.get("exist_ok"):
                raise RuntimeError("409 repo exists")
            if repo_id not in hub.repos:  # an existing repo keeps its visibility, as online
                private = kwargs.get("private")
                hub.repos[repo_id] = {"private": hub.org_private_default if private is None
                                      else private, "files": {}}
            return f"https://hub.example/{repo_id}"

        def repo_info(self, repo_id, **kwargs):
            checked("repo_info", repo_id, **kwargs)
            return type("Info", (), {"private": hub.repos[repo_id]["private"]})()

        def update_repo_settings(self, repo_id, **kwargs):
            checked("update_repo_settings", repo_id, **kwargs)
            if hub.refuse_settings:
                raise RuntimeError("403 Forbidden: you cannot change this repo's settings")
            if kwargs.get("private") is not None:
                hub.repos[repo_id]["private"] = kwargs["private"]

        def list_repo_files(self, repo_id, **kwargs):
            checked("list_repo_files", repo_id, **kwargs)
            return sorted(hub.repos[repo_id]["files"])

        def create_commit(self, repo_id, operations, **kwargs):
            checked("create_commit", repo_id, operations, **kwargs)
            repo = hub.repos[repo_id]
            for op in operations:
                if hasattr(op, "path_or_fileobj"):
                    data = op.path_or_fileobj
                    repo["files"][op.path_in_repo] = data if isinstance(data, bytes) else \
                        open(data, "rb").read()
                else:
                    repo["files"].pop(op.path_in_repo)
            repo["committed_while_private"] = repo["private"]
            return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    return StandIn


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    hub = StandInHub()
    monkeypatch.setattr(huggingface_hub, "HfApi", stand_in_api(hub))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # anything unstubbed fails at once
    return hub


def publish(folder, *flags: str) -> None:
    from hugging_face import publish_model

    publish_model.main(["--model_dir", str(folder), "--repo_id", "someone/tiny", *flags])


def test_publish_private_makes_an_existing_public_repo_private_before_uploading(exported, hub):
    hub.repos["someone/tiny"] = {"private": False, "files": {}}
    publish(exported["llama"], "--private")
    assert hub.repos["someone/tiny"]["private"] is True
    assert hub.repos["someone/tiny"]["committed_while_private"] is True


def test_publish_public_makes_an_existing_private_repo_public(exported, hub):
    hub.repos["someone/tiny"] = {"private": True, "files": {}}
    publish(exported["llama"], "--public")
    assert hub.repos["someone/tiny"]["private"] is False


def test_publish_without_a_visibility_leaves_the_default_and_the_repo_alone(exported, hub):
    hub.org_private_default = True
    publish(exported["llama"])
    assert hub.calls[0] == ("create_repo", {"private": None, "exist_ok": True,
                                            "repo_type": "model"})
    assert hub.repos["someone/tiny"]["private"] is True  # the organisation's default
    assert not any(name == "update_repo_settings" for name, _ in hub.calls)


def test_a_refused_visibility_change_uploads_nothing(exported, hub, capsys):
    hub.repos["someone/tiny"] = {"private": False, "files": {}}
    hub.refuse_settings = True
    with pytest.raises(UserError, match="upload to someone/tiny failed: 403 Forbidden"):
        publish(exported["llama"], "--private")
    assert hub.repos["someone/tiny"]["files"] == {}


def test_publish_removes_an_earlier_exports_files_and_fills_the_card(exported, hub):
    earlier = {name: b"old" for name in ("model-00001-of-00002.safetensors",
                                         "model-00002-of-00002.safetensors",
                                         "model.safetensors.index.json", "config.json",
                                         "special_tokens_map.json")}
    hub.repos["someone/tiny"] = {"private": False,
                                 "files": {**earlier, "results/eval.json": b"mine",
                                           "notes.md": b"mine"}}
    publish(exported["llama"])
    files = hub.repos["someone/tiny"]["files"]
    local = sorted(p.name for p in exported["llama"].iterdir())
    assert sorted(files) == sorted(local + ["notes.md", "results/eval.json"])
    assert files["config.json"] == (exported["llama"] / "config.json").read_bytes()
    card = files["README.md"].decode()
    assert 'from_pretrained("someone/tiny")' in card and "PATH_OR_REPO" not in card
