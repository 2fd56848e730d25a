"""What a run leaves behind: metrics.jsonl (a row per round), summary.json and report.md; and the
check that a new run does not write over an earlier one (:func:`check_run_dir`)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from fedveil.core.errors import UserError
from fedveil.core.io import append_jsonl, atomic_write_bytes, keep_jsonl, read_jsonl

METRICS_FILE = "metrics.jsonl"
RUN_ERROR_FILE = "run_error.txt"  # one line: why the federation stopped before its last round
# What the coordinator wrote for a run that started (summary.json first: it marks a finished run).
# The owners' state directories (clients/: epsilon ledgers, keys) are theirs and never in this list.
RUN_OUTPUTS = ("summary.json", "report.md", "final_adapter", METRICS_FILE, "round_ledger.jsonl", "checkpoints",
               RUN_ERROR_FILE)


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
        finished = "a finished" if "summary.json" in found else "a partial"
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


def append_metrics(out_dir: Path, row: dict[str, Any]) -> None:
    """Append one round's row to metrics.jsonl, durably (a crash loses at most this row)."""
    append_jsonl(Path(out_dir) / METRICS_FILE, row)


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(out_dir) / METRICS_FILE)


def drop_rows_after(out_dir: Path, last_round: int) -> None:
    """On resume: forget rows of rounds after the checkpoint we resume from."""
    keep_jsonl(Path(out_dir) / METRICS_FILE, lambda row: row["round"] <= last_round)


def fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summarize(out_dir: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Write summary.json and report.md from metrics.jsonl; returns the summary."""
    out_dir = Path(out_dir)
    rows = read_metrics(out_dir)
    evals = [(r["round"], r.get("eval_loss")) for r in rows if r.get("eval_loss") is not None]
    trained = [r for r in rows if r["round"] > 0]
    summary = {
        **extra,
        "rounds_completed": max((r["round"] for r in trained), default=0),
        "initial_eval_loss": evals[0][1] if evals else None,
        "final_eval_loss": evals[-1][1] if evals else None,
        "eval_loss_by_round": {str(k): v for k, v in evals},
        "seconds_total": sum(r["seconds"]["round"] for r in trained),
        "bytes_up_total": sum(c.get("bytes_up", 0) for r in trained for c in r.get("per_client", {}).values()),
        "bytes_down_total": sum(c.get("bytes_down", 0) for r in trained for c in r.get("per_client", {}).values()),
        "excluded": {str(r["round"]): r["excluded"] for r in trained if r.get("excluded")},
        "max_epsilon": max((r["max_epsilon"] for r in trained if r.get("max_epsilon") is not None), default=None),
    }
    atomic_write_bytes(out_dir / "summary.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    lines = [
        f"# fedveil run: {summary.get('backend', '?')} aggregation, dp={summary.get('dp', '?')}",
        "",
        f"- rounds completed: {summary['rounds_completed']}; clients: {', '.join(summary.get('clients', []))}",
        f"- held-out eval loss: {fmt(summary['initial_eval_loss'])} (round 0) -> "
        f"{fmt(summary['final_eval_loss'])} (last round)",
        f"- max epsilon reported by any owner: {fmt(summary['max_epsilon'], 3)}",
        f"- time in rounds: {summary['seconds_total']:.1f} s; bytes up {summary['bytes_up_total']:,}, "
        f"down {summary['bytes_down_total']:,}",
        "",
        "| round | train loss | eval loss | clients | seconds |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['round']} | {fmt(r.get('train_loss'))} | {fmt(r.get('eval_loss'))} | {len(r.get('clients', []))} "
            f"| {r['seconds']['round']:.2f} |"
        )
    (out_dir / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return summary
