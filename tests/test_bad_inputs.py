"""Bad input across every entry script, one row each: the command, a fragment of the one line it
must print on stderr, a non-zero exit, and no traceback. A new flag gets a row here.

Rows run in-process through the scripts' own `run_main` (what a user's process runs, without
paying the start-up of one process per row); the rows that could hang (a FIFO given as a
checkpoint) run as real processes with a timeout.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import stat

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from tests.helpers import assert_one_line_error, run_script
from tokenization.tokenizer import byte_tokenizer
from transformer_setup.cli import run_main
from transformer_setup.params import ModelConfig
from transformer_setup.transformer import GPT

MODULES = {"gpt": "models.gpt", "inference": "models.inference",
           "perplexity": "evaluation.eval_perplexity", "hellaswag": "evaluation.hellaswag",
           "to_hf": "hugging_face.convert_to_hf", "from_hf": "hugging_face.convert_from_hf",
           "publish": "hugging_face.publish_model", "tokenizer": "tokenization.train_tokenizer",
           "prepare": "data.prepare", "benchmark": "scripts.benchmark",
           "benchmark_data": "scripts.benchmark_data", "plot": "scripts.plot_training",
           "benchmarks": "evaluation.benchmarks", "report": "scripts.report"}
TINY = ["--preset", "tiny", "--max_iters", "1", "--data_workers", "0", "--sample_tokens", "0"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid tiny checkpoint and the broken things a user or a cluster can hand a script."""
    root = tmp_path_factory.mktemp("inputs")
    config = ModelConfig(vocab_size=257, block_size=16, n_layer=1, n_head=2, n_embd=16)
    base = {"model_config": dataclasses.asdict(config), "tokenizer": byte_tokenizer().spec(),
            "model": GPT(config).state_dict(), "step": 1}
    save_checkpoint(base, root / "good.pt")
    save_checkpoint({k: v for k, v in base.items() if k != "model"}, root / "no_model.pt")
    save_checkpoint({**base, "model_config": {**base["model_config"], "vocab_size": 10**12}},
                    root / "huge.pt")
    (root / "junk.pt").write_bytes(os.urandom(3000))
    (root / "hf_no_weights").mkdir()
    (root / "hf_no_weights" / "config.json").write_text('{"model_type": "llama"}')
    (root / "not_a_folder").write_text("a file")
    (root / "corpus.txt").write_text("".join(f"line {i} of a small corpus\n" for i in range(2000)))
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("someone else's files")
    return root


