"""The owner's ε ledger for ``dp=owner_level``: its own unit (the owner's whole dataset), its own budget.

``<state_dir>/owner_level_ledger.json`` sits beside the sample-level ledger (``privacy_ledger.json``,
``epsilon_ledger.py``), which it leaves as it is: old ledgers load unchanged, and each unit's
epsilon is computed by its own accountant (Skellam RDP here, ``skellam.py``; Opacus' there). How
the two compose is in docs/privacy.md ("Owner-level DP: the accountant"): a record's loss is
bounded by the sum of both units' epsilons, the whole dataset only by the owner-level one.

The rules are the sample-level ledger's (``epsilon_ledger.py``): spend is reserved before the
update leaves (a crash over-counts, never under-counts); the read-check-write runs under the same
exclusive lock (``ledger_store.locked``, the state dir's ``privacy_ledger.lock``); the file is
replaced atomically and chained (``core/hash_chain.py``), and a damaged or edited file is an
error, never reset. The budget is the owner's: its policy's ``owner_level_max_epsilon``, else the
first run's ``dp.target_epsilon``; ``delta`` is fixed when the ledger is created.

An entry is one round: ``(mu, q, l1, l2)`` as the accountant takes them, whether or not the
owner's coin had it join (it cannot tell the coordinator, and the accountant charges each round
at q).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from fedveil.core import hash_chain
from fedveil.core.io import atomic_write_bytes, leftover_temps
from fedveil.privacy.dp import skellam
from fedveil.privacy.dp.epsilon_ledger import BudgetExceeded
from fedveil.privacy.dp.ledger_format import EPSILON_RTOL, FIX, LedgerError
from fedveil.privacy.dp.ledger_store import locked

FILENAME = "owner_level_ledger.json"
VERSION = 1
_ENTRY_NUMBERS = ("mu", "sample_rate", "l1", "l2", "epsilon_after", "time")


@dataclass
class Release:
    """One owner-level round: the noise and sensitivities the accountant charges."""

    run: str
    round: int
    mu: float
    sample_rate: float
    l1: float
    l2: float
    epsilon_after: float = 0.0  # filled in by reserve()
    time: float = field(default_factory=time.time)
    prev: str = ""  # the chain: filled in when written


@dataclass
class OwnerLedger:
    budget_epsilon: float
    delta: float
    history: list[Release] = field(default_factory=list)

    @property
    def entries(self) -> list[skellam.Entry]:
        return [(r.mu, r.sample_rate, r.l1, r.l2, 1) for r in self.history]

    @property
    def spent_epsilon(self) -> float:
        return self.history[-1].epsilon_after if self.history else 0.0


def ledger_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILENAME


def load(state_dir: str | Path) -> Optional[OwnerLedger]:
    """The owner-level ledger, or None where the owner never ran owner-level DP. Damage is an error."""
    path = ledger_path(state_dir)
    if not path.parent.is_dir():
        return None
    with locked(path, exclusive=False):
        return _read(path)


def reserve(state_dir: str | Path, release: Release, delta: float, target: float,
            owner_cap: Optional[float] = None) -> tuple[float, OwnerLedger]:
    """Record ``release`` if it keeps the owner within its budget; the epsilon after it and the ledger written.

    A new ledger takes ``delta`` and, as its budget, the owner's cap (its policy's
    ``owner_level_max_epsilon``) or else the run's ``target``; an existing one keeps its delta, and its
    budget unless the owner's cap is given (the coordinator's target never raises it).
    Raises :class:`BudgetExceeded` (nothing recorded) past the budget."""
    path = ledger_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path, exclusive=True):
        ledger = _read(path) or OwnerLedger(float(owner_cap if owner_cap is not None else target), float(delta))
        if owner_cap is not None:
            ledger.budget_epsilon = float(owner_cap)
        history = [*ledger.history, release]
        after = skellam.epsilon_of([(r.mu, r.sample_rate, r.l1, r.l2, 1) for r in history], ledger.delta)
        if not (math.isfinite(after) and after <= ledger.budget_epsilon):
            raise BudgetExceeded(f"owner-level privacy budget: this round would bring epsilon to {after:.3f} > budget "
                                 f"{ledger.budget_epsilon:g} (spent {ledger.spent_epsilon:.3f}, delta="
                                 f"{ledger.delta:g}); the owner refuses it")
        release.epsilon_after = after
        ledger.history = history
        _write(path, ledger)
    return after, ledger


def _genesis(delta: float) -> str:
    return hash_chain.genesis({"fedveil": "owner-level-ledger", "delta": float(delta)})


def _record(r: Release) -> dict:
    return asdict(r)


def _write(path: Path, ledger: OwnerLedger) -> None:
    heads = hash_chain.heads(map(_record, ledger.history), _genesis(ledger.delta), prev_key="prev")
    for r, prev in zip(ledger.history, heads):
        r.prev = prev
    data = {"version": VERSION, "budget_epsilon": ledger.budget_epsilon, "delta": ledger.delta,
            "spent_epsilon": ledger.spent_epsilon, "entry_count": len(ledger.history), "head": heads[-1],
            "history": [_record(r) for r in ledger.history]}
    atomic_write_bytes(path, (json.dumps(data, indent=1, allow_nan=False) + "\n").encode(), mode=0o600,
                       failpoint="ledger-write")


def _read(path: Path) -> Optional[OwnerLedger]:
    if leftover_temps(path):
        raise LedgerError(f"{leftover_temps(path)[0]} exists: a ledger write was interrupted; compare it with "
                          f"{path.name} and keep the longer valid history; fedveil will not guess")
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != VERSION:
            raise ValueError(f"version {raw.get('version')!r} is not {VERSION}")
        history = [Release(**entry) for entry in raw["history"]]
        for r in history:
            for name in _ENTRY_NUMBERS:
                value = getattr(r, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                    raise ValueError(f"{name}={value!r} is not a finite number")
        ledger = OwnerLedger(float(raw["budget_epsilon"]), float(raw["delta"]), history)
        heads = hash_chain.heads(map(_record, history), _genesis(ledger.delta), prev_key="prev")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LedgerError(f"{path} is damaged ({exc.__class__.__name__}: {exc}); {FIX}") from exc
    if any(r.prev != h for r, h in zip(history, heads)) or raw["head"] != heads[-1] \
            or raw["entry_count"] != len(history):
        raise LedgerError(f"{path} is damaged or was edited: its chain does not hold; {FIX}")
    recomputed = skellam.epsilon_of(ledger.entries, ledger.delta) if history else 0.0
    recorded = float(raw["spent_epsilon"])
    # More than the accountant gives today is an over-count, safe to keep: a ledger written before the
    # subsampled bound was tightened (Zhu & Wang's general bound, ~3x at q < 1). Less is an edit.
    if recorded < recomputed and not math.isclose(recomputed, recorded, rel_tol=EPSILON_RTOL, abs_tol=1e-9):
        raise LedgerError(f"{path}: recorded epsilon {raw['spent_epsilon']!r} does not match its history "
                          f"({recomputed!r}): the file was edited; {FIX}")
    return ledger
