"""A run's records, typed: a row per round (``metrics.jsonl``) and the run's summary (``summary.json``).

Every key these files hold is a field name below, defined once; the coordinator writes them
(``server/federation.py``, ``server/outputs.py``), the runner completes the summary, and report,
plots, the plan and the benches read them through :func:`read_rows` and :func:`read_summary`.

The keys are the files' format: runs written before these types read back unchanged
(``tests/formats``). A key holding ``None`` is written as ``null`` or left out exactly as the
first writers did: ``ALWAYS`` fields always, ``TRAINED`` fields in the rows of trained rounds (not
in round 0's, which only evaluates the starting adapter), any other field only when it has a value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Optional

from fedveil.core.io import append_jsonl, atomic_write_bytes, keep_jsonl, read_jsonl

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"

KEEP = "keep"
ALWAYS = {KEEP: "always"}
TRAINED = {KEEP: "trained"}

PHASES = ("train", "protect", "aggregate", "reveal", "evaluate", "round")  # Seconds' fields, in a round's order

# planned_vs_measured's figures (experiments/plan.py computes them)
BYTES_UP_FIGURE = "bytes_up_per_owner_per_round"
BYTES_DOWN_FIGURE = "bytes_down_per_owner_per_round"
EPSILON_FIGURE = "epsilon"


def seconds_figure(phase: str) -> str:
    return "seconds_per_round" if phase == "round" else f"seconds_{phase}_per_round"


def _dump(obj: Any, trained: bool) -> dict[str, Any]:
    out = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        keep = f.metadata.get(KEEP)
        if (keep == "trained" and not trained) or (keep is None and value is None):
            continue
        out[f.name] = _plain(value, trained)
    return out


def _plain(value: Any, trained: bool) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return _dump(value, trained)
    if isinstance(value, dict):
        return {str(k): _plain(v, trained) for k, v in value.items()}
    return value


def _load(cls, values: dict[str, Any], **convert: Callable[[Any], Any]):
    """``cls`` from a file's dict: keys it does not know are ignored, keys it lacks take their default."""
    return cls(**{f.name: convert.get(f.name, lambda v: v)(values[f.name]) for f in fields(cls) if f.name in values})


@dataclass
class OwnerRow:
    """One owner's figures in a round (``per_client``). Under DP the coordinator gets only the DP
    record (``core.wire.DP_FIELDS`` names) and the byte counts: the rest stays ``None``."""

    bytes_down: Optional[int] = field(default=None, metadata=TRAINED)  # train + evaluate messages
    bytes_up: Optional[int] = field(default=None, metadata=TRAINED)
    bytes_update_up: Optional[int] = field(default=None, metadata=TRAINED)  # the train reply alone
    num_examples: Optional[float] = field(default=None, metadata=TRAINED)  # None where counts are hidden
    train_loss: Optional[float] = field(default=None, metadata=TRAINED)
    update_norm: Optional[float] = None
    eval_loss: Optional[float] = None
    eval_reveal_seconds: Optional[float] = None
    noise_multiplier: Optional[float] = None
    sample_rate: Optional[float] = None
    steps: Optional[float] = None
    delta: Optional[float] = None
    epsilon: Optional[float] = None  # cumulative over the owner's runs in this ledger
    epsilon_budget: Optional[float] = None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> OwnerRow:
        return _load(cls, values)


@dataclass
class Seconds:
    """A round's seconds per phase (``PHASES``); ``None`` where owners send no timings (under DP)."""

    round: float = field(default=0.0, metadata=ALWAYS)  # the whole round, evaluation included
    train: Optional[float] = field(default=None, metadata=TRAINED)
    protect: Optional[float] = field(default=None, metadata=TRAINED)
    aggregate: Optional[float] = field(default=None, metadata=TRAINED)
    reveal: Optional[float] = field(default=None, metadata=TRAINED)
    evaluate: Optional[float] = field(default=None, metadata=ALWAYS)

    def of(self, phase: str) -> Optional[float]:
        if phase not in PHASES:
            raise KeyError(f"no phase '{phase}': one of {', '.join(PHASES)}")
        return getattr(self, phase)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Seconds:
        return _load(cls, values)


