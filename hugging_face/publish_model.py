"""Publish an exported model folder to the Hugging Face Hub.

    python hugging_face/publish_model.py --model_dir out/hf-tiny --repo_id you/tiny-gpt --dry_run
    python hugging_face/publish_model.py --model_dir out/hf-tiny --repo_id you/tiny-gpt [--private]

Authentication is huggingface_hub's: a cached `hf auth login`, or the HF_TOKEN environment
variable. The token is never printed or logged, even in error messages. --dry_run checks that
the folder loads with transformers and lists what would be uploaded, without any network.

One commit uploads the folder and deletes the repo's files of an earlier export that this one
does not have (an old model.safetensors beside new shards would be loaded instead of them); other
files in the repo stay. --private or --public sets the repo's visibility before anything is
uploaded, an existing repo included; with neither, a new repo gets the account's default and an
existing one keeps its own. The card's snippet names the repo.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hugging_face.convert_to_hf import REPO_PLACEHOLDER, is_export_file
from transformer_setup.cli import ArgumentParser, UserError, run_main

REQUIRED = ("config.json", "tokenizer.json", "README.md")


def files_to_upload(folder: Path) -> list[tuple[str, int]]:
    return [(p.relative_to(folder).as_posix(), p.stat().st_size)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")]


def check_loads(folder: Path) -> str:
    """Load config, tokenizer and weights as a user of the Hub would; returns the class name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    missing = [name for name in REQUIRED if not (folder / name).exists()]
    if missing:
        raise UserError(f"{folder} is not an exported model folder (missing "
                        f"{', '.join(missing)}); write one with hugging_face/convert_to_hf.py")
    try:
        AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise UserError(f"{folder} does not load with transformers "
                        f"({str(err).splitlines()[0][:160]})") from None
    return type(model).__name__


def redact(message: str) -> str:
    token = os.environ.get("HF_TOKEN")
    return message.replace(token, "***") if token else message


def card_for(folder: Path, repo_id: str) -> bytes:
    """The model card with the repo id in its snippet."""
    return (folder / "README.md").read_text(encoding="utf-8").replace(
        REPO_PLACEHOLDER, repo_id).encode("utf-8")


def set_visibility(api: Any, repo_id: str, private: bool | None) -> str:
    """Make an existing repo private or public as asked (create_repo leaves an existing repo's
    visibility alone); returns a few words on what was done."""
    if private is None:
        return ""
    if api.repo_info(repo_id, repo_type="model").private == private:
        return ""
    api.update_repo_settings(repo_id, private=private, repo_type="model")
    return f"; made {repo_id} {'private' if private else 'public'}"


def publish(folder: Path, repo_id: str, private: bool | None) -> str:
    """Create the repo (or reuse it), set its visibility, then upload in one commit."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()  # picks up HF_TOKEN or the cached login itself; we never read it out
    local = [name for name, _ in files_to_upload(folder)]
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        done = set_visibility(api, repo_id, private)
        stale = [name for name in api.list_repo_files(repo_id, repo_type="model")
                 if "/" not in name and is_export_file(name) and name not in local]
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=card_for(
                          folder, repo_id) if name == "README.md" else str(folder / name))
                      for name in local]
        operations += [CommitOperationDelete(path_in_repo=name) for name in stale]
        commit = api.create_commit(repo_id, operations, repo_type="model",
                                   commit_message="Upload model trained with gpt-pretrain")
    except Exception as err:  # network, auth, permissions: one line, token-free
        reason = redact(str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        raise UserError(f"upload to {repo_id} failed: {reason}") from None
    url = commit.commit_url if hasattr(commit, "commit_url") else str(commit)
    removed = f"; removed {', '.join(stale)} of an earlier export" if stale else ""
    return f"{url}{done}{removed}"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Upload an exported model folder to the Hub.")
    parser.add_argument("--model_dir", required=True, help="a folder from convert_to_hf.py")
    parser.add_argument("--repo_id", required=True, help="USER/NAME or ORG/NAME")
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument("--private", dest="private", action="store_const", const=True,
                            help="make the repo private (an existing one too)")
    visibility.add_argument("--public", dest="private", action="store_const", const=False,
                            help="make the repo public (an existing one too)")
    parser.add_argument("--dry_run", action="store_true",
                        help="check and list the files; upload nothing, no network")
    args = parser.parse_args(argv)
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        parser.error("--repo_id must look like USER/NAME")
    folder = Path(args.model_dir)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    cls = check_loads(folder)
    files = files_to_upload(folder)
    total = sum(size for _, size in files)
    visibility_text = {True: "private", False: "public",
                       None: "visibility: a new repo the account's default, an existing one "
                             "unchanged"}[args.private]
    print(f"{folder} loads as {cls}; {len(files)} files, {total / 1e6:,.1f} MB "
          f"-> {args.repo_id} ({visibility_text})")
    for name, size in files:
        print(f"  {name:<40} {size:>14,} bytes")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    print(f"uploaded: {publish(folder, args.repo_id, args.private)}")


if __name__ == "__main__":
    run_main(main)
