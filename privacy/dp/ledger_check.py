"""Checking an owner's ε ledgers from outside the round: ``fedveil verify-epsilon STATE_DIR...``.

An owner's state directory holds up to two ε ledgers, one per privacy unit: the sample-level one
(``privacy_ledger.json``, ``epsilon_ledger.py``) and the owner-level one (``owner_level_ledger.json``,
``owner_ledger.py``). Loading either checks its hash chain and that its recorded spend is what its
accountant gives for its entries (Opacus' for the first, ``skellam.epsilon_of`` for the second); this
adds that the spend is within the ledger's budget, which no write ever passes. Damage is a
:class:`LedgerError` whose one line names the file and the fix; nothing is ever reset or rewritten.
"""

from __future__ import annotations

from pathlib import Path

from fedveil.privacy.dp import ledger_store, owner_ledger
from fedveil.privacy.dp.ledger_format import FIX, LedgerError

__all__ = ["LedgerError", "verify"]


def verify(state_dir: str | Path) -> list[str]:
    """One line per ε ledger in ``state_dir`` that verifies (none: one line saying so); raises on the first that
    does not (:class:`LedgerError`)."""
    state = Path(state_dir)
    if not state.is_dir():
        raise LedgerError(f"{state} is not a directory: give an owner's state directory (e.g. <run>/clients/client_1)")
    lines = []
    sample, owner = ledger_store.load(state), owner_ledger.load(state)
    for path, ledger, unit, count, accountant in (
            (ledger_store.ledger_path(state), sample, "sample-level", "entries", getattr(sample, "accountant", "")),
            (owner_ledger.ledger_path(state), owner, "owner-level", "rounds", "skellam")):
        if ledger is None:
            continue
        _within_budget(path, ledger.spent_epsilon, ledger.budget_epsilon)
        lines.append(f"{path}: {unit} ε ledger intact, {len(ledger.history)} {count}, "
                     f"spent ε={ledger.spent_epsilon:.4g} of its budget {ledger.budget_epsilon:g} "
                     f"(δ={ledger.delta:g}, {accountant})")
    return lines or [f"{state}: no ε ledger (this owner never trained under DP)"]


def _within_budget(path: Path, spent: float, budget: float) -> None:
    if not spent <= budget:  # every write is refused past the budget, so only an edit gets here
        raise LedgerError(f"{path}: spent epsilon {spent:.6g} is over its budget {budget:g}: the file was edited; "
                          f"{FIX}")