CASES = [
    # training
    ("gpt", ["--preset", "nope"], "invalid choice: 'nope'"),
    ("gpt", [*TINY, "--n_embd", "100", "--n_head", "3"],
     "n_embd (100) must be divisible by n_head (3)"),
    ("gpt", [*TINY, "--mlp", "relu"], "mlp must be one of"),
    ("gpt", [*TINY, "--no_such_flag", "1"], "unrecognized arguments"),
    ("gpt", [*TINY, "--tokenizer", "nope"], "unknown tokenizer 'nope'"),
    ("gpt", [*TINY, "--data", "nope"], "unknown data source 'nope'"),
    ("gpt", [*TINY, "--device", "cuda:7"], "cuda:7"),
    ("gpt", [*TINY, "--learning_rate", "inf"], "learning_rate must be a finite number"),
    ("gpt", [*TINY, "--learning_rate", "nan"], "learning_rate must be a finite number"),
    ("gpt", [*TINY, "--dropout", "1.5"], "dropout must be in [0, 1)"),
    ("gpt", [*TINY, "--max_iters", "0"], "max_iters must be positive"),
    ("gpt", [*TINY, "--batch_size", "-2"], "batch_size must be positive"),
    ("gpt", [*TINY, "--eval_iters", "0"], "eval_iters must be positive"),
    ("gpt", [*TINY, "--grad_clip", "-1"], "grad_clip must be >= 0"),
    ("gpt", [*TINY, "--dtype", "fp8"], "dtype must be one of"),
    ("gpt", [*TINY, "--n_layer", "two"], "--n_layer"),
    ("gpt", [*TINY, "--global_batch_tokens", "1000"], "not a multiple"),
    ("gpt", [*TINY, "--min_lr", "0.01"], "min_lr (0.01) is above the peak learning_rate (0.008)"),
    ("gpt", [*TINY, "--data", "{root}/missing.txt"], "file not found"),
    ("gpt", [*TINY, "--val_data", "{root}/missing.txt"], "file not found"),
    ("gpt", [*TINY, "--init_from", "{root}/missing.pt"], "checkpoint not found"),
    ("gpt", [*TINY, "--init_from", "{root}/junk.pt"], "not a"),
    ("gpt", [*TINY, "--init_from", "{root}/no_model.pt"], "is incomplete: no model"),
    ("gpt", [*TINY, "--init_from", "{root}/huge.pt"], "needs (1000000000000, 16)"),
    ("gpt", [*TINY, "--resume"], "no checkpoint to resume from"),
    ("gpt", [*TINY, "--out_dir", "{root}/not_a_folder/out"], "cannot create"),
    ("gpt", [*TINY, "--fsdp", "--optimizer", "adamw"], "start the run with torchrun"),
    ("gpt", [*TINY, "--fsdp"], "optimizer muon with fsdp is not supported"),
    ("gpt", [*TINY, "--data", "{root}/busy"], "too small to split"),
    ("gpt", [*TINY, "--eval_hellaswag", "-1"], "eval_hellaswag must be >= 0"),
    # the dry run's planner
    ("gpt", ["--preset", "1b", "--dry_run", "--hours", "-24"], "--hours: expected a positive"),
    ("gpt", ["--preset", "1b", "--dry_run", "--tokens", "0"], "--tokens: expected a positive"),
    ("gpt", ["--preset", "1b", "--dry_run", "--price_per_gpu_hour", "-2"],
     "--price_per_gpu_hour: expected a number >= 0"),
    ("gpt", ["--preset", "1b", "--dry_run", "--gpus", "0"], "--gpus: expected a positive"),
    ("gpt", ["--preset", "1b", "--dry_run", "--gpu_type", "X100"], "unknown --gpu_type 'X100'"),
    ("gpt", [*TINY, "--hours", "5"], "--hours plan a run: add --dry_run"),
    # generation and evaluation
    ("inference", ["{root}/missing.pt", "--prompt", "x"], "checkpoint not found"),
    ("inference", ["{root}/junk.pt", "--prompt", "x"], "not a"),
    ("inference", ["{root}/busy", "--prompt", "x"], "is a folder"),
    ("inference", ["{root}/huge.pt", "--prompt", "x"], "needs (1000000000000, 16)"),
    ("inference", ["{root}/hf_no_weights", "--prompt", "x"], "no weights"),
    ("inference", ["{root}/good.pt", "--temperature", "nan"], "--temperature"),
    ("inference", ["{root}/good.pt", "--temperature", "-1"], "--temperature"),
    ("inference", ["{root}/good.pt", "--top_p", "0"], "--top_p"),
    ("inference", ["{root}/good.pt", "--top_k", "-1"], "--top_k"),
    ("inference", ["{root}/good.pt", "--max_new_tokens", "0"], "--max_new_tokens"),
    ("inference", ["{root}/good.pt", "--num_samples", "0"], "--num_samples"),
    ("perplexity", ["{root}/good.pt", "--data", "{root}/corpus.txt", "--stride", "0"],
     "--stride"),
    ("perplexity", ["{root}/good.pt", "--data", "{root}/corpus.txt", "--stride", "99"],
     "--stride"),
    ("perplexity", ["{root}/good.pt", "--data", "{root}/corpus.txt", "--batch_size", "0"],
     "--batch_size"),
    ("perplexity", ["{root}/good.pt", "--data", "{root}/corpus.txt", "--max_tokens", "1"],
     "--max_tokens"),
    ("perplexity", ["{root}/good.pt", "--data", "{root}/missing.txt"], "file not found"),
    ("perplexity", ["{root}/missing.pt", "--data", "{root}/corpus.txt"], "checkpoint not found"),
    ("hellaswag", ["{root}/good.pt", "--data", "{root}/missing.jsonl"], "file not found"),
    ("hellaswag", ["{root}/good.pt", "--limit", "0"], "--limit"),
    ("benchmarks", ["{root}/junk.pt"], "takes a checkpoint of this project or a transformers"),
    ("benchmarks", ["{root}/busy"], "neither a checkpoint of this project (.pt) nor a"),
    ("benchmarks", ["{root}/good.pt", "--tasks", ","], "--tasks names no task"),
    ("benchmarks", ["{root}/good.pt", "--limit", "-1"], "--limit"),
    # Hugging Face
    ("to_hf", ["--checkpoint", "{root}/missing.pt", "--output_dir", "{root}/hf"],
     "checkpoint not found"),
    ("to_hf", ["--checkpoint", "{root}/no_model.pt", "--output_dir", "{root}/hf"],
     "is incomplete"),
    ("to_hf", ["--checkpoint", "{root}/good.pt", "--output_dir", "{root}/busy"], "not empty"),
    ("from_hf", ["--model", "./missing_folder", "--output", "{root}/x.pt"],
     "folder not found: ./missing_folder"),
    ("from_hf", ["--model", "{root}/hf_no_weights", "--output", "{root}/x.pt"], "no weights"),
    ("from_hf", ["--model", "{root}/busy", "--output", "{root}/x.pt"], "no config.json"),
    ("publish", ["--model_dir", "{root}/hf", "--repo_id", "no-slash"], "USER/NAME"),
    ("publish", ["--model_dir", "{root}/missing", "--repo_id", "me/model", "--dry_run"],
     "missing"),
    # tokenizers and data
    ("tokenizer", ["--data", "{root}/corpus.txt", "--vocab_size", "10", "--out", "{root}/t"],
     "--vocab_size"),
    ("tokenizer", ["--data", "{root}/corpus.txt", "--max_chars", "0", "--out", "{root}/t"],
     "--max_chars"),
    ("tokenizer", ["--data", "{root}/corpus.txt", "--out", "{root}/not_a_folder"], "is a file"),
    ("prepare", ["--data", "{root}/corpus.txt", "--tokenizer", "bytes", "--out", "{root}/p",
                 "--shard_tokens", "0"], "--shard_tokens"),
    ("prepare", ["--data", "{root}/nothing*.txt", "--tokenizer", "bytes", "--out", "{root}/p"],
     "matches no files"),
    ("prepare", ["--data", "{root}/corpus.txt", "--tokenizer", "bytes", "--out", "{root}/busy"],
     "holds other files"),
    # scripts
    ("benchmark", ["--steps", "0"], "--steps"),
    ("benchmark_data", ["--seconds", "nan"], "--seconds"),
    ("plot", ["{root}/missing"], "folder not found"),
    ("report", ["{root}/missing"], "folder not found"),
    ("report", ["{root}/busy"], "no train.log in"),
]