@dataclass
class MetricsRow:
    """One line of metrics.jsonl: a round (round 0: the starting adapter, evaluated only)."""

    round: int = field(metadata=ALWAYS)
    backend: Optional[str] = field(default=None, metadata=ALWAYS)
    dp: Optional[str] = field(default=None, metadata=TRAINED)
    clients: list[str] = field(default_factory=list, metadata=ALWAYS)  # owners whose update was accepted
    excluded: dict[str, str] = field(default_factory=dict, metadata=TRAINED)  # owner -> reason
    evaluated: list[str] = field(default_factory=list, metadata=ALWAYS)
    train_loss: Optional[float] = field(default=None, metadata=TRAINED)
    eval_loss: Optional[float] = field(default=None, metadata=ALWAYS)  # the federation's held-out loss
    per_client: dict[str, OwnerRow] = field(default_factory=dict, metadata=ALWAYS)
    seconds: Seconds = field(default_factory=Seconds, metadata=ALWAYS)
    max_epsilon: Optional[float] = field(default=None, metadata=TRAINED)

    @property
    def trained(self) -> bool:
        return self.round > 0

    def owner_values(self, value: Callable[[OwnerRow], Optional[float]]) -> list[float]:
        """``value`` of each owner in the round, where it has one."""
        return [v for c in self.per_client.values() if (v := value(c)) is not None]

    def to_dict(self) -> dict[str, Any]:
        return _dump(self, self.trained)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MetricsRow:
        return _load(cls, values, per_client=lambda d: {who: OwnerRow.from_dict(c) for who, c in d.items()},
                     seconds=Seconds.from_dict)


def append_row(out_dir: str | Path, row: MetricsRow) -> None:
    """Append one round's row to metrics.jsonl, durably (a crash loses at most this row)."""
    append_jsonl(Path(out_dir) / METRICS_FILE, row.to_dict())


def read_rows(out_dir: str | Path) -> list[MetricsRow]:
    """Every row of ``out_dir``'s metrics.jsonl, in file order ([] without one)."""
    return [MetricsRow.from_dict(r) for r in read_jsonl(Path(out_dir) / METRICS_FILE)]


def replace_row(out_dir: str | Path, row: MetricsRow) -> None:
    """Rewrite round ``row.round``'s line as ``row``, atomically (the other lines byte for byte);
    nothing is written when no line holds that round. ``eval_in_train``: a round's evaluation
    arrives with the next round's train replies and joins the row written at the round's end."""
    path = Path(out_dir) / METRICS_FILE
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True) if path.is_file() else []
    at = [i for i, line in enumerate(lines) if line.strip() and json.loads(line).get("round") == row.round]
    if at:
        lines[at[-1]] = json.dumps(row.to_dict()) + "\n"
        atomic_write_bytes(path, "".join(lines).encode("utf-8"))


def drop_rows_after(out_dir: str | Path, last_round: int) -> None:
    """Forget the rows of rounds after ``last_round`` (the kept lines stay byte for byte)."""
    keep_jsonl(Path(out_dir) / METRICS_FILE, lambda raw: MetricsRow.from_dict(raw).round <= last_round)


def trained_rows(rows: list[MetricsRow]) -> list[MetricsRow]:
    """The rows of rounds in which some owner's update was accepted."""
    return [r for r in rows if r.trained and r.clients]


@dataclass
class Figure:
    """One figure of planned vs measured: measured / planned as ``ratio`` (None where either is missing)."""

    planned: Optional[float] = field(default=None, metadata=ALWAYS)
    measured: Optional[float] = field(default=None, metadata=ALWAYS)
    ratio: Optional[float] = field(default=None, metadata=ALWAYS)


def _int_keys(d: dict) -> dict:
    return {int(k): v for k, v in d.items()}


