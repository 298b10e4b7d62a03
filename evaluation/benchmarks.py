"""The standard suite in one command: EleutherAI's lm-evaluation-harness on a checkpoint of ours
(exported on the fly to a transformers folder, as convert_to_hf.py would) or on a transformers
folder, printed as one table beside published figures.

    uv sync --extra eval        # lm-evaluation-harness, once
    python evaluation/benchmarks.py out/gpt2/best_model.pt
    python evaluation/benchmarks.py out/hf-tiny --tasks hellaswag,piqa --limit 500 --json

The harness scores the folder as the stock `hf` model (`lm_eval --model hf --model_args
pretrained=FOLDER`): the same prompts, metrics and tokenization as published harness figures.
The published figures beside ours (PUBLISHED, sources in SOURCES and evaluation/README.md) are
0-shot; they are shown only for a 0-shot run, and a figure measured under another protocol is
marked with a dagger.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_setup.cli import (
    ArgumentParser,
    UserError,
    nonnegative_int,
    positive_float,
    run_main,
)

# torch, transformers and lm_eval are imported where they are used: --help answers at once.

DEFAULT_TASKS = "hellaswag,arc_easy,arc_challenge,piqa,winogrande,lambada_openai"
INSTALL = "uv sync --extra eval"
REFERENCE_MODELS = ("GPT-2 small", "GPT-2 medium", "TinyLlama-1.1B")


@dataclass(frozen=True)
class Published:
    value: float
    source: str  # a key of SOURCES
    same_protocol: bool = True  # False: another protocol than the harness's (marked †)


SOURCES = {
    "tinyllama": "TinyLlama-1.1B-intermediate-step-1431k-3T (3T tokens): Zhang et al. 2024, "
                 "TinyLlama: An Open-Source Small Language Model, Table 2; the model card's "
                 "Eval table; github.com/jzhang38/TinyLlama EVAL.md (lm-evaluation-harness, "
                 "0-shot, acc_norm where the task has it)",
    "gpt2": "Radford et al. 2019, Language Models are Unsupervised Multitask Learners, Table 3 "
            "(117M and 345M), repeated in the openai-community/gpt2 and gpt2-medium model "
            "cards: OpenAI's LAMBADA test set (the harness's lambada_openai data), but scored "
            "with the paper's own detokenizer and, for accuracy, a stop-word filter: not the "
            "harness's protocol",
}

# (task, metric) -> reference model -> figure, as a fraction (perplexity as it is).
PUBLISHED: dict[tuple[str, str], dict[str, Published]] = {
    ("hellaswag", "acc_norm"): {"TinyLlama-1.1B": Published(0.5920, "tinyllama")},
    ("arc_easy", "acc_norm"): {"TinyLlama-1.1B": Published(0.5525, "tinyllama")},
    ("arc_challenge", "acc_norm"): {"TinyLlama-1.1B": Published(0.3012, "tinyllama")},
    ("piqa", "acc_norm"): {"TinyLlama-1.1B": Published(0.7329, "tinyllama")},
    ("winogrande", "acc"): {"TinyLlama-1.1B": Published(0.5912, "tinyllama")},
    ("lambada_openai", "acc"): {"GPT-2 small": Published(0.4599, "gpt2", False),
                                "GPT-2 medium": Published(0.5548, "gpt2", False)},
    ("lambada_openai", "perplexity"): {"GPT-2 small": Published(35.13, "gpt2", False),
                                       "GPT-2 medium": Published(15.60, "gpt2", False)},
}


def batch_size(text: str) -> str:
    """--batch_size: a positive number, or auto (the harness's own search)."""
    if text == "auto" or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}")


def model_source(path: str) -> tuple[Path | None, dict[str, Any] | None]:
    """(a transformers folder, None) or (None, our checkpoint): anything else is refused in one
    line, before the harness is imported or anything is exported."""
    from models.checkpoint import CheckpointError, load_checkpoint

    given = Path(path)
    if given.is_dir():
        if not (given / "config.json").is_file():
            raise UserError(f"{path} is a folder without config.json: neither a checkpoint of "
                            "this project (.pt) nor a transformers model folder")
        return given, None
    try:  # mapped, not read: a 1b latest.pt holds ~13 GB, mostly optimizer state never used
        return None, load_checkpoint(given, mmap=True)
    except CheckpointError as err:
        raise UserError(f"{err}; benchmarks.py takes a checkpoint of this project or a "
                        "transformers model folder") from None


def model_folder(folder: Path | None, ckpt: dict[str, Any] | None, workspace: Path
                 ) -> tuple[Path, str]:
    """The folder to hand the harness, and what it is: our checkpoint is exported first, as
    hugging_face/convert_to_hf.py exports it."""
    if folder is not None:
        return folder, "transformers folder"
    from hugging_face.convert_to_hf import export

    export(ckpt, workspace / "model")
    return workspace / "model", "our checkpoint, exported to transformers"


def harness() -> Any:
    try:
        import lm_eval
    except ImportError:
        raise UserError("lm-evaluation-harness is not installed; add it with "
                        f"`{INSTALL}`") from None
    return lm_eval


