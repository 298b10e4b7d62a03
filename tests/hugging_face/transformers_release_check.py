"""Run by tests/hugging_face/test_export_import.py inside an isolated environment holding another
transformers release (tests/helpers.py, run_isolated): loads exported folders and imports configs
as that release does, and prints what it saw as one JSON line.

    python transformers_release_check.py REQUEST.json      # PYTHONPATH=the repository, for imports
"""

import json
import sys
import tempfile
from pathlib import Path

print("isolated environment started", flush=True)  # tests/helpers.py ENV_STARTED

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer  # noqa: E402


def load_folder(folder: str, text: str, ids: list[int]) -> dict:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    seen = {"tokenizer_class": type(tokenizer).__name__, "ids": tokenizer(text)["input_ids"],
            "pad_token": tokenizer.pad_token,
            "padded": tokenizer([text[:5], text[:9]], padding=True)["attention_mask"]}
    if not (Path(folder) / "config.json").exists():
        return seen  # a tokenizer folder only
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return {**seen, "class": type(model).__name__, "logits": logits.tolist(),
            "rope_theta": getattr(config, "rope_theta", None)}


def import_config(fields: dict) -> str:
    from transformer_setup.hf_weights import from_hf_config
    from transformer_setup.params import ConfigError

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(json.dumps(fields))
        try:
            config = from_hf_config(AutoConfig.from_pretrained(folder))
        except ConfigError as err:
            return f"refused: {err}"
    return f"accepted: rope_theta={config.rope_theta}"


request = json.loads(Path(sys.argv[1]).read_text())
print(json.dumps({
    "version": transformers.__version__,
    "folders": {name: load_folder(folder, request["text"], request["ids"])
                for name, folder in request.get("folders", {}).items()},
    "imports": {name: import_config(fields)
                for name, fields in request.get("imports", {}).items()},
}))
