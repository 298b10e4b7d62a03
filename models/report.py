"""A report per run: OUT_DIR/report.md, with the loss and bits-per-byte curves in report.png
beside it, rebuilt from what the run leaves in its folder: train.log (the record), the
TensorBoard event files (when each session ended) and the checkpoints. The trainer rewrites it
at each evaluation and at the end; `python scripts/report.py OUT_DIR` writes the same file from
the folder alone, during the run or after it.

The trainer writes the lines read here; the two this module adds to the log's head are made
here too (`run_line`: start time, commit and command; `hardware_line`), so the format and its
parser sit side by side. A resumed run appends to the same log: a `resumed from ... at step S`
line drops what the log holds past S (a roll back), as TensorBoard's purge does.
"""

from __future__ import annotations

import ast
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformer_setup.cli import UserError
from transformer_setup.params import DEFAULT_PRESET, PRESETS, build_configs

if TYPE_CHECKING:
    import torch

REPORT, PLOT, LOG = "report.md", "report.png", "train.log"
REPO = Path(__file__).resolve().parents[1]
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"

# ----------------------------------------------------------------------------- log head

def commit() -> str:
    """This code's git commit, with a mark when files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{sha} (with uncommitted changes)" if changed else sha


def command_line() -> str:
    """This process's command, as torchrun's when torchrun started it."""
    local, world = os.environ.get("LOCAL_WORLD_SIZE"), int(os.environ.get("WORLD_SIZE", "1"))
    if local and world > 1:  # torchrun sets these; the per-node count gives the node count
        launcher = ["torchrun", "--nnodes", str(world // int(local)), "--nproc_per_node", local]
        return shlex.join([*launcher, *sys.argv])
    return shlex.join([Path(sys.executable).name, *sys.argv])


def run_line() -> str:
    """When, from which commit and with which command this invocation started."""
    return (f"run: started {time.strftime(TIME_FORMAT)} | commit {commit()} | command: "
            f"{command_line()}")


def hardware_line(device: torch.device, world_size: int) -> str:
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
        software = f"torch {torch.__version__}, CUDA {torch.version.cuda}"
    else:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        what = f"{device.type} ({os.cpu_count()} cores, {memory:.0f} GiB memory)"
        software = f"torch {torch.__version__}"
    return f"hardware: {world_size} x {what}; {software}"


# ----------------------------------------------------------------------------- reading the log

STEP = re.compile(r"^step (\d+)/(\d+) \| loss ([\d.naif]+) \| lr ([\d.e+-]+) \| grad norm "
                  r"([\d.naif]+)(?: \| ([\d,]+) tok/s \| (\d+) ms/step)?"
                  r"(?: \| MFU ([\d.]+)% \| HFU ([\d.]+)%)?")
EVAL = re.compile(r"^step (\d+): val loss ([\d.naif]+) \| val bits/byte ([\d.naif]+)"
                  r"(?: \| hellaswag acc_norm ([\d.]+) \(([\d,]+) examples(?:, ([\d.]+) s)?\))?")
RUN = re.compile(r"^run: started (\S+ \S+) \| commit (.+?) \| command: (.*)$")
DEVICE = re.compile(r"^device: (\S+) x (\d+) process\(es\), dtype (\w+), ([\d,]+) tokens per step")
RESUMED = re.compile(r"^resumed from (.+?) at step (\d+)")
DONE = re.compile(r"^done: (\d+) steps .*?, ([\d,]+) tokens")


@dataclass
class Session:
    """One invocation of the trainer (the first run, or a resume)."""

    started: datetime | None = None
    commit: str = "unknown"
    command: str = "unknown (logged before run lines were written)"
    hardware: str = ""
    device: str = ""
    world_size: int = 1
    dtype: str = ""
    tokens_per_step: int = 0
    model: str = ""
    training: str = ""
    data: str = ""
    resumed_at: int | None = None


@dataclass
class Record:
    sessions: list[Session] = field(default_factory=list)
    steps: dict[int, dict[str, float]] = field(default_factory=dict)  # logged training steps
    evals: dict[int, dict[str, float]] = field(default_factory=dict)
    samples: dict[int, str] = field(default_factory=dict)
    max_iters: int = 0
    hellaswag: str = ""  # which examples, as the trainer logged it
    warnings: list[str] = field(default_factory=list)
    end: str = ""  # the last session's `done:` line, if it wrote one
    stopped: bool = False  # the last session stopped on a request (Ctrl-C, preemption)
    resuming: int | None = None  # a `resumed from` line read, its session not begun yet

    @property
    def session(self) -> Session:
        if not self.sessions:
            self.sessions.append(Session())
        return self.sessions[-1]

    def forget_after(self, step: int) -> None:
        """A resume from `step`: what the log holds past it was trained on another branch."""
        for series in (self.steps, self.evals, self.samples):
            for s in [s for s in series if s > step]:
                del series[s]


def number(text: str | None) -> float | None:
    return None if text is None else float(text.replace(",", ""))


def read_log(path: Path) -> Record:
    record, last_eval = Record(), None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if m := STEP.match(line):
            step = int(m[1])
            record.max_iters = int(m[2])
            names = ("loss", "lr", "grad_norm", "tokens_per_sec", "ms_per_step", "mfu", "hfu")
            record.steps[step] = {k: number(v) for k, v in zip(names, m.groups()[2:])
                                  if v is not None}
        elif m := EVAL.match(line):
            last_eval = int(m[1])
            values = {"val_loss": number(m[2]), "val_bpb": number(m[3])}
            if m[4] is not None:
                values.update(hellaswag=number(m[4]), hellaswag_examples=number(m[5]),
                              hellaswag_seconds=number(m[6]))
            record.evals[last_eval] = values
        elif line.startswith("sample: ") and last_eval is not None:
            try:
                record.samples[last_eval] = ast.literal_eval(line[len("sample: "):])
            except (ValueError, SyntaxError):
                record.samples[last_eval] = line[len("sample: "):]
        else:
            read_other(line, record)
    return record


def read_other(line: str, record: Record) -> None:
    """The lines that describe a session, and the events worth a mention."""
    if m := RUN.match(line):  # a session's first header line (logged after `resumed from`)
        record.sessions.append(Session(datetime.strptime(m[1], TIME_FORMAT), m[2], m[3],
                                       resumed_at=record.resuming))
        record.end, record.stopped, record.resuming = "", False, None
    elif m := RESUMED.match(line):
        record.forget_after(int(m[2]))
        record.resuming = int(m[2])
    elif line.startswith("model: "):
        if not record.sessions or record.session.model:  # a log written before run lines
            record.sessions.append(Session(resumed_at=record.resuming))
            record.end, record.stopped, record.resuming = "", False, None
        record.session.model = line[len("model: "):]
    elif m := DEVICE.match(line):
        s = record.session
        s.device, s.world_size, s.dtype = m[1], int(m[2]), m[3]
        s.tokens_per_step = int(m[4].replace(",", ""))
    elif line.startswith(("hardware: ", "training: ", "data: ")):
        key, _, value = line.partition(": ")
        setattr(record.session, key, value)
    elif line.startswith("hellaswag: "):
        record.hellaswag = line[len("hellaswag: "):]
    elif line.startswith("warning: "):
        record.warnings.append(line[len("warning: "):])
    elif line.startswith("stopped at step "):
        record.stopped = True
    elif line.startswith("done: "):
        record.end = line


def config_values(logged: str) -> dict[str, Any]:
    """The fields of a logged `ModelConfig(...)` or `TrainConfig(...)`."""
    start = logged.find("Config(")
    if start < 0:
        return {}
    start = logged.rfind(" ", 0, start) + 1
    try:
        call = ast.parse(logged[start:], mode="eval").body
        return {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError, AttributeError):
        return {}


# ----------------------------------------------------------------------------- the run's facts

def preset_of(command: str) -> str:
    """The preset a command named (the flagship when none)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return DEFAULT_PRESET
    for i, word in enumerate(words):
        if word == "--preset" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--preset="):
            return word.split("=", 1)[1]
    return DEFAULT_PRESET


