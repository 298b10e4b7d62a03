"""Run by tests/evaluation/test_evaluation.py inside an isolated environment holding
lm-evaluation-harness (tests/helpers.py, run_isolated): what the harness itself makes of a few
HellaSwag rows, of given log-likelihoods, of an exported model, and of WikiText text; printed as
one JSON line.

    python harness_check.py REQUEST.json
"""

import json
import sys
from pathlib import Path

print("isolated environment started", flush=True)  # tests/helpers.py ENV_STARTED

import lm_eval  # noqa: E402
from lm_eval import simple_evaluate  # noqa: E402
from lm_eval.tasks import TaskManager, get_task_dict  # noqa: E402
from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer  # noqa: E402

request = json.loads(Path(sys.argv[1]).read_text())
folder = Path(request["task_dir"])
# The harness's own hellaswag task, read from a local file instead of the Hub.
harness_yaml = Path(lm_eval.__file__).parent / "tasks" / "hellaswag" / "hellaswag.yaml"
(folder / "hellaswag_local.yaml").write_text(
    f"include: {harness_yaml}\n"
    "task: hellaswag_local\n"
    "tag: []\n"
    "training_split: null\n"
    "dataset_path: json\n"
    "dataset_name: null\n"
    f"dataset_kwargs:\n  data_files:\n    validation: {request['data_file']}\n")
manager = TaskManager(include_path=str(folder))
task = get_task_dict(["hellaswag_local"], manager)["hellaswag_local"]
docs = list(task.validation_docs())

result = {
    "version": lm_eval.__version__,
    "docs": [{"query": task.doc_to_text(d), "choices": task.doc_to_choice(d),
              "label": task.doc_to_target(d)} for d in docs],
    "judged": [task.process_results(docs[i], [(ll, False) for ll in lls])
               for i, lls in request["log_likelihoods"]],
    "detokenized": wikitext_detokenizer({"page": request["wikitext"]}),
}
run = simple_evaluate(model="hf", model_args=f"pretrained={request['model']},dtype=float32",
                      tasks=["hellaswag_local"], task_manager=manager, device="cpu",
                      batch_size=4, log_samples=True)
samples = sorted(run["samples"]["hellaswag_local"], key=lambda s: s["doc_id"])
result["samples"] = [{"acc": s["acc"], "acc_norm": s["acc_norm"],
                      "log_likelihoods": [float(r[0]) for r in s["filtered_resps"]]}
                     for s in samples]
result["scores"] = {k: v for k, v in run["results"]["hellaswag_local"].items()
                    if k in ("acc,none", "acc_norm,none")}
print(json.dumps(result))
