"""The owner's budget policy: who may set epsilon, and which noise a run uses.

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

from pathlib import Path
from typing import Optional

from fedveil.privacy import ledger as ledger_io
from fedveil.privacy.accounting import plan_noise
from fedveil.privacy.dp import SampleLevelDPConfig, owner_delta
from fedveil.privacy.ledger import Ledger


def open_ledger(state_dir: str | Path, cfg: SampleLevelDPConfig, num_examples: int,
                owner_cap: Optional[float] = None) -> Ledger:
    """Load the owner's ledger (or start one) with the budget policy above applied."""
    ledger = ledger_io.load(state_dir)
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
