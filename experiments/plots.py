"""A run's plots (PNG, matplotlib, no screen): held-out loss, epsilon, bytes and seconds per round.

Each plot is drawn from ``metrics.jsonl`` and ``summary.json`` alone, so it can be redrawn from a
finished run directory (:func:`plot_run`). Every function returns the data its axes hold, read
back from matplotlib's artists (the lines and bars as drawn), so tests compare what was plotted
with the run's records rather than looking at pictures.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Callable

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # Figure without pyplot: the Agg canvas, no display, no global state
from matplotlib.ticker import MaxNLocator

from fedveil.core.io import atomic_write_bytes
from fedveil.core.metrics import PHASES, MetricsRow, OwnerRow, RunSummary, read_rows, read_summary

PLOTS_DIR = "plots"
FIGSIZE = (8.0, 4.5)  # inches
DPI = 100  # so every PNG is 800 x 450 pixels
PIXELS = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))  # width, height

Series = dict[str, list[list[float]]]  # label -> [[x, y], ...] as plotted
LEGEND_OWNERS = 10  # up to this many owners get a line and a legend entry each; more share one style and entry
OWNER_GID = "owner"  # marks an owner's line drawn in the shared style


def owner_style(owners: list[str]) -> dict[str, Any]:
    """Line style of each owner's line: its own colour and legend entry for a few owners, one thin
    grey style (one legend entry in all) for many."""
    if len(owners) <= LEGEND_OWNERS:
        return {}
    return {"color": "0.6", "linewidth": 0.6, "alpha": 0.5, "gid": OWNER_GID}


def save(path: Path, draw: Callable[[Axes], None], integer_x: bool = True) -> dict[str, Any]:
    """Draw on one axes, write the PNG atomically, return what the axes hold (:func:`drawn`)."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    draw(ax)
    if integer_x:  # rounds
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = legend_entries(*ax.get_legend_handles_labels())
    if handles:
        ax.legend(handles, labels, fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return drawn(ax)


def legend_entries(handles: list, labels: list[str]) -> tuple[list, list[str]]:
    """The legend's entries: lines drawn in the shared owner style (:func:`owner_style`) get one
    entry between them, every other line its own."""
    shared = [getattr(h, "get_gid", lambda: None)() == OWNER_GID for h in handles]  # bars have no gid
    if not any(shared):
        return handles, labels
    return ([h for h, s in zip(handles, shared) if not s] + [handles[shared.index(True)]],
            [lab for lab, s in zip(labels, shared) if not s] + [f"each owner ({sum(shared)})"])


def drawn(ax: Axes) -> dict[str, Any]:
    """Lines as ``label -> [[x, y], ...]`` and bars as ``label -> {category: height}``, from the artists."""
    out: dict[str, Any] = {label: line.get_xydata().tolist() for line in ax.get_lines()
                           if not (label := line.get_label()).startswith("_")}
    for bars in ax.containers:
        names = [t.get_text() for t in ax.get_xticklabels()]
        out[bars.get_label()] = {names[i] if i < len(names) else str(i): float(p.get_height())
                                 for i, p in enumerate(bars.patches)}
    return out


def note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.4")


def per_round(rows: list[MetricsRow], value: Callable[[MetricsRow], float | None]) -> list[list[float]]:
    points = [[float(r.round), value(r)] for r in rows]
    return [[x, float(y)] for x, y in points if y is not None]


def mean_over_owners(row: MetricsRow, value: Callable[[OwnerRow], float | None]) -> float | None:
    values = row.owner_values(value)
    return sum(values) / len(values) if values else None


def owner_value(row: MetricsRow, who: str, value: Callable[[OwnerRow], float | None]) -> float | None:
    owner = row.per_client.get(who)
    return value(owner) if owner is not None else None


def owners_with(rows: list[MetricsRow], value: Callable[[OwnerRow], float | None]) -> list[str]:
    return sorted({who for r in rows for who, c in r.per_client.items() if value(c) is not None})


def plot_loss(rows: list[MetricsRow], summary: RunSummary | None, path: Path) -> dict[str, Any]:
    """Held-out loss per round: the federation's (where the coordinator sees it), each owner's where
    it releases one (not under DP), and the owners' own logs (simulation, summary.json)."""
    def draw(ax: Axes) -> None:
        fed = per_round(rows, lambda r: r.eval_loss)
        if fed:
            ax.plot(*zip(*fed), marker="o", linewidth=2, label="federation (token-weighted)")
        loss = lambda c: c.eval_loss  # noqa: E731
        owners = owners_with(rows, loss)
        for who in owners:
            pts = per_round(rows, lambda r: owner_value(r, who, loss))
            ax.plot(*zip(*pts), **{"marker": ".", "linestyle": "--", "alpha": 0.7, "label": who, **owner_style(owners)})
        logs = (summary.owners_eval_loss_by_round if summary else None) or {}
        if logs:
            pts = sorted((float(k), float(v)) for k, v in logs.items())
            ax.plot(*zip(*pts), marker="s", label="owners' own logs (never sent under DP)")
        if not (fed or owners or logs):
            note(ax, "no held-out loss released")
        ax.set(xlabel="round", ylabel="held-out loss", title="Held-out loss per round")
    return save(path, draw)


def plot_epsilon(rows: list[MetricsRow], path: Path) -> dict[str, Any]:
    """Cumulative epsilon each owner reported after each round, and the owners' budget."""
    def draw(ax: Axes) -> None:
        epsilon = lambda c: c.epsilon  # noqa: E731
        owners = owners_with(rows, epsilon)
        for who in owners:
            pts = per_round(rows, lambda r: owner_value(r, who, epsilon))
            ax.plot(*zip(*pts), **{"marker": "o", "label": who, **owner_style(owners)})
        budgets = sorted({b for r in rows for b in r.owner_values(lambda c: c.epsilon_budget)})
        for b in budgets:
            ax.axhline(b, linestyle=":", color="0.3", label=f"budget {b:g}")
        if not owners:
            note(ax, "dp=off: no epsilon spent")
        ax.set(xlabel="round", ylabel="epsilon (cumulative)", title="Epsilon spent per owner")
    return save(path, draw)


def plot_bytes(rows: list[MetricsRow], path: Path) -> dict[str, Any]:
    """Bytes per owner per round (mean over owners): the global down (train + evaluate messages),
    the protected update up, and the evaluation reply up."""
    trained = [r for r in rows if r.trained]
    series = {
        "down: global (train + evaluate)": lambda r: mean_over_owners(r, lambda c: c.bytes_down),
        "up: protected update": lambda r: mean_over_owners(r, lambda c: c.bytes_update_up),
        "up: evaluation reply": lambda r: mean_over_owners(
            r, lambda c: c.bytes_up - c.bytes_update_up if c.bytes_up is not None and c.bytes_update_up is not None
            else None),
    }

    def draw(ax: Axes) -> None:
        for label, value in series.items():
            pts = per_round(trained, value)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
        ax.set(xlabel="round", ylabel="bytes per owner", title="Bytes per owner per round")
    return save(path, draw)


def plot_seconds(rows: list[MetricsRow], path: Path) -> dict[str, Any]:
    """Seconds per phase per round, as metrics.jsonl records them (``round`` is the whole round)."""
    trained = [r for r in rows if r.trained]

    def draw(ax: Axes) -> None:
        for phase in PHASES:
            pts = per_round(trained, lambda r: r.seconds.of(phase))
            if pts:
                ax.plot(*zip(*pts), marker="o", label=phase)
        ax.set_yscale("symlog", linthresh=1e-3)  # protect/aggregate/reveal are ms beside training
        ax.set(xlabel="round", ylabel="seconds (symlog)", title="Seconds per phase per round")
    return save(path, draw)


def plot_run(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Write ``plots/{loss,epsilon,bytes,seconds}.png`` for a finished run; returns, per file, the
    data its axes hold."""
    run = Path(run_dir)
    rows, summary = read_rows(run), read_summary(run)
    out = run / PLOTS_DIR
    return {"loss.png": plot_loss(rows, summary, out / "loss.png"),
            "epsilon.png": plot_epsilon(rows, out / "epsilon.png"),
            "bytes.png": plot_bytes(rows, out / "bytes.png"),
            "seconds.png": plot_seconds(rows, out / "seconds.png")}
