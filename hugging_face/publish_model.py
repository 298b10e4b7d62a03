"""Publish an exported model folder to the Hugging Face Hub.

    python hugging_face/publish_model.py --model_dir out/hf-tiny --repo_id you/tiny-gpt --dry_run
    python hugging_face/publish_model.py --model_dir out/hf-tiny --repo_id you/tiny-gpt [--private]

Authentication is huggingface_hub's: a cached `hf auth login`, or the HF_TOKEN environment
variable. The token is never printed or logged, even in error messages. --dry_run checks that
the folder loads with transformers and lists what would be uploaded, without any network.
"""

from __future__ import annotations

import os
from pathlib import Path

from transformer_setup.cli import ArgumentParser, UserError, run_main

REQUIRED = ("config.json", "tokenizer.json", "README.md")


def files_to_upload(folder: Path) -> list[tuple[str, int]]:
    return [(str(p.relative_to(folder)), p.stat().st_size)
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


def publish(folder: Path, repo_id: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi()  # picks up HF_TOKEN or the cached login itself; we never read it out
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                                   commit_message="Upload model trained with gpt-pretrain")
    except Exception as err:  # network, auth, permissions: one line, token-free
        reason = redact(str(err).splitlines()[0][:200] if str(err) else type(err).__name__)
        raise UserError(f"upload to {repo_id} failed: {reason}") from None
    return commit.commit_url if hasattr(commit, "commit_url") else str(commit)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description="Upload an exported model folder to the Hub.")
    parser.add_argument("--model_dir", required=True, help="a folder from convert_to_hf.py")
    parser.add_argument("--repo_id", required=True, help="USER/NAME or ORG/NAME")
    parser.add_argument("--private", action="store_true")
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
    visibility = "private" if args.private else "public"
    print(f"{folder} loads as {cls}; {len(files)} files, {total / 1e6:,.1f} MB "
          f"-> {args.repo_id} ({visibility})")
    for name, size in files:
        print(f"  {name:<40} {size:>14,} bytes")
    if args.dry_run:
        print("dry run: nothing uploaded")
        return
    print(f"uploaded: {publish(folder, args.repo_id, args.private)}")


if __name__ == "__main__":
    run_main(main)
