"""Privacy accounting for DP-SGD with Poisson sampling: epsilon spent, noise for a target.

All figures come from Opacus' accountants (``prv`` by default, ``rdp`` as the classic upper
bound) over a history of ``(noise_multiplier, sample_rate, steps)`` entries. Nothing here
knows about Flower or the model: each function is checked against known answers in
``tests/privacy/test_accounting.py``.

The guarantee: an owner whose every update came from Opacus DP-SGD steps listed in the history
is (epsilon, delta)-DP with respect to adding or removing one training example (sample-level DP),
across all rounds and runs the history covers.

Both functions are pure, and one PRV epsilon costs about a second of CPU (Opacus' RDP-based domain
bound in pure Python), so each process memoises them: an owner recomputes the epsilon of the
history it just reserved when it next loads its ledger, and simulated owners that share a process
and a plan (same budget, delta, q, steps, accountant, spent history) plan once. The results are
the same numbers, computed once; every check that uses them still runs.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

from fedveil.core.errors import UserError

ACCOUNTANTS = ("prv", "rdp")
Entry = tuple[float, float, int]  # (noise_multiplier, sample_rate, steps)


class BudgetUnreachable(UserError):
    """No noise level up to the allowed maximum fits the planned steps into the budget."""


def check_accountant(name: str) -> None:
    if name not in ACCOUNTANTS:
        raise UserError(f"dp.accountant '{name}' is unknown: choose one of {list(ACCOUNTANTS)}")


def epsilon_of(history: Sequence[Entry], delta: float, accountant: str = "prv") -> float:
    """Epsilon spent by ``history`` at ``delta`` (0.0 for an empty history)."""
    check_accountant(accountant)
    history = tuple((float(s), float(q), int(n)) for s, q, n in history if int(n) > 0)
    if not history:
        return 0.0
    if any(s <= 0 for s, _, _ in history):
        return float("inf")  # a noiseless step is not private at all
    return _epsilon(history, float(delta), accountant)


def create_accountant(mechanism: str):
    """Opacus' accountant, imported here: a process without DP never imports Opacus (~5 s)."""
    from opacus.accountants import create_accountant as opacus_accountant  # lazy: opacus (seconds); configs import us

    return opacus_accountant(mechanism=mechanism)


@lru_cache(maxsize=1024)
def _epsilon(history: tuple[Entry, ...], delta: float, accountant: str) -> float:
    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    return float(acc.get_epsilon(delta=delta))


PLAN_TOLERANCE = 1e-3  # plan_noise's sigma is the smallest to this relative step (0.1 %)


def plan_noise(budget: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv",
               spent: Sequence[Entry] = (), max_noise: float = 100.0) -> float:
    """The smallest noise multiplier (to 0.1 % in sigma) with which ``steps`` more steps at
    ``sample_rate``, after the ``spent`` history, keep epsilon within ``budget``.

    The same bisection as Opacus' ``get_noise_multiplier``, over the composed accountant, but
    bounded in sigma: Opacus' loop stops on an epsilon tolerance and can spin forever where the
    PRV estimate is not smooth in sigma (seen here: minutes at 100 % CPU).
    """
    check_accountant(accountant)
    spent = tuple((float(s), float(q), int(n)) for s, q, n in spent)
    return _plan_noise(float(budget), float(delta), float(sample_rate), int(steps), accountant, spent, float(max_noise))


@lru_cache(maxsize=64)  # a refusal (BudgetUnreachable) is not cached: it is raised again each time
def _plan_noise(budget: float, delta: float, sample_rate: float, steps: int, accountant: str,
                spent: tuple[Entry, ...], max_noise: float) -> float:
    if spent and epsilon_of(spent, delta, accountant) >= budget:
        raise BudgetUnreachable(
            f"the privacy budget epsilon={budget:g} is already spent; no further rounds are possible"
        )

    def eps(sigma: float) -> float:
        return epsilon_of([*spent, (sigma, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 1.0
    while eps(high) > budget:
        low, high = high, high * 2
        if high > 2 * max_noise:
            raise BudgetUnreachable(unreachable(budget, steps, sample_rate, max_noise))
    while high - low > PLAN_TOLERANCE * high:  # at most ~11 halvings from an interval of width `high`
        mid = (low + high) / 2
        low, high = (low, mid) if eps(mid) <= budget else (mid, high)
    if high > max_noise:
        raise BudgetUnreachable(unreachable(budget, steps, sample_rate, max_noise))
    return float(high)


def unreachable(budget: float, steps: int, sample_rate: float, max_noise: float) -> str:
    return (f"dp.target_epsilon={budget:g} is unreachable in {steps} steps at sample rate {sample_rate:.4g} "
            f"with noise multiplier <= {max_noise:g}: raise the target, or lower rounds / train.local_steps / "
            "train.batch_size")