def run_in_process(script: str, argv: list[str], capsys) -> tuple[int, str]:
    main = importlib.import_module(MODULES[script]).main
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("script, argv, fragment", CASES,
                         ids=[f"{c[0]}:{' '.join(c[1])[:40]}" for c in CASES])
def test_bad_input_is_one_clear_line(script, argv, fragment, files, capsys, monkeypatch):
    if "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    monkeypatch.chdir(files)
    argv = [a.replace("{root}", str(files)) for a in argv]
    if script == "gpt" and "--out_dir" not in argv:
        argv += ["--out_dir", str(files / "out" / script)]
    code, stderr = run_in_process(script, argv, capsys)
    lines = stderr.strip().splitlines()
    assert code != 0 and len(lines) == 1, stderr
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("script, args", [
    ("models/gpt.py", [*TINY, "--init_from", "{fifo}"]),
    ("models/inference.py", ["{fifo}", "--prompt", "x"]),
    ("hugging_face/convert_to_hf.py", ["--checkpoint", "{fifo}", "--output_dir", "hf"]),
])
def test_a_fifo_is_refused_not_waited_on(script, args, tmp_path):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)
    assert stat.S_ISFIFO(fifo.stat().st_mode)
    result = run_script(script, *[a.replace("{fifo}", str(fifo)) for a in args], cwd=tmp_path,
                        timeout=60)
    assert_one_line_error(result, "not a regular file")


