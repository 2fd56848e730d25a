"""``fedveil report DIR... [--out DIR]``: compare finished runs (one, several, or a multirun sweep).

Prints one table (a row per run: backend, DP, ε, held-out loss first -> last, bytes and seconds
per round, measured/planned bytes) and writes comparison plots: the privacy/utility frontier
(final held-out loss against ε, a series per backend and privacy unit: sample_level beside
owner_level), the held-out loss per round of every run, and the cost per
backend. A directory holding ``summary.json`` is a run; any other is searched for runs (a Hydra
sweep directory holds one per job).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.axes import Axes

from fedveil.core.errors import UserError
from fedveil.core.metrics import (BYTES_DOWN_FIGURE, BYTES_UP_FIGURE, SUMMARY_FILE, MetricsRow, RunSummary,
                                  read_rows, read_summary, trained_rows)
from fedveil.experiments.plots import save

REPORT_DIR = "report"


@dataclass
class Run:
    """One finished run, as its files record it."""

    path: Path
    summary: RunSummary
    rows: list[MetricsRow]
    overrides: list[str] = field(default_factory=list)
    label: str = ""

    @property
    def backend(self) -> str:
        return self.summary.backend or "?"

    @property
    def dp(self) -> str:
        return self.summary.dp or "?"

    @property
    def epsilon(self) -> float | None:
        return self.summary.max_epsilon

    def losses(self) -> tuple[dict[int, float], bool]:
        """Held-out loss by round, and whether it comes from the owners' own logs (under DP the
        coordinator sees none; the simulation runner records the owners' in summary.json)."""
        own = self.summary.eval_loss_by_round
        if any(v is not None for v in own.values()):
            return {k: float(v) for k, v in own.items() if v is not None}, False
        return {k: float(v) for k, v in (self.summary.owners_eval_loss_by_round or {}).items()}, True

    @property
    def final_loss(self) -> float | None:
        losses, _ = self.losses()
        return losses[max(losses)] if losses else None

    def per_round_mean(self, value) -> float | None:
        values = [v for r in trained_rows(self.rows) if (v := value(r)) is not None]
        return sum(values) / len(values) if values else None

    @property
    def bytes_per_owner(self) -> float | None:
        """Bytes one owner moves per round (up + down), mean over owners and trained rounds."""
        def one(r: MetricsRow) -> float | None:
            moved = r.owner_values(lambda c: (c.bytes_up or 0) + (c.bytes_down or 0))
            return sum(moved) / len(moved) if moved else None
        return self.per_round_mean(one)

    @property
    def seconds_per_round(self) -> float | None:
        return self.per_round_mean(lambda r: r.seconds.round)

    def planned_ratio(self, figure: str) -> float | None:
        return self.summary.ratio(figure)


def natural(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_runs(dirs: list[Path]) -> list[Run]:
    """Every run under ``dirs``, in the order given (a sweep's jobs in number order)."""
    runs: list[Run] = []
    for d in dirs:
        if not d.is_dir():
            raise UserError(f"{d}: no such directory; give run directories or a multirun sweep directory")
        found = [d / SUMMARY_FILE] if (d / SUMMARY_FILE).is_file() else sorted(d.rglob(SUMMARY_FILE), key=natural)
        if not found:
            raise UserError(f"{d}: no finished run (summary.json) in it or below; a run writes one when its "
                            "last round ends")
        for path in found:
            run_dir = path.parent
            if any(r.path == run_dir for r in runs):
                continue
            overrides_file = run_dir / ".hydra" / "overrides.yaml"
            overrides = []
            if overrides_file.is_file():
                overrides = [o for o in (yaml.safe_load(overrides_file.read_text()) or [])
                             if not str(o).startswith("hydra.")]
            try:
                summary = read_summary(run_dir)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}: not valid JSON ({exc.msg}); rerun that experiment or leave it out") from None
            runs.append(Run(run_dir, summary, read_rows(run_dir), overrides))
    label(runs)
    return runs


def label(runs: list[Run]) -> None:
    """Name each run by the overrides that differ between the runs (else its directory)."""
    common = set.intersection(*(set(r.overrides) for r in runs)) if runs else set()
    for r in runs:
        own = [o for o in r.overrides if o not in common]
        r.label = " ".join(own) if own and len(runs) > 1 else r.path.name


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


COLUMNS = ("run", "backend", "dp", "epsilon", "loss first", "loss last", "bytes/owner/round", "s/round",
           "up meas/plan", "down meas/plan")


def table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """The comparison table as header and rows of strings (loss from the owners' logs marked *)."""
    rows = []
    for r in runs:
        losses, from_owners = r.losses()
        mark = "*" if from_owners else ""
        first = losses[min(losses)] if losses else None
        rows.append([r.label, r.backend, r.dp, fmt(r.epsilon, ".3f"), fmt(first, ".4f") + (mark if losses else ""),
                     fmt(r.final_loss, ".4f") + (mark if losses else ""), human_bytes(r.bytes_per_owner),
                     fmt(r.seconds_per_round, ".2f"), fmt(r.planned_ratio(BYTES_UP_FIGURE), ".3f"),
                     fmt(r.planned_ratio(BYTES_DOWN_FIGURE), ".3f")])
    return list(COLUMNS), rows