def task_manager(include_path: str | None, tasks: list[str]) -> Any:
    """The harness's tasks (and those of --include_path); an unknown name is refused."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not Path(include_path).is_dir():
        raise UserError(f"--include_path {include_path}: folder not found")
    manager = TaskManager(include_path=include_path)
    for task in tasks:
        if task not in manager.all_tasks:
            close = difflib.get_close_matches(task, manager.all_tasks, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else \
                " (the harness's task names: `lm_eval ls tasks`)"
            raise UserError(f"unknown task {task!r}{hint}")
    return manager


def run(folder: Path, tasks: list[str], manager: Any, args: Any) -> dict[str, Any]:
    """The harness's own evaluation of the folder as an `hf` model."""
    from lm_eval import simple_evaluate

    from models.device import dtype_name, resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[
        dtype_name(resolve_dtype(args.dtype, device))]
    limit = int(args.limit) if args.limit and args.limit >= 1 else args.limit
    return simple_evaluate(model="hf", model_args={"pretrained": str(folder), "dtype": dtype},
                           tasks=tasks, num_fewshot=args.num_fewshot, limit=limit,
                           batch_size=args.batch_size, device=str(device),
                           task_manager=manager, log_samples=False)


def scores(results: dict[str, Any], tasks: list[str]) -> dict[str, dict[str, Any]]:
    """Per task the harness scored (a group or tag named in --tasks is its tasks): its metrics
    (value and standard error) and its number of shots."""
    out = {}
    for task, raw in results["results"].items():
        metrics = {}
        for key, value in raw.items():
            name, _, filtered = key.partition(",")
            if not filtered or name.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            stderr = raw.get(f"{name}_stderr,{filtered}")
            metrics[name] = {"value": value,
                             "stderr": stderr if isinstance(stderr, (int, float)) else None}
        out[task] = {"n_shot": results.get("n-shot", {}).get(task), "metrics": metrics}
    return out


def published_for(task: str, metric: str, n_shot: int | None) -> dict[str, Published]:
    """The published figures a (task, metric) can stand beside: all of them are 0-shot."""
    return PUBLISHED.get((task, metric), {}) if not n_shot else {}


def with_published(measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The measured scores, each task with the published figures beside its metrics."""
    out = {}
    for task, result in measured.items():
        published = {f"{name}/{metric}": {"value": p.value, "source": SOURCES[p.source],
                                          "same_protocol": p.same_protocol}
                     for metric in result["metrics"]
                     for name, p in published_for(task, metric, result["n_shot"]).items()}
        out[task] = {**result, "published": published}
    return out


def figure(value: float, metric: str) -> str:
    return f"{value:.2f}" if metric == "perplexity" else f"{value:.4f}"


def render_table(measured: dict[str, dict[str, Any]]) -> str:
    header = ["task", "metric", "this model", *REFERENCE_MODELS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task, result in measured.items():
        for metric, m in result["metrics"].items():
            value = figure(m["value"], metric)
            if m["stderr"] is not None:
                value += f" ± {figure(m['stderr'], metric)}"
            refs = published_for(task, metric, result["n_shot"])
            cells = [figure(refs[r].value, metric) + ("" if refs[r].same_protocol else " †")
                     if r in refs else "" for r in REFERENCE_MODELS]
            lines.append(f"| {task} | {metric} | {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def footnotes(measured: dict[str, dict[str, Any]]) -> list[str]:
    used = {p.source for task, result in measured.items() for metric in result["metrics"]
            for p in published_for(task, metric, result["n_shot"]).values()}
    notes = [f"- {SOURCES[key]}" for key in SOURCES if key in used]
    if any(result["n_shot"] for result in measured.values()):
        notes.append("- published figures are 0-shot: run without --num_fewshot to see them")
    if used & {"gpt2"}:
        notes.append("- †: measured under another protocol than the harness's; a guide, not a "
                     "like-for-like comparison")
    return notes


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="lm-evaluation-harness on a checkpoint of ours or a "
                            "transformers folder, in one table beside published figures "
                            f"(needs `{INSTALL}`).")
    parser.add_argument("checkpoint", help="a .pt checkpoint of ours or a transformers folder")
    parser.add_argument("--tasks", default=DEFAULT_TASKS,
                        help=f"comma-separated harness task names (default: {DEFAULT_TASKS})")
    parser.add_argument("--num_fewshot", type=nonnegative_int, default=None,
                        help="examples in each prompt (default: each task's own, 0 for these)")
    parser.add_argument("--limit", type=positive_float, default=None,
                        help="score the first N documents of each task (below 1: a fraction)")
    parser.add_argument("--include_path", default=None,
                        help="a folder of task YAML files of your own (e.g. on local data)")
    parser.add_argument("--batch_size", type=batch_size, default="8",
                        help="per forward pass, or auto")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    parser.add_argument("--dtype", default="auto", help="auto (bf16 on GPUs) | bf16 | fp16 | fp32")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    args = parser.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise UserError("--tasks names no task")
    folder, ckpt = model_source(args.checkpoint)  # mapped: cheap to check first
    lm_eval = harness()
    manager = task_manager(args.include_path, tasks)
    with tempfile.TemporaryDirectory(prefix="benchmarks-") as workspace:
        folder, kind = model_folder(folder, ckpt, Path(workspace))
        del ckpt  # exported: the harness loads the folder
        measured = scores(run(folder, tasks, manager, args), tasks)
    if args.json:
        print(json.dumps({"model": args.checkpoint, "model_kind": kind,
                          "lm_eval_version": lm_eval.__version__, "limit": args.limit,
                          "tasks": with_published(measured)}))
        return
    limited = f", first {args.limit:g} documents per task" if args.limit else ""
    print(f"lm-evaluation-harness {lm_eval.__version__} on {args.checkpoint} ({kind}"
          f"{limited})\n")
    print(render_table(measured))
    notes = footnotes(measured)
    if notes:
        print("\nPublished figures:\n" + "\n".join(notes))


if __name__ == "__main__":
    run_main(main)
