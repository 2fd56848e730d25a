"""One owner's round under ``dp=owner_level``: its checks of the run config, its coin, its integer update.

The mechanism is ``privacy/dp/owner_level.py`` and the plan ``privacy/dp/owner_level_plan.py``; this
is where an owner applies them (``client/owner.py`` calls in). What it releases:

- every round, whether its coin had it join or not, one integer vector of the adapter's size: the
  quantised clipped delta plus its noise share if it joined, the noise share alone if not. Both are
  int64 values, exact as crypten's fixed-point shares or as BFV digits at step 1, so the bytes on the wire
  have the same length and the same finite values whatever the coin; the work done is the same
  too (it trains and encodes either way, then picks);
- the DP record of public values only (sigma, q, one round, delta, epsilon, budget): the same keys
  either way; no loss, count, norm or timing (``client/release.py``).

Everything checked here depends on the run config and the owner's policy only, before its data is
read or its ε reserved.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from fedveil.core import wire
from fedveil.core.errors import Refusal, UserError
from fedveil.privacy.dp import owner_ledger
from fedveil.privacy.dp.epsilon_ledger import BudgetExceeded, LedgerError
from fedveil.privacy.dp.owner_level import Quantiser, noise_share
from fedveil.privacy.dp.owner_level_plan import check_plan, decode_sum, run_entry
from fedveil.privacy.dp.randomness import secret_uniform
from fedveil.privacy.secagg import backend_spec


def check_config(cfg: Any, policy: Any, size: int) -> None:
    """The owner-level checks beyond its policy's (``OwnerPolicy.check_owner_level``): a backend that sums
    integers, crypten's parties' floor at the owner's t (tenseal's owners count: :func:`floor_for`), tenseal's
    integers at step 1, and gamma and mu within the wrap bound and the backend's check
    (``owner_level_plan.check_plan``) at the owner's t. Raises :class:`Refusal` (code ``config``)."""
    dp, agg = cfg.dp, cfg.aggregation
    domain = backend_spec(agg.name).integer_domain(agg)
    if domain is None:
        raise Refusal("config", f"dp=owner_level under aggregation={agg.name}: its noise is distributed only "
                      "under aggregation=crypten or tenseal (BFV); the owner refuses", key="aggregation.name")
    honest = honest_floor(cfg, policy)
    floor = getattr(agg, "min_owners", None)  # crypten: the parties' floor; tenseal: this owner counts (floor_for)
    if floor is not None and floor < honest:
        raise Refusal("config", f"aggregation.min_owners={agg.min_owners} is below the owner's t={honest}: a round "
                      "could reveal fewer noise shares than the full noise; the owner refuses",
                      key="aggregation.min_owners")
    if getattr(agg, "step", 1.0) != 1.0:  # tenseal's BFV: each integer one level (tenseal/config.integer_values)
        raise Refusal("config", f"aggregation.value_bound={agg.value_bound} and max_weight={agg.max_weight} do not "
                      "encode integers at step 1; the owner refuses", key="aggregation.value_bound")
    try:
        bound = check_plan(dp, size, cfg.participants, honest, domain)
    except UserError as exc:
        raise Refusal("config", str(exc), key="dp.gamma") from exc
    if agg.norm_bound is None or agg.norm_bound < bound:
        # below it the parties would drop honest owners' noise shares; unset, they would check nothing
        raise Refusal("config", f"aggregation.norm_bound={agg.norm_bound} is not the owner-level bound {bound:g}; "
                      "the owner refuses", key="aggregation.norm_bound")


def honest_floor(cfg: Any, policy: Any) -> int:
    """The owner's t: the run's ``dp.min_honest_owners``, never below its policy's."""
    return max(cfg.dp.min_honest_owners, policy.min_honest_owners)


def floor_for(backend: Any, cfg: Any, policy: Any) -> None:
    """Where owners decrypt sums themselves (tenseal), each counts the signed contributions of a sum before it
    decrypts it (at least t: ``tenseal/checks.check_contributions``) and decodes it as integers over gamma
    (``owner_level_plan.decode_sum``)."""
    if hasattr(backend, "min_contributions"):
        backend.min_contributions = honest_floor(cfg, policy)
        backend.decode = partial(decode_sum, gamma=cfg.dp.gamma, sample_rate=cfg.dp.sample_rate)


def reserve(cfg: Any, policy: Any, state_dir: str, run: str, server_round: int, size: int,
            node_cap: float | None = None) -> dict[str, float]:
    """Reserve this round's spend in the owner-level ε ledger (before training: a crash over-counts);
    the DP record it releases. The budget: the policy's ``owner_level_max_epsilon``, else the node
    config's ``max-epsilon`` (``node_cap``, which caps both units), else the first run's target.
    Raises :class:`Refusal` (``budget``, ``internal``)."""
    dp = cfg.dp
    mu, q, l1, l2 = run_entry(dp, size)
    release = owner_ledger.Release(run, server_round, mu, q, l1, l2)
    try:
        cap = policy.owner_level_max_epsilon if policy.owner_level_max_epsilon is not None else node_cap
        epsilon, ledger = owner_ledger.reserve(state_dir, release, dp.delta, dp.target_epsilon, cap)
    except BudgetExceeded as exc:
        raise Refusal("budget", str(exc)) from exc
    except LedgerError as exc:  # the owner's own files: its operator reads the line
        raise Refusal("internal", str(exc)) from exc
    return {wire.DP_NOISE: dp.sigma, wire.DP_SAMPLE_RATE: q, wire.DP_STEPS: 1, wire.DP_DELTA: ledger.delta,
            wire.DP_EPSILON: epsilon, wire.DP_BUDGET: ledger.budget_epsilon}


def noised_update(cfg: Any, delta: np.ndarray) -> np.ndarray:
    """This round's integer vector (float64 holding exact integers, as the backend shares it): the
    quantised delta if the owner's coin (its CSPRNG, probability q) has it join, else zeros; plus its
    noise share. The delta is encoded either way, so the work does not tell the coin."""
    dp = cfg.dp
    quantiser = Quantiser(dp.clip_norm, dp.gamma, int(np.asarray(delta).size))
    encoded = quantiser.encode(np.asarray(delta, np.float64))
    joins = bool(secret_uniform(1)[0] < dp.sample_rate)
    contribution = encoded if joins else np.zeros_like(encoded)
    return (contribution + noise_share(quantiser.dim, dp.mu, dp.min_honest_owners)).astype(np.float64)
