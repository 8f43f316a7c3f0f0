"""The benchmarks' one plot: each system's figure against its fit seconds (log x), recsys as circles, peers as
squares, written as PNG."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def accuracy_against_time(points: dict[str, tuple[float, float]], path: Path, ylabel: str, title: str,
                          label: Callable[[str], str] = lambda name: name) -> None:
    """``points``: system -> (figure, fit seconds); ``label`` shortens a system's name for its annotation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, (figure, fit) in points.items():
        ours, fit = name.startswith("recsys"), max(fit, 1e-3)  # popularity fits in no time: keep it on the axis
        ax.scatter(fit, figure, marker="o" if ours else "s", color="C0" if ours else "C1")
        ax.annotate(name if ours else label(name), (fit, figure), fontsize=7, xytext=(4, 2),
                    textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("fit seconds (log scale)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title} (recsys: circles, peers: squares)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