def changes_from_preset(preset: str, model: dict[str, Any], training: dict[str, Any]
                        ) -> list[tuple[str, Any, Any]]:
    """(field, the preset's value, this run's) for every field that differs."""
    if preset not in PRESETS:
        return []
    base_model, base_train = build_configs(preset)
    base = {**vars(base_model), **vars(base_train)}
    from models.resume import ONE_INVOCATION

    how_it_was_started = {"resume", *ONE_INVOCATION}  # not a value of the run
    return [(k, base[k], v) for k, v in {**model, **training}.items()
            if k in base and base[k] != v and k not in how_it_was_started]


def session_seconds(record: Record, out_dir: Path) -> list[float | None]:
    """How long each session ran: from its start to its last write, which is the log's for the
    last session and its TensorBoard event file's (flushed at least every two minutes, and at
    the end) for the earlier ones; None where neither is known."""
    events = sorted((int(p.name.split(".")[3]), p.stat().st_mtime)
                    for p in out_dir.glob("events.out.tfevents.*")
                    if p.name.split(".")[3].isdigit())
    starts = [s.started.timestamp() if s.started else None for s in record.sessions]
    spans: list[float | None] = []
    for i, start in enumerate(starts):
        if start is None:
            spans.append(None)
            continue
        if i == len(starts) - 1:
            end = (out_dir / LOG).stat().st_mtime
        else:
            following = starts[i + 1] or math.inf
            ends = [mtime for created, mtime in events if start - 1 <= created < following]
            end = max(ends) if ends else None
        spans.append(None if end is None else max(end - start, 0.0))
    return spans


