"""What a run leaves behind: metrics.jsonl and summary.json (their types, writers and readers:
``core/metrics.py``), report.md (:func:`write_outputs`); and the check that a new run does not
write over an earlier one (:func:`check_run_dir`); the console's lines on the owners a round left out
(:func:`report_excluded`)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from fedveil.core.console import progress
from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.core.metrics import METRICS_FILE, SUMMARY_FILE, RunSummary, read_rows, write_summary
from fedveil.privacy.provenance import SIGNATURES_DIR

RUN_ERROR_FILE = "run_error.txt"  # one line: why the federation stopped before its last round
# What the coordinator wrote for a run that started (summary.json first: it marks a finished run).
# The owners' state directories (clients/: epsilon ledgers, keys) are theirs and never in this list.
RUN_OUTPUTS = (SUMMARY_FILE, "report.md", "final_adapter", METRICS_FILE, "round_ledger.jsonl", "checkpoints",
               RUN_ERROR_FILE, SIGNATURES_DIR)


def earlier_run(out_dir: str | Path) -> list[str]:
    """The outputs of an earlier run (finished or partial) in ``out_dir``, by name."""
    out = Path(out_dir)
    return [name for name in RUN_OUTPUTS if (out / name).exists()]


def check_run_dir(out_dir: str | Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an earlier one's outputs unless told what to do with them:
    ``resume=true`` continues it, ``overwrite=true`` replaces it (:func:`clear_earlier_run`).
    Without either a re-run would mix its rows into the earlier ``metrics.jsonl`` and replace
    its checkpoints and final adapter."""
    if resume and overwrite:
        raise UserError("resume=true and overwrite=true contradict each other: pick one")
    found = earlier_run(out_dir)
    if found and not (resume or overwrite):
        finished = "a finished" if SUMMARY_FILE in found else "a partial"
        raise UserError(f"{out_dir} holds {finished} run ({', '.join(found)}): pass resume=true to continue it, "
                        "overwrite=true to replace it, or choose another hydra.run.dir")


def clear_earlier_run(out_dir: str | Path) -> None:
    """``overwrite=true``: delete the coordinator's outputs of the earlier run, summary.json first
    (a crash half-way leaves a partial run, refused again). Never the owners' state directories
    under ``clients/``: what an owner spent of its privacy budget stays spent."""
    for name in earlier_run(out_dir):
        path = Path(out_dir) / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()


def write_run_error(out_dir: str | Path, message: str) -> None:
    atomic_write_bytes(Path(out_dir) / RUN_ERROR_FILE, (message.splitlines()[0] + "\n").encode())


def read_run_error(out_dir: str | Path) -> str | None:
    path = Path(out_dir) / RUN_ERROR_FILE
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def write_outputs(out_dir: str | Path, summary: RunSummary) -> None:
    """The run's closing outputs: report.md (the summary and the rounds, for a person), then
    summary.json, written once and last: it marks a finished run."""
    out_dir = Path(out_dir)
    lines = [
        f"# fedveil run: {summary.backend or '?'} aggregation, dp={summary.dp or '?'}",
        "",
        f"- rounds completed: {summary.rounds_completed}; clients: {', '.join(summary.clients)}",
        f"- held-out eval loss: {fmt(summary.initial_eval_loss)} (round 0) -> "
        f"{fmt(summary.final_eval_loss)} (last round)",
        f"- max epsilon reported by any owner: {fmt(summary.max_epsilon, 3)}",
        f"- time in rounds: {summary.seconds_total:.1f} s; bytes up {summary.bytes_up_total:,}, "
        f"down {summary.bytes_down_total:,}",
        "",
        "| round | train loss | eval loss | clients | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in read_rows(out_dir):
        lines.append(f"| {r.round} | {fmt(r.train_loss)} | {fmt(r.eval_loss)} | {len(r.clients)} "
                     f"| {r.seconds.round:.2f} |")
    atomic_write_bytes(out_dir / "report.md", ("\n".join(lines) + "\n").encode())
    write_summary(out_dir, summary)


def report_excluded(excluded: dict[str, str], shown: int = 3) -> None:
    """One console line per distinct reason, naming a few owners (all of them: metrics.jsonl)."""
    by_reason: dict[str, list[str]] = {}
    for who, reason in excluded.items():
        by_reason.setdefault(reason, []).append(who)
    for reason, owners in sorted(by_reason.items(), key=lambda item: -len(item[1])):
        owners = sorted(owners)
        names = ", ".join(owners[:shown]) + (
            f" and {len(owners) - shown} more (metrics.jsonl)" if len(owners) > shown else ""
        )
        progress(f"  excluded {names}: {reason}")
