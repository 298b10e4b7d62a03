"""Plot a training run from its TensorBoard logs: loss, learning rate and throughput.

    python scripts/plot_training.py out/tiny                 # writes out/tiny/training.png
    python scripts/plot_training.py out/tiny --output run.png
"""

from __future__ import annotations

from pathlib import Path

from transformer_setup.cli import ArgumentParser, UserError, run_main

PANELS = (("loss", ("train/loss", "val/loss"), "nats per token"),
          ("learning rate", ("train/lr",), "learning rate"),
          ("throughput", ("train/tokens_per_sec",), "tokens / s"))


def read_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar series in the folder's event files: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep all
    events.Reload()
    return {tag: ([e.step for e in events.Scalars(tag)], [e.value for e in events.Scalars(tag)])
            for tag in events.Tags()["scalars"]}


def plot(series: dict[str, tuple[list[int], list[float]]], title: str, output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(5 * len(PANELS), 4), constrained_layout=True)
    for ax, (name, tags, ylabel) in zip(axes, PANELS, strict=True):
        for tag in tags:
            if tag in series:
                steps, values = series[tag]
                ax.plot(steps, values, marker="o" if tag.startswith("val") else None,
                        markersize=3, label=tag)
        ax.set(title=name, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        if any(tag in series for tag in tags):
            ax.legend()
    fig.suptitle(title)
    fig.savefig(output, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="a training run's output folder (its TensorBoard logs)")
    parser.add_argument("--output", default=None, help="PNG (default: OUT_DIR/training.png)")
    args = parser.parse_args(argv)
    log_dir = Path(args.out_dir)
    if not log_dir.is_dir():
        raise UserError(f"folder not found: {log_dir}")
    series = read_scalars(log_dir)
    if "train/loss" not in series:
        raise UserError(f"no training logs in {log_dir} (TensorBoard events with train/loss)")
    output = Path(args.output) if args.output else log_dir / "training.png"
    plot(series, f"training run: {log_dir}", output)
    steps = series["train/loss"][0]
    print(f"wrote {output} ({len(steps)} logged steps, up to step {steps[-1]})")


if __name__ == "__main__":
    run_main(main)