@dataclass
class CheckpointInfo:
    name: str
    step: int | None
    size: int
    note: str = ""


def checkpoints(out_dir: Path) -> tuple[list[CheckpointInfo], dict[str, Any] | None]:
    """The run's checkpoint files, and latest.pt's (tokens seen, data position) when readable.
    Tensors are mapped, not read: cheap at any model size."""
    import torch

    from data.loader import epochs_read

    infos, latest = [], None
    for path in sorted(out_dir.glob("*.pt")):
        try:  # only plain values and tensors, as models/checkpoint.py loads them
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # noqa: BLE001 (torch.load fails in many ways on a bad file)
            ckpt = None
        if not isinstance(ckpt, dict):
            infos.append(CheckpointInfo(path.name, None, path.stat().st_size, "not readable"))
            continue
        note = ""
        if path.name == "best_model.pt" and math.isfinite(ckpt.get("best_val_loss", math.nan)):
            note = f"best validation loss {ckpt['best_val_loss']:.4f}"
        if path.name == "latest.pt":
            epochs = epochs_read(ckpt.get("data", {}))
            latest = {"tokens_seen": ckpt.get("tokens_seen"), "epochs": epochs,
                      "data": ckpt.get("data", {})}
            note = "weights, optimizer and data position: `--resume` continues from it"
        infos.append(CheckpointInfo(path.name, ckpt.get("step"), path.stat().st_size, note))
        del ckpt
    return infos, latest


# ----------------------------------------------------------------------------- the plot