def render_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


UNIT_LABELS = {"sample_level": "sample-level DP-SGD", "owner_level": "owner-level Skellam"}
UNIT_STYLES = {"sample_level": "-", "owner_level": ":"}


def plot_frontier(runs: list[Run], path: Path) -> dict[str, Any]:
    """Final held-out loss against the ε the owners spent: one series per backend and privacy unit
    (runs with DP, in ε order; owner-level dotted: its ε covers an owner's whole dataset, sample-level's
    one record); runs without DP as dashed lines (ε = ∞)."""
    def draw(ax: Axes) -> None:
        for backend, unit in sorted({(r.backend, r.dp) for r in runs}):
            pts = sorted((r.epsilon, r.final_loss) for r in runs if (r.backend, r.dp) == (backend, unit)
                         and r.epsilon is not None and r.final_loss is not None)
            if pts:
                ax.plot(*zip(*pts), marker="o", linestyle=UNIT_STYLES.get(unit, "-"),
                        label=f"{backend} ({UNIT_LABELS.get(unit, unit)})")
        for r in runs:
            if r.epsilon is None and r.final_loss is not None:
                ax.axhline(r.final_loss, linestyle="--", color="0.5", label=f"no DP: {r.label}")
        ax.set(xlabel="epsilon spent (max over owners; per record or per owner, by unit)",
               ylabel="final held-out loss", title="Privacy/utility frontier")
    return save(path, draw, integer_x=False)


def plot_losses(runs: list[Run], path: Path) -> dict[str, Any]:
    def draw(ax: Axes) -> None:
        for r in runs:
            losses, from_owners = r.losses()
            if losses:
                pts = sorted(losses.items())
                ax.plot(*zip(*pts), marker=".", label=r.label + (" (owners' logs)" if from_owners else ""))
        ax.set(xlabel="round", ylabel="held-out loss", title="Held-out loss per round")
    return save(path, draw)


def cost_by_backend(runs: list[Run]) -> dict[str, dict[str, float]]:
    """Mean over the runs of each backend: bytes per owner per round and seconds per round."""
    out: dict[str, dict[str, float]] = {}
    for backend in sorted({r.backend for r in runs}):
        mine = [r for r in runs if r.backend == backend]
        for key, value in (("bytes", lambda r: r.bytes_per_owner), ("seconds", lambda r: r.seconds_per_round)):
            values = [v for r in mine if (v := value(r)) is not None]
            if values:
                out.setdefault(key, {})[backend] = sum(values) / len(values)
    return out


def plot_cost(runs: list[Run], bytes_path: Path, seconds_path: Path) -> dict[str, dict[str, Any]]:
    cost = cost_by_backend(runs)

    def bars(key: str, ylabel: str, title: str):
        def draw(ax: Axes) -> None:
            values = cost.get(key, {})
            ax.bar(list(values), list(values.values()), label=key)
            ax.set(ylabel=ylabel, title=title)
        return draw
    return {bytes_path.name: save(bytes_path, bars("bytes", "bytes per owner per round (up + down)",
                                                   "Traffic per backend (mean over runs)"), integer_x=False),
            seconds_path.name: save(seconds_path, bars("seconds", "seconds per round",
                                                       "Round time per backend (mean over runs)"), integer_x=False)}


def report(dirs: list[Path], out: Path) -> tuple[str, dict[str, dict[str, Any]]]:
    """The table as text and, per plot written under ``out``, the data its axes hold."""
    runs = find_runs(dirs)
    text = render_table(*table(runs))
    if any(r.losses()[1] for r in runs):
        text += "\n* held-out loss from the owners' own logs (simulation; under DP the coordinator sees none)"
    plots = {"frontier.png": plot_frontier(runs, out / "frontier.png"),
             "loss_by_round.png": plot_losses(runs, out / "loss_by_round.png"),
             **plot_cost(runs, out / "cost_bytes.png", out / "cost_seconds.png")}
    return text, plots


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedveil report", description=__doc__.split("\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="run directories, or a multirun sweep directory")
    parser.add_argument("--out", type=Path, help="where the plots go (default: DIR/report for one DIR, "
                                                 "else ./report)")
    args = parser.parse_args(argv)
    out = args.out or (args.dirs[0] / REPORT_DIR if len(args.dirs) == 1 else Path(REPORT_DIR))
    try:
        text, plots = report(args.dirs, out)
    except UserError as exc:
        print(f"fedveil: error: {exc}", file=sys.stderr)
        return 2
    print(text)
    print(f"plots: {', '.join(str(out / name) for name in plots)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
