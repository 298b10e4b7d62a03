"""evaluation/benchmarks.py: lm-evaluation-harness on a checkpoint of ours in one command, equal to
the harness run by hand on the exported folder; the published figures beside a 0-shot run only;
bad input in one line."""

import json
import os
import sys

import pytest

from evaluation import benchmarks
from evaluation.benchmarks import PUBLISHED, SOURCES, footnotes, render_table
from hugging_face.convert_to_hf import export
from models.checkpoint import load_checkpoint
from tests.helpers import REPO, run_isolated
from transformer_setup.cli import run_main

# A multiple-choice task of our own on a local file, as the harness takes one (task YAML with
# local data files): two plausible English endings each, so the tiny model's accuracy is
# neither 0 nor 1 by construction.
ROWS = [
    {"question": "The function returns", "choices": ["the value.", "a new list."], "label": 0},
    {"question": "This module provides", "choices": ["a class.", "functions for files."],
     "label": 1},
    {"question": "If the argument is omitted,", "choices": ["it is None.", "the default is used."],
     "label": 1},
    {"question": "Raise an exception when", "choices": ["the file is missing.", "it is done."],
     "label": 0},
    {"question": "The method", "choices": ["returns a copy of the list.", "is deprecated."],
     "label": 0},
    {"question": "An integer", "choices": ["is a number.", "or a string."], "label": 1},
    {"question": "See the documentation", "choices": ["for details.", "of the module."],
     "label": 0},
    {"question": "The default value", "choices": ["is zero.", "of the argument is None."],
     "label": 1},
]
TASK = "tiny_choice"


def task_yaml(data_file) -> str:
    return (f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    validation: {data_file}\nvalidation_split: validation\n"
            "output_type: multiple_choice\ndoc_to_text: \"{{question}}\"\n"
            "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{label}}\"\n"
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")


@pytest.fixture(scope="module")
def harness_run(quickstart, tmp_path_factory):
    """benchmarks.py and the harness's own command line, in a throwaway environment holding
    the project and lm-evaluation-harness (as `uv sync --extra eval` installs them)."""
    out_dir, _ = quickstart
    root = tmp_path_factory.mktemp("benchmarks")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    (tasks / f"{TASK}.yaml").write_text(task_yaml(tasks / "rows.jsonl"))
    checkpoint = out_dir / "best_model.pt"
    export(load_checkpoint(checkpoint), root / "exported")  # what a user exports by hand
    request = root / "request.json"
    request.write_text(json.dumps({"checkpoint": str(checkpoint), "task": TASK,
                                   "task_dir": str(tasks), "exported": str(root / "exported")}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    result = run_isolated(["lm_eval[hf]>=0.4.9,<0.5"],
                          REPO / "tests/evaluation/benchmarks_check.py", str(request), cwd=root,
                          env=env, with_project=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_benchmarks_score_equals_the_harness_on_the_folder_exported_by_hand(harness_run):
    scores = json.loads(harness_run["json"])
    assert scores["model_kind"] == "our checkpoint, exported to transformers"
    metrics = scores["tasks"][TASK]["metrics"]
    for metric in ("acc", "acc_norm"):
        assert metrics[metric]["value"] == harness_run["by_hand"][f"{metric},none"]
    assert 0 < metrics["acc"]["value"] < 1  # the equality above is not one of two trivial cases
    lines = harness_run["table"].splitlines()
    assert "| task | metric | this model | GPT-2 small | GPT-2 medium | TinyLlama-1.1B |" in lines
    row = next(line for line in lines if line.startswith(f"| {TASK} | acc |"))
    assert f"{metrics['acc']['value']:.4f} ± {metrics['acc']['stderr']:.4f}" in row


def test_an_unknown_task_is_one_line_with_the_near_names(harness_run):
    message = harness_run["unknown_task"]
    assert message.startswith(f"unknown task '{TASK}x' (did you mean {TASK}")


def measured(n_shot: int) -> dict:
    return {"hellaswag": {"n_shot": n_shot, "metrics": {
                "acc": {"value": 0.28, "stderr": 0.004},
                "acc_norm": {"value": 0.2951, "stderr": 0.0045}}},
            "lambada_openai": {"n_shot": n_shot, "metrics": {
                "perplexity": {"value": 40.0553, "stderr": 1.48},
                "acc": {"value": 0.3256, "stderr": 0.0065}}}}


def test_published_figures_stand_beside_a_zero_shot_run_with_their_sources():
    table = render_table(measured(0)).splitlines()
    assert "| hellaswag | acc_norm | 0.2951 ± 0.0045 |  |  | 0.5920 |" in table
    assert "| hellaswag | acc | 0.2800 ± 0.0040 |  |  |  |" in table  # none published for acc
    assert "| lambada_openai | perplexity | 40.06 ± 1.48 | 35.13 † | 15.60 † |  |" in table
    notes = footnotes(measured(0))
    assert SOURCES["tinyllama"] in notes[0] and SOURCES["gpt2"] in notes[1]
    assert any("†" in note for note in notes)
    five_shot = render_table(measured(5))
    assert "0.5920" not in five_shot and "35.13" not in five_shot
    assert any("0-shot" in note for note in footnotes(measured(5)))
    assert all(task in {"hellaswag", "arc_easy", "arc_challenge", "piqa", "winogrande",
                        "lambada_openai"} for task, _ in PUBLISHED)


def test_a_missing_harness_is_one_line_naming_the_extra(quickstart, monkeypatch, capsys):
    out_dir, _ = quickstart
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as where the extra is not installed
    with pytest.raises(SystemExit) as exit_info:
        run_main(lambda: benchmarks.main([str(out_dir / "best_model.pt")]))
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(lines) == 1
    assert "uv sync --extra eval" in lines[0]