def plot(record: Record, output: Path) -> bool:
    """Loss and bits per byte against steps (and HellaSwag when measured); False if nothing
    has been logged yet."""
    if not record.steps and not record.evals:
        return False
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    hellaswag = {s: e["hellaswag"] for s, e in sorted(record.evals.items()) if "hellaswag" in e}
    panels = 3 if hellaswag else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6), constrained_layout=True)
    steps = sorted(record.steps)
    evals = sorted(record.evals)
    axes[0].plot(steps, [record.steps[s]["loss"] for s in steps], label="training", lw=1)
    axes[0].plot(evals, [record.evals[s]["val_loss"] for s in evals], "o-", ms=3,
                 label="validation")
    axes[0].set(title="loss", xlabel="step", ylabel="nats per token")
    axes[1].plot(evals, [record.evals[s]["val_bpb"] for s in evals], "o-", ms=3, color="C1")
    axes[1].set(title="validation bits per byte", xlabel="step", ylabel="bits per byte")
    if hellaswag:
        axes[2].plot(list(hellaswag), list(hellaswag.values()), "o-", ms=3, color="C2")
        axes[2].axhline(0.25, color="grey", ls="--", lw=1, label="chance (0.25)")
        axes[2].set(title="HellaSwag acc_norm", xlabel="step", ylabel="accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.savefig(output, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- the page

def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines + [""]


def fenced(text: str) -> list[str]:
    """A code block that holds any text: control characters written as escapes, and a fence
    longer than any backtick run in it."""
    text = "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)
    fence = "`" * max(3, max((len(r) for r in re.findall(r"`+", text)), default=0) + 1)
    return [fence + "text", text, fence, ""]


def items(rows: list[tuple[str, str]]) -> list[str]:
    return [f"- **{name}**: {value}" for name, value in rows] + [""]


def hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.2f} hours"


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def gigabytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@dataclass
class Facts:
    """What the page states, computed once from the record, the folder and the checkpoints."""

    status: str
    last_step: int
    tokens: int | None
    epochs: float | None
    tokens_per_sec: float | None
    mfu: float | None
    hfu: float | None
    wall: float | None
    device_hours: float | None
    wall_complete: bool


def facts(record: Record, out_dir: Path, latest: dict[str, Any] | None) -> Facts:
    done = DONE.match(record.end)
    last_step = max([*record.steps, *record.evals, int(done[1]) if done else 0, 0])
    if done and record.stopped:
        status = f"stopped at step {last_step:,} of {record.max_iters:,} (`--resume` continues)"
    elif done:
        status = f"finished, {last_step:,} of {record.max_iters:,} steps"
    else:
        status = f"in progress (or interrupted): step {last_step:,} of {record.max_iters:,}"
    tokens = int(done[2].replace(",", "")) if done else \
        last_step * record.session.tokens_per_step if record.session.tokens_per_step \
        else (latest or {}).get("tokens_seen")
    logged = list(record.steps.values())
    spans = session_seconds(record, out_dir)
    known = [(s, session.world_size) for s, session in zip(spans, record.sessions)
             if s is not None]
    wall = sum(s for s, _ in known) if known else None
    return Facts(status, last_step, tokens, (latest or {}).get("epochs"),
                 mean([v["tokens_per_sec"] for v in logged if "tokens_per_sec" in v]),
                 mean([v["mfu"] for v in logged if "mfu" in v]),
                 mean([v["hfu"] for v in logged if "hfu" in v]),
                 wall, sum(s * w for s, w in known) / 3600 if known else None,
                 len(known) == len(spans))


