"""Export to transformers, import from it, publish (dry run): all offline."""

import dataclasses
import os

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
from tests.helpers import FIXTURES, assert_one_line_error, run_script
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.cli import UserError
from transformer_setup.hf_weights import to_hf_config
from transformer_setup.params import ModelConfig, build_configs
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
    assert run_script(*args, "--overwrite", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out" / "config.json").exists()


def test_import_bad_input(tmp_path):
    (tmp_path / "notamodel").mkdir()
    assert_one_line_error(run_script("hugging_face/convert_from_hf.py", "--model",
                                     str(tmp_path / "notamodel"), "--output", "x.pt",
                                     cwd=tmp_path), "not a transformers model folder")
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9"}
    assert_one_line_error(run_script("hugging_face/convert_from_hf.py", "--model",
                                     "someone/some-model", "--output", "x.pt", cwd=tmp_path,
                                     env=env), "cannot reach model 'someone/some-model'")
