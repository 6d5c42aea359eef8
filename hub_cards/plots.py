"""Pass@k^(m) against m: the one plot that cards, `ib-ft eval` and the demo all draw.

matplotlib's object API (`Figure`, no pyplot): no process-wide backend switch, safe off the main thread.
"""

import os
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure


def plot_against_m(
    curves: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike, title: str | None = None
) -> None:
    """Save a PNG of Pass@k^(m) against m: one line per label, each a list of (m, value) points."""
    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    for label, points in curves.items():
        axes.plot(*zip(*points), marker="o", label=label)
    axes.set(xlabel="m (samples of k that must pass)", ylabel="Pass@k^(m)", ylim=(-0.02, 1.02))
    if title:
        axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