def summary(record: Record, f: Facts, plotted: bool, out_dir: Path) -> list[str]:
    model = config_values(record.session.model)
    params = record.session.model.split(" parameters")[0]
    shape = (f"{params} parameters: {model.get('n_layer')} layers, n_embd {model.get('n_embd')}"
             f", context {model.get('block_size')}") if model else "unknown"
    rows = [("Status", f.status), ("Model", shape)]
    if f.tokens is not None:
        epochs = f" ({f.epochs:.3f} epochs of the training split)" if f.epochs is not None \
            else ""
        rows.append(("Tokens seen", f"{f.tokens:,}{epochs}"))
    speed = f"{f.tokens_per_sec:,.0f} tokens/s" if f.tokens_per_sec else "not logged yet"
    speed += f"; MFU {f.mfu:.1f}%, HFU {f.hfu:.1f}%" if f.mfu is not None else \
        "; MFU and HFU not measured (no known peak FLOP/s for this device)"
    rows.append(("Throughput (mean over the logged steps)", speed))
    if f.wall is not None:
        partial = "" if f.wall_complete else " (sessions without a start time left out)"
        rows.append(("Time", f"{hours(f.wall)} of wall time, {f.device_hours:.3g} "
                             f"device-hours{partial}"))
    best = min((e["val_loss"] for e in record.evals.values()), default=None)
    if best is not None:
        last = record.evals[max(record.evals)]
        rows.append(("Validation", f"best loss {best:.4f}; last {last['val_loss']:.4f} "
                                   f"({last['val_bpb']:.4f} bits per byte) at step "
                                   f"{max(record.evals):,}"))
    downstream = {s: e for s, e in record.evals.items() if "hellaswag" in e}
    if downstream:
        step = max(downstream)
        score = downstream[step]
        rows.append(("HellaSwag acc_norm", f"{score['hellaswag']:.4f} at step {step:,} "
                                           f"({score['hellaswag_examples']:,.0f} examples; "
                                           "chance 0.25)"))
    lines = [f"# Training report: `{out_dir.name}`", "",
             f"Written {time.strftime(TIME_FORMAT)} from `{out_dir}` (train.log, TensorBoard "
             "event files, checkpoints); the trainer rewrites it at each evaluation, "
             f"`python scripts/report.py {out_dir}` rebuilds it.", ""]
    lines += items(rows)
    if plotted:
        lines += [f"![Training and validation loss, validation bits per byte]({PLOT})", ""]
    return lines


def run_section(record: Record) -> list[str]:
    lines = ["## Run", ""]
    for i, s in enumerate(record.sessions):
        what = "started" if i == 0 else f"resumed at step {s.resumed_at:,}" \
            if s.resumed_at is not None else "started again"
        when = s.started.strftime(TIME_FORMAT) if s.started else "time unknown"
        lines += [f"{what.capitalize()} on {when}, commit `{s.commit}`:", "", "```bash",
                  s.command, "```", ""]
    first = record.sessions[0] if record.sessions else Session()
    preset = preset_of(first.command)
    changed = changes_from_preset(preset, config_values(record.session.model),
                                  config_values(record.session.training))
    lines += [f"Preset `{preset}`" + (", with these values changed from it (resolved ones "
                                          "included, e.g. an `auto` micro-batch):" if changed
                                          else ", unchanged."), ""]
    if changed:
        lines += table(["field", f"preset `{preset}`", "this run"],
                       [[f"`{k}`", f"`{a!r}`", f"`{b!r}`"] for k, a, b in changed])
    return lines


def hardware_section(record: Record) -> list[str]:
    rows = []
    for s in record.sessions:
        rows.append([s.started.strftime(TIME_FORMAT) if s.started else "",
                     s.hardware.split(";")[0] or s.device, s.world_size, s.dtype,
                     f"{s.tokens_per_step:,}" if s.tokens_per_step else "",
                     s.hardware.split("; ")[1] if "; " in s.hardware else ""])
    return ["## Hardware", ""] + table(
        ["session", "devices", "processes", "precision", "tokens per step", "software"], rows)


def data_section(record: Record, f: Facts, latest: dict[str, Any] | None) -> list[str]:
    data = (latest or {}).get("data", {})
    identity = [f"fingerprint `{data['fingerprint']}`"] if data.get("fingerprint") else []
    if data.get("revision"):
        identity.append(f"Hub revision `{data['revision']}`")
    rows = [("Source", record.session.data or "unknown")]
    if identity:
        rows.append(("Identity (latest.pt)", ", ".join(identity)))
    if f.tokens is not None:
        rows.append(("Tokens seen", f"{f.tokens:,}"))
    if f.epochs is not None:
        rows.append(("Epochs", f"{f.epochs:.4f} (units read to the end / units in the split)"))
    return ["## Data", ""] + items(rows)