def test_shards_are_checked_before_training(tmp_path, capsys):
    (tmp_path / "corpus.txt").write_text("".join(f"line {i} of a corpus\n" for i in range(3000)))
    prepare = importlib.import_module("data.prepare").main
    prepare(["--data", str(tmp_path / "corpus.txt"), "--tokenizer", "bytes", "--out",
             str(tmp_path / "shards"), "--shard_tokens", "20000", "--workers", "1"])
    shard = tmp_path / "shards" / "train_000001.bin"
    original = shard.read_bytes()
    train = [*TINY, "--data", str(tmp_path / "shards"), "--out_dir", str(tmp_path / "run"),
             "--val_tokens", "1024"]

    def error_after(damage: bytes) -> str:
        shard.write_bytes(damage)
        code, stderr = run_in_process("gpt", train, capsys)
        assert code != 0 and len(stderr.strip().splitlines()) == 1, stderr
        return stderr

    flipped = bytearray(original)
    flipped[-10] ^= 0x01  # one bit of one id
    assert "is corrupt" in error_after(bytes(flipped))
    assert "truncated" in error_after(original[:-100])
    header = original[:1024].replace(b'"dtype": "uint16"', b'"dtype": "float64"')
    assert "announces token dtype 'float64'" in error_after(header + original[1024:])
    ids = np.frombuffer(original[1024:], dtype=np.uint16).copy()
    ids[5] = 300  # beyond the 257 ids of the bytes tokenizer
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    from data.shards import shard_record
    record = shard_record(ids)
    meta["splits"]["train"]["records"][1] = record
    (tmp_path / "shards" / "meta.json").write_text(json.dumps(meta))
    text = original[:1024].decode()
    for key in ("max_id", "crc32"):
        old = json.loads(text[8:])[key]
        text = text.replace(f'"{key}": {old}', f'"{key}": {record[key]}')
    shard_bytes = text.encode().ljust(1024)[:1024] + ids.tobytes()
    assert "holds id 300, beyond this tokenizer's 257 ids" in error_after(shard_bytes)


def test_prepare_refuses_another_sources_folder_unless_overwrite(tmp_path, capsys):
    prepare = importlib.import_module("data.prepare").main
    for name in ("a", "b"):
        (tmp_path / f"{name}.txt").write_text("".join(f"{name} line {i} of text\n"
                                                      for i in range(2000)))
    out = str(tmp_path / "shards")
    prepare(["--data", str(tmp_path / "a.txt"), "--tokenizer", "bytes", "--out", out])
    prepare(["--data", str(tmp_path / "a.txt"), "--tokenizer", "bytes", "--out", out])
    assert "already holds this data" in capsys.readouterr().out
    code, stderr = run_in_process("prepare", ["--data", str(tmp_path / "b.txt"), "--tokenizer",
                                              "bytes", "--out", out], capsys)
    assert code != 0 and "already holds shards of" in stderr and "--overwrite" in stderr
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["source"] == str(tmp_path / "a.txt")  # not relabelled
    prepare(["--data", str(tmp_path / "b.txt"), "--tokenizer", "bytes", "--out", out,
             "--overwrite"])
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["source"] == str(tmp_path / "b.txt")
    first = np.fromfile(tmp_path / "shards" / "train_000000.bin", dtype=np.uint16, offset=1024)
    assert bytes(first[:40].astype(np.uint8)).decode(errors="replace").count("b line") >= 1
