"""The house: imports flow one way between folders, entry scripts sit on top, functions in
models/ stay short, and every entry script's --help answers without torch or transformers."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys

import pytest

from tests.helpers import REPO

FOLDERS = ("transformer_setup", "tokenization", "data", "models", "evaluation", "hugging_face",
           "scripts")
ENTRY_SCRIPTS = ["models/gpt.py", "models/inference.py", "evaluation/eval_perplexity.py",
                 "evaluation/hellaswag.py", "hugging_face/convert_to_hf.py",
                 "hugging_face/convert_from_hf.py", "hugging_face/publish_model.py",
                 "tokenization/train_tokenizer.py", "data/prepare.py", "scripts/benchmark.py",
                 "scripts/plot_training.py", "scripts/gpu_suite.py",
                 "scripts/compare_optimizers.py", "evaluation/benchmarks.py",
                 "scripts/report.py"]


def modules() -> dict[str, ast.Module]:
    return {str(path.relative_to(REPO)): ast.parse(path.read_text())
            for folder in FOLDERS for path in sorted((REPO / folder).rglob("*.py"))}


def is_entry(tree: ast.Module) -> bool:
    """A script run from the command line: `if __name__ == "__main__":` at the bottom."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)
               for node in tree.body)


def imported_modules(tree: ast.Module) -> set[str]:
    """Every project module a file imports, at any depth (function-level imports too)."""
    found = set()
    for node in ast.walk(tree):
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        found |= {name for name in names if name.split(".")[0] in FOLDERS}
    return found


def module_path(name: str) -> str:
    path = name.replace(".", "/")
    return path + ".py" if (REPO / f"{path}.py").exists() else f"{path}/__init__.py"


def test_library_imports_flow_one_way_and_never_into_entry_scripts():
    trees = modules()
    entries = {path for path, tree in trees.items() if is_entry(tree)}
    graph: dict[str, set[str]] = {folder: set() for folder in FOLDERS}
    for path, tree in trees.items():
        if path in entries:
            continue  # scripts sit on top and may use any library module
        for name in imported_modules(tree):
            assert module_path(name) not in entries, f"{path} imports the entry script {name}"
            if name.split(".")[0] != path.split("/")[0]:
                graph[path.split("/")[0]].add(name.split(".")[0])

    def cycle_from(folder: str, trail: list[str]) -> list[str] | None:
        if folder in trail:
            return trail[trail.index(folder):] + [folder]
        for target in graph[folder]:
            found = cycle_from(target, trail + [folder])
            if found:
                return found
        return None

    for folder in FOLDERS:
        assert cycle_from(folder, []) is None, " -> ".join(cycle_from(folder, []))
    assert graph["transformer_setup"] == set()  # the ground floor imports nothing above it
    assert set(ENTRY_SCRIPTS) <= entries


def test_functions_in_models_read_in_short_pieces():
    for path, tree in modules().items():
        if not path.startswith("models/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 80, f"{path}:{node.lineno} {node.name} is {length} lines"


@pytest.mark.parametrize("script", ENTRY_SCRIPTS)
def test_help_answers_without_torch_or_transformers(script):
    probe = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
             f"try:\n    runpy.run_path({str(REPO / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('HEAVY', sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120)
    assert "usage:" in result.stdout, result.stderr
    assert "HEAVY []" in result.stdout, result.stdout.splitlines()[-1]


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv not on PATH")
def test_a_plain_uv_run_compiles_nothing():
    result = subprocess.run(["uv", "run", "python", "-c", "print('ok')"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "ok", result.stderr
    assert "Bytecode compiled" not in result.stderr