def evaluation_section(record: Record, wall: float | None) -> list[str]:
    if not record.evals:
        return ["## Evaluations", "", "None yet.", ""]
    hellaswag = any("hellaswag" in e for e in record.evals.values())
    header = ["step", "training loss", "validation loss", "bits per byte"] + \
        (["HellaSwag acc_norm"] if hellaswag else [])
    rows = []
    for step, e in sorted(record.evals.items()):
        train = record.steps.get(step, {}).get("loss")
        row = [f"{step:,}", f"{train:.4f}" if train is not None else "",
               f"{e['val_loss']:.4f}", f"{e['val_bpb']:.4f}"]
        if hellaswag:
            row.append(f"{e['hellaswag']:.4f}" if "hellaswag" in e else "")
        rows.append(row)
    lines = ["## Evaluations", ""] + table(header, rows)
    if record.hellaswag:
        lines += [f"HellaSwag: {record.hellaswag}; scored as lm-evaluation-harness scores it "
                  "(evaluation/hellaswag_scoring.py).", ""]
    if any(e.get("hellaswag_seconds") is not None for e in record.evals.values()) and wall:
        timed = [e["hellaswag_seconds"] for e in record.evals.values()
                 if e.get("hellaswag_seconds") is not None]
        spent = sum(timed)
        lines += [f"HellaSwag took {spent:,.1f} s over {len(timed)} evaluation"
                  f"{'s' if len(timed) > 1 else ''}: "
                  f"{100 * spent / wall:.2f}% of the wall time.", ""]
    elif not hellaswag:
        lines += ["Downstream scores: off (`--eval_hellaswag N` scores HellaSwag at each "
                  "evaluation).", ""]
    return lines


def samples_section(record: Record) -> list[str]:
    if not record.samples:
        return []
    lines = ["## Samples", "", "Generated at each evaluation from `<|endoftext|>` (temperature "
             "0.8, top-k 200, the run's seed).", ""]
    for step, text in sorted(record.samples.items()):
        lines += [f"**Step {step:,}**", ""] + fenced(text)
    return lines


def checkpoint_section(infos: list[CheckpointInfo]) -> list[str]:
    rows = [[f"`{c.name}`", f"{c.step:,}" if c.step is not None else "", gigabytes(c.size),
             c.note] for c in infos]
    return ["## Checkpoints", ""] + (table(["file", "step", "size", ""], rows) if rows
                                     else ["None written yet.", ""])


def warnings_section(record: Record) -> list[str]:
    if not record.warnings:
        return []
    shown = record.warnings[-20:]
    more = f" (the last 20 of {len(record.warnings)})" if len(record.warnings) > 20 else ""
    return [f"## Warnings{more}", ""] + [f"- {cell(w)}" for w in shown] + [""]


def write_report(out_dir: str | Path) -> Path:
    """Write OUT_DIR/report.md and report.png from the folder's train.log, event files and
    checkpoints; return the report's path."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(f"folder not found: {out_dir}")
    if not (out_dir / LOG).is_file():
        raise UserError(f"no {LOG} in {out_dir}: not a training run's folder")
    record = read_log(out_dir / LOG)
    infos, latest = checkpoints(out_dir)
    f = facts(record, out_dir, latest)
    plotted = plot(record, out_dir / PLOT)
    lines = [*summary(record, f, plotted, out_dir), *run_section(record),
             *hardware_section(record), *data_section(record, f, latest),
             *evaluation_section(record, f.wall), *samples_section(record),
             *checkpoint_section(infos), *warnings_section(record)]
    path = out_dir / REPORT
    tmp = path.with_name(f".{REPORT}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    os.replace(tmp, path)  # a reader never sees half a report
    return path