@dataclass
class RunSummary:
    """summary.json: who ran what, the totals over rounds, and (from the simulation runner) the plan,
    planned vs measured and the owners' own held-out losses. Written once, by :func:`write_summary`."""

    backend: Optional[str] = field(default=None, metadata=ALWAYS)
    dp: Optional[str] = field(default=None, metadata=ALWAYS)
    seed: Optional[int] = field(default=None, metadata=ALWAYS)
    rounds: Optional[int] = field(default=None, metadata=ALWAYS)
    clients: list[str] = field(default_factory=list, metadata=ALWAYS)  # every owner that trained in some round
    model_path: Optional[str] = field(default=None, metadata=ALWAYS)
    layout_digest: Optional[str] = field(default=None, metadata=ALWAYS)
    ledger_head: Optional[str] = field(default=None, metadata=ALWAYS)  # the round chain's last hash
    final_adapter: Optional[str] = field(default=None, metadata=ALWAYS)
    rounds_completed: int = field(default=0, metadata=ALWAYS)
    initial_eval_loss: Optional[float] = field(default=None, metadata=ALWAYS)
    final_eval_loss: Optional[float] = field(default=None, metadata=ALWAYS)
    eval_loss_by_round: dict[int, float] = field(default_factory=dict, metadata=ALWAYS)
    seconds_total: float = field(default=0.0, metadata=ALWAYS)
    bytes_up_total: int = field(default=0, metadata=ALWAYS)
    bytes_down_total: int = field(default=0, metadata=ALWAYS)
    excluded: dict[int, dict[str, str]] = field(default_factory=dict, metadata=ALWAYS)  # round -> owner -> reason
    max_epsilon: Optional[float] = field(default=None, metadata=ALWAYS)
    plan: Optional[dict[str, Any]] = None  # `fedveil plan --json`'s data, as the run printed it first
    planned_vs_measured: Optional[dict[str, Figure]] = None
    owners_eval_loss_by_round: Optional[dict[int, float]] = None  # simulation: the owners' own logs

    def ratio(self, figure: str) -> Optional[float]:
        found = (self.planned_vs_measured or {}).get(figure)
        return found.ratio if found else None

    def to_dict(self) -> dict[str, Any]:
        return _dump(self, trained=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunSummary:
        return _load(cls, values, eval_loss_by_round=_int_keys, excluded=_int_keys,
                     owners_eval_loss_by_round=_int_keys,
                     planned_vs_measured=lambda d: {k: _load(Figure, v) for k, v in d.items()})


def summarize(rows: list[MetricsRow], **run: Any) -> RunSummary:
    """The summary of ``rows``; ``run``: the run's own fields (backend, dp, seed, ...)."""
    evals = [(r.round, r.eval_loss) for r in rows if r.eval_loss is not None]
    trained = [r for r in rows if r.trained]
    owners = [c for r in trained for c in r.per_client.values()]
    return RunSummary(
        **run,
        rounds_completed=max((r.round for r in trained), default=0),
        initial_eval_loss=evals[0][1] if evals else None,
        final_eval_loss=evals[-1][1] if evals else None,
        eval_loss_by_round=dict(evals),
        seconds_total=sum(r.seconds.round for r in trained),
        bytes_up_total=sum(c.bytes_up or 0 for c in owners),
        bytes_down_total=sum(c.bytes_down or 0 for c in owners),
        excluded={r.round: r.excluded for r in trained if r.excluded},
        max_epsilon=max((r.max_epsilon for r in trained if r.max_epsilon is not None), default=None),
    )


def summary_bytes(summary: RunSummary) -> bytes:
    return (json.dumps(summary.to_dict(), indent=2, sort_keys=True) + "\n").encode()


def write_summary(out_dir: str | Path, summary: RunSummary) -> None:
    """summary.json, atomically; once per run (it marks a finished run: ``server.outputs.check_run_dir``)."""
    atomic_write_bytes(Path(out_dir) / SUMMARY_FILE, summary_bytes(summary))


def read_summary(out_dir: str | Path) -> Optional[RunSummary]:
    """``out_dir``'s summary.json (None without one; ``json.JSONDecodeError`` if it is not JSON)."""
    path = Path(out_dir) / SUMMARY_FILE
    return RunSummary.from_dict(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
