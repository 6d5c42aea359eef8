"""Pass@k^(m) against m, which cards, `ib-ft eval` and the demo draw; and a search's trials, which `ib-ft tune`
and the tuning study draw.

matplotlib's object API (`Figure`, no pyplot): no process-wide backend switch, safe off the main thread.
"""

import os
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter


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


def plot_trials(rows: Sequence[Mapping], parameters: Sequence[str], objective: str, path: str | os.PathLike) -> None:
    """Save a PNG of a search's objective per trial, then against each searched parameter; `rows` as
    `trl_ib.trainer.search_backends.trial_rows` gives them. Pruned and failed trials are left out (their objective
    is an intermediate value, or none)."""
    done = [row for row in rows if row["objective"] is not None and row["state"] in ("COMPLETE", "TERMINATED")]
    figure = Figure(figsize=(3.2 * (1 + len(parameters)), 3.0), layout="constrained")
    axes = figure.subplots(1, 1 + len(parameters), squeeze=False)[0]
    axes[0].plot([row["trial"] for row in done], [row["objective"] for row in done], "o-")
    axes[0].set(xlabel="trial", ylabel=objective)
    for axis, name in zip(axes[1:], parameters):
        points = [(row[name], row["objective"]) for row in done if row.get(name) is not None]
        values = [x for x, _ in points]
        axis.plot([str(x) if isinstance(x, str) else x for x in values], [y for _, y in points], "o")
        axis.set(xlabel=name)
        numbers = [x for x in values if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if numbers and len(numbers) == len(values) and min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
            axis.set_xscale("log")  # a range over a decade or more, as log-drawn fields are
            axis.xaxis.set_minor_formatter(NullFormatter())  # decades labelled only: minor labels overlap
    figure.savefig(path, dpi=100)
