"""OUT_DIR/report.md after a 20-step tiny run: every section, a valid PNG beside it, the log's
numbers; scripts/report.py rebuilds the same page from the folder; a resumed log is read as
TensorBoard reads its events (a roll back drops what came after)."""

import re

from PIL import Image

from models.report import read_log
from tests.helpers import run_script

SECTIONS = ["# Training report: ", "## Run", "## Hardware", "## Data", "## Evaluations",
            "## Samples", "## Checkpoints"]
FACTS = ["Status", "Model", "Tokens seen", "Throughput (mean over the logged steps)", "Time",
         "Validation", "HellaSwag acc_norm"]


def test_report_of_a_20_step_run_has_every_section_and_the_logs_numbers(run_with_hellaswag):
    out_dir, _ = run_with_hellaswag
    report = (out_dir / "report.md").read_text()
    log = (out_dir / "train.log").read_text()
    for heading in SECTIONS:
        assert re.search(f"^{re.escape(heading)}", report, re.M), heading
    for fact in FACTS:
        assert f"- **{fact}**: " in report, fact
    assert "![Training and validation loss, validation bits per byte](report.png)" in report
    with Image.open(out_dir / "report.png") as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] > 800
    evals = re.findall(r"^step (\d+): val loss ([\d.]+) \| val bits/byte ([\d.]+) \| hellaswag "
                       r"acc_norm ([\d.]+)", log, re.M)
    assert len(evals) == 3
    for step, loss, bpb, acc_norm in evals:
        assert re.search(rf"^\| {step} \| [\d.]* \| {loss} \| {bpb} \| {acc_norm} \|$", report,
                         re.M), step
    speeds = [int(v.replace(",", "")) for v in re.findall(r"\| ([\d,]+) tok/s", log)]
    assert f"{sum(speeds) / len(speeds):,.0f} tokens/s" in report
    assert "- **Tokens seen**: 5,120 (" in report  # 20 steps x 8 rows x 32 tokens
    assert f"- **HellaSwag acc_norm**: {evals[-1][3]} at step 20 (5 examples" in report
    best = min(float(loss) for _, loss, _, _ in evals)
    assert f"best loss {best:.4f}" in report
    command = re.search(r"^run: .* \| command: (.*)$", log, re.M).group(1)
    assert f"```bash\n{command}\n```" in report and "Preset `tiny`" in report
    assert "| `max_iters` | `600` | `20` |" in report  # changed from the preset
    assert re.search(r"^\| `latest.pt` \| 20 \| ", report, re.M)
    assert "**Step 20**" in report and "- **Epochs**: " in report
    spent = sum(float(s) for s in re.findall(r"examples, ([\d.]+) s\)", log))
    assert f"HellaSwag took {spent:,.1f} s over 3 evaluations: " in report


def test_scripts_report_rebuilds_the_same_page(run_with_hellaswag, tmp_path):
    out_dir, _ = run_with_hellaswag
    before = (out_dir / "report.md").read_text()
    result = run_script("scripts/report.py", str(out_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out_dir / 'report.md'} and ")
    after = (out_dir / "report.md").read_text()

    def stable(text):  # all but the time it was written and the times measured up to then
        return [line for line in text.splitlines()
                if not line.startswith(("Written ", "- **Time**", "HellaSwag took "))]
    assert stable(after) == stable(before)


def test_a_resumed_log_keeps_the_branch_it_resumed(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("\n".join([
        "run: started 2026-01-01 10:00:00 | commit abc | command: python gpt.py --preset tiny",
        "device: cpu x 1 process(es), dtype fp32, 256 tokens per step (8 x 1 x 32 x 1)",
        "step 0: val loss 5.0000 | val bits/byte 7.0000",
        "step 2/6 | loss 4.0000 | lr 1.00e-03 | grad norm 1.000",
        "step 4/6 | loss 3.0000 | lr 1.00e-03 | grad norm 1.000",
        "step 4: val loss 3.5000 | val bits/byte 5.0000",
        "resumed from out/latest.pt at step 2 with the checkpoint's configuration",
        "run: started 2026-01-01 11:00:00 | commit abc | command: python gpt.py --resume",
        "device: cpu x 2 process(es), dtype fp32, 256 tokens per step (4 x 1 x 32 x 2)",
        "step 4/6 | loss 2.5000 | lr 1.00e-03 | grad norm 1.000",
        "step 6/6 | loss 2.0000 | lr 1.00e-03 | grad norm 1.000",
        "step 6: val loss 2.2000 | val bits/byte 3.0000",
        "done: 6 steps (0 skipped), 1,536 tokens, best val loss 2.2000; out/latest.pt holds 6",
    ]) + "\n")
    record = read_log(log)
    assert {s: v["loss"] for s, v in record.steps.items()} == {2: 4.0, 4: 2.5, 6: 2.0}
    assert sorted(record.evals) == [0, 6]  # the step-4 evaluation was on the abandoned branch
    assert [s.resumed_at for s in record.sessions] == [None, 2]
    assert [s.world_size for s in record.sessions] == [1, 2]
    assert record.end.startswith("done: ")


def test_a_stopped_run_is_reported_as_stopped_at_its_last_step(tmp_path):
    from models.report import Record, facts, read_other

    record = Record(max_iters=600)
    for line in ("stopped at step 42: latest.pt saved; continue with --resume",
                 "done: 42 steps (0 skipped), 172,032 tokens, best val loss 2.1000; latest.pt "
                 "holds step 42"):
        read_other(line, record)
    stated = facts(record, tmp_path, None)
    assert stated.status.startswith("stopped at step 42 of 600") and stated.tokens == 172_032
