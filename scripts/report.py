"""Rebuild a training run's report from its folder: OUT_DIR/report.md and report.png.

    python scripts/report.py checkpoints_1B          # during the run or after it

The trainer writes the same report at each evaluation and at the end (models/report.py); this
rebuilds it from train.log, the TensorBoard event files and the checkpoints alone, e.g. after
copying a run's folder off the cluster.
"""

from __future__ import annotations

from transformer_setup.cli import ArgumentParser, run_main


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="a training run's output folder (holding train.log)")
    args = parser.parse_args(argv)
    from models.report import PLOT, write_report

    path = write_report(args.out_dir)
    plot = path.with_name(PLOT)
    print(f"wrote {path}" + (f" and {plot}" if plot.exists() else ""))


if __name__ == "__main__":
    run_main(main)
