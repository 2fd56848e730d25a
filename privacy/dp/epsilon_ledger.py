"""A data owner's epsilon ledger: every DP step it ever released, the epsilon they cost, and who
may set the budget.

(The coordinator's hash chain of rounds is another thing: ``server/round_chain.py``.)

``<state_dir>/privacy_ledger.json`` lives with the owner and is never sent anywhere. It is
replaced atomically (temp file, fsync, rename, fsync of the directory), so a crash leaves the old
ledger or the new one. A leftover temp file or an unreadable ledger is *reported and refused*,
never reset: losing the history would let the owner spend its budget twice.

Spending is recorded *before* the update it pays for leaves the owner (``reserve``): a crash
after training then over-counts, never under-counts.

Budget policy:

- The budget is the owner's. A new ledger takes the owner's cap (``max-epsilon`` in its node
  config) or else the experiment's ``dp.target_epsilon``. An existing ledger keeps its budget:
  the server's config can lower what one run aims for, never raise the budget. Only the owner,
  through its own cap, changes it.
- ``delta`` and the accountant are fixed when the ledger is created (epsilon is only comparable
  across rounds at one delta).
- A run's noise multiplier is planned once, on the owner's first round of that run, so that the
  ledger's history plus all the run's planned steps stays within the run's target; it is stored
  in the ledger and reused on every later round of the run (also after a restart).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from typing import Optional

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes, temp_path
from fedveil.privacy.dp.accounting import Entry, epsilon_of, plan_noise
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, owner_delta

FILENAME = "privacy_ledger.json"
VERSION = 1


class LedgerError(UserError):
    """The ledger is damaged or inconsistent; the owner must look at it before training on."""


class BudgetExceeded(UserError):
    """The round would take the owner past its epsilon budget; it is refused."""


@dataclass
class Step:
    """One round's DP-SGD release."""

    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float = 0.0  # filled in by reserve()
    time: float = field(default_factory=time.time)


@dataclass
class Ledger:
    budget_epsilon: float
    delta: float
    accountant: str
    history: list[Step] = field(default_factory=list)
    plans: dict[str, float] = field(default_factory=dict)  # run -> noise multiplier planned for it

    @property
    def entries(self) -> list[Entry]:
        """The history for an accountant; consecutive equal (sigma, q) merge, as Opacus does."""
        merged: list[Entry] = []
        for s in self.history:
            if merged and merged[-1][:2] == (s.noise_multiplier, s.sample_rate):
                merged[-1] = (s.noise_multiplier, s.sample_rate, merged[-1][2] + s.steps)
            else:
                merged.append((s.noise_multiplier, s.sample_rate, s.steps))
        return merged

    @property
    def spent_epsilon(self) -> float:
        return self.history[-1].epsilon_after if self.history else 0.0


def ledger_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILENAME


def load(state_dir: str | Path) -> Ledger | None:
    """The owner's ledger, or None if it has never trained with DP. Damage is an error."""
    path = ledger_path(state_dir)
    tmp = temp_path(path)
    if tmp.exists():
        raise LedgerError(
            f"{tmp} exists: a ledger write was interrupted. Compare it with {path.name}, keep the one with the "
            "longer history as privacy_ledger.json and delete the other; fedveil will not guess"
        )
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if raw.get("version") != VERSION:
            raise LedgerError(f"{path}: ledger version {raw.get('version')!r} is not {VERSION}; use the fedveil that wrote it")
        ledger = Ledger(budget_epsilon=float(raw["budget_epsilon"]), delta=float(raw["delta"]),
                        accountant=str(raw["accountant"]), history=[Step(**s) for s in raw["history"]],
                        plans={str(k): float(v) for k, v in raw.get("plans", {}).items()})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, LedgerError):
            raise
        raise LedgerError(
            f"{path} is damaged ({exc.__class__.__name__}: {exc}); restore it from a backup. It is never reset, "
            "because that would forget the privacy already spent"
        ) from exc
    recomputed = epsilon_of(ledger.entries, ledger.delta, ledger.accountant)
    if ledger.history and abs(recomputed - ledger.spent_epsilon) > 0.02 * max(1.0, recomputed):
        raise LedgerError(f"{path}: recorded epsilon {ledger.spent_epsilon:.4f} does not match its history "
                          f"({recomputed:.4f}); the file was edited or damaged: restore it from a backup")
    return ledger


def save(state_dir: str | Path, ledger: Ledger) -> None:
    path = ledger_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"version": VERSION, "budget_epsilon": ledger.budget_epsilon, "delta": ledger.delta,
            "accountant": ledger.accountant, "spent_epsilon": ledger.spent_epsilon,
            "plans": ledger.plans, "history": [asdict(s) for s in ledger.history]}
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode("utf-8"))


def reserve(state_dir: str | Path, ledger: Ledger, step: Step) -> float:
    """Record ``step`` if it fits the budget and return the epsilon spent after it.

    Raises :class:`BudgetExceeded` (and records nothing) if it does not fit.
    """
    trial = Ledger(ledger.budget_epsilon, ledger.delta, ledger.accountant, [*ledger.history, step])
    after = epsilon_of(trial.entries, ledger.delta, ledger.accountant)
    if after > ledger.budget_epsilon:
        raise BudgetExceeded(
            f"privacy budget: this round would bring epsilon to {after:.3f} > budget {ledger.budget_epsilon:g} "
            f"(spent {ledger.spent_epsilon:.3f}, delta={ledger.delta:g}); the owner refuses it"
        )
    step.epsilon_after = after
    ledger.history.append(step)
    save(state_dir, ledger)
    return after


def open_ledger(state_dir: str | Path, cfg: SampleLevelDPConfig, num_examples: int,
                owner_cap: Optional[float] = None) -> Ledger:
    """Load the owner's ledger (or start one) with the budget policy above applied."""
    ledger = load(state_dir)
    if ledger is None:
        budget = owner_cap if owner_cap is not None else cfg.target_epsilon
        return Ledger(budget_epsilon=float(budget), delta=owner_delta(cfg, num_examples), accountant=cfg.accountant)
    if owner_cap is not None:
        ledger.budget_epsilon = float(owner_cap)
    return ledger


def run_noise(ledger: Ledger, run_key: str, cfg: SampleLevelDPConfig, sample_rate: float, planned_steps: int) -> float:
    """The run's noise multiplier: explicit, already planned, or planned now (and recorded)."""
    if cfg.noise_multiplier is not None:
        return float(cfg.noise_multiplier)
    if run_key in ledger.plans:
        return ledger.plans[run_key]
    target = min(cfg.target_epsilon, ledger.budget_epsilon)
    sigma = plan_noise(target, ledger.delta, sample_rate, planned_steps, ledger.accountant,
                       spent=ledger.entries, max_noise=cfg.max_noise_multiplier)
    ledger.plans[run_key] = sigma
    return sigma
