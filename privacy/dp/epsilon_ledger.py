"""A data owner's epsilon ledger: every DP step it ever released, the epsilon they cost, and who
may set the budget. This is the API the owner calls; the file lives in ``ledger_store.py`` (locked,
atomic) and its format, hash chain and version migration in ``ledger_format.py``.

(The coordinator's chain of rounds is another thing: ``server/round_chain.py``. Both chain their
entries with ``core/hash_chain.py``.)

``<state_dir>/privacy_ledger.json`` lives with the owner and is never sent anywhere. The rule it
keeps: the privacy an owner has spent is never under-counted. What that rests on:

- **Spend is recorded before the update it pays for leaves the owner** (:func:`reserve`): a crash
  after training over-counts, never under-counts.
- **One writer at a time, and the check inside the lock.** ``reserve`` re-reads the ledger from
  disk *inside* the exclusive lock, recomputes epsilon over that history plus the new step,
  refuses or appends and saves, all under the same lock; the caller's in-memory copy only
  contributes its budget and its new ``plans`` (entries already on disk win). So processes and
  threads on one host sharing the state dir never together pass the budget. ``reserve`` also
  refuses if the history the caller loaded is no longer the start of the one on disk.
- **Crash-safe writes and a tamper-evident history**: see ``ledger_store.py`` and
  ``ledger_format.py`` (and what the file alone cannot show).

Budget policy:

- The budget is the owner's. A new ledger takes the owner's cap (``max-epsilon`` in its node
  config) or else the experiment's ``dp.target_epsilon``. An existing ledger keeps its budget:
  the server's config can lower what one run aims for, never raise the budget. Only the owner,
  through its own cap, changes it. ``reserve`` checks against the budget of the ledger it is
  handed (as ``open_ledger`` set it) and stores that budget.
- ``delta`` and the accountant are fixed when the ledger is created (epsilon is only comparable
  across rounds at one delta); if another process created the ledger first, its values win.
- A run's noise multiplier is planned once, on the owner's first round of that run, so that the
  ledger's history plus all the run's planned steps stays within the run's target; it is stored
  in the ledger and reused on every later round of the run (also after a restart).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from fedveil.core.errors import UserError
from fedveil.privacy.dp.accounting import PLAN_TOLERANCE, epsilon_of, plan_noise
from fedveil.privacy.dp.ledger_format import (EPSILON_RTOL, READABLE_VERSIONS, VERSION, Ledger, LedgerError, Step,
                                              chain, checked_step, entries)
from fedveil.privacy.dp.ledger_store import (FILENAME, LOCK_TIMEOUT_S, LOCKNAME, check_not_rolled_back, ledger_path,
                                             load, lock_path, locked, read, save, write)
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, owner_delta

__all__ = ["EPSILON_RTOL", "FILENAME", "LOCKNAME", "LOCK_TIMEOUT_S", "READABLE_VERSIONS", "VERSION", "BudgetExceeded",
           "Ledger", "LedgerError", "Step", "hint_is_the_plan", "ledger_path", "load", "lock_path", "open_ledger",
           "reserve", "run_noise", "save"]


class BudgetExceeded(UserError):
    """The round would take the owner past its epsilon budget; it is refused."""


def reserve(state_dir: str | Path, ledger: Ledger, step: Step) -> float:
    """Record ``step`` if it fits the budget and return the epsilon spent after it.

    Under the exclusive lock: re-read the ledger from disk (``ledger`` may be stale), keep the
    caller's budget and its new ``plans`` entries, recompute epsilon over the history on disk
    plus ``step``, refuse if over budget, else append ``step`` and save. On success ``ledger``
    is updated to what was written (history, plans, and delta/accountant if another process
    created the ledger first).

    Raises :class:`BudgetExceeded` (and records nothing) if it does not fit.
    """
    path = ledger_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = checked_step(step, path, "the step to reserve")
    with locked(path, exclusive=True):
        on_disk = read(path)
        check_not_rolled_back(path, ledger, on_disk)
        if on_disk is None:
            on_disk = Ledger(ledger.budget_epsilon, ledger.delta, ledger.accountant)
        plans = dict(on_disk.plans)
        for run, sigma in ledger.plans.items():
            plans.setdefault(run, float(sigma))
        budget = float(ledger.budget_epsilon)
        if not (math.isfinite(budget) and budget >= 0):
            raise LedgerError(f"{path}: the budget {ledger.budget_epsilon!r} is not a finite epsilon >= 0; "
                              "nothing was recorded")
        history = [*on_disk.history, step]
        after = epsilon_of(entries(history), on_disk.delta, on_disk.accountant)
        if not (math.isfinite(after) and after <= budget):
            raise BudgetExceeded(
                f"privacy budget: this round would bring epsilon to {after:.3f} > budget {budget:g} "
                f"(spent {on_disk.spent_epsilon:.3f}, delta={on_disk.delta:g}); the owner refuses it"
            )
        step.epsilon_after = after
        step.prev = chain(on_disk.history, on_disk.delta, on_disk.accountant)[-1]
        written = Ledger(budget, on_disk.delta, on_disk.accountant, history, plans)
        write(path, written)
    ledger.delta, ledger.accountant = written.delta, written.accountant
    ledger.history, ledger.plans = list(written.history), dict(written.plans)
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


def hint_is_the_plan(hint: Optional[float], target: float, ledger: Ledger, sample_rate: float, steps: int,
                     max_noise: float) -> bool:
    """Whether the coordinator's ``dp.noise_hint`` is what :func:`plan_noise` would give this owner:
    its ``steps`` keep epsilon (after the owner's own history) within ``target``, and 0.1 % less noise
    would not (plan_noise's tolerance). Less noise than the plan fails the first check, more the second,
    so a hint can neither weaken the owner's DP nor waste its utility; anything else is planned anew."""
    if not hint or not 0 < hint <= max_noise:
        return False
    spent = ledger.entries

    def eps(sigma: float) -> float:
        return epsilon_of([*spent, (sigma, sample_rate, steps)], ledger.delta, ledger.accountant)

    return eps(hint) <= target < eps(hint * (1 - PLAN_TOLERANCE))


def run_noise(ledger: Ledger, run_key: str, cfg: SampleLevelDPConfig, sample_rate: float, planned_steps: int,
              server_round: Optional[int] = None, steps_left: Optional[int] = None) -> float:
    """The run's noise multiplier: explicit, already planned, or planned now (and recorded).

    A round this run already charged (``server_round`` is in its history: the coordinator restarted after
    the owner had reserved it) is charged again, and the rest of the run, ``steps_left`` steps from
    this round on, is planned anew from everything spent, so the run can still end within budget."""
    if cfg.noise_multiplier is not None:
        return float(cfg.noise_multiplier)
    rerun = server_round is not None and any(s.run == run_key and s.round == server_round for s in ledger.history)
    if run_key in ledger.plans and not rerun:
        return ledger.plans[run_key]
    target = min(cfg.target_epsilon, ledger.budget_epsilon)
    steps = steps_left if rerun and steps_left else planned_steps
    if hint_is_the_plan(cfg.noise_hint, target, ledger, sample_rate, steps, cfg.max_noise_multiplier):
        sigma = float(cfg.noise_hint)
    else:
        sigma = plan_noise(target, ledger.delta, sample_rate, steps, ledger.accountant,
                           spent=ledger.entries, max_noise=cfg.max_noise_multiplier)
    ledger.plans[run_key] = sigma
    return sigma
