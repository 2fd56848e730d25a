"""``dp=owner_level``: its config, and the plan of its public parameters (gamma, mu) for a run.

The unit is the whole owner (docs/privacy.md, "Owner-level DP"). Each round each owner flips its own
coin with the public probability ``sample_rate`` q; if it joins it clips its round delta to
``clip_norm``, quantises it (``owner_level.Quantiser``) and adds its noise share; if not, it sends its
noise share alone. The shares of any ``min_honest_owners`` t owners sum to ``Sk(mu, mu)``.

The plan is a function of public values only (the config, the adapter's size, the cohort and the
backend's integer domain), made once by the runner (``server/prepare.py``) and carried in the run
config as ``dp.gamma`` and ``dp.mu``: every owner must use the same ones, or the sum does not decode
and the noise of t shares is not the planned one. No owner trusts them: each checks them against its
own policy, its ε ledger and the wrap bound (:func:`check_plan`) before it reads its data.

Pure: no Flower, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from fedveil.core.errors import UserError
from fedveil.core.payload import Revealed
from fedveil.privacy.dp import skellam
from fedveil.privacy.dp.owner_level import Quantiser, choose_gamma, share_bounds, wrap_probability

MAX_WRAP = 1e-9  # per round: the chance the sum wraps the backend's modulus (counted in delta, docs/privacy.md)
SHARE_TAIL = 1e-9  # per update: the chance an honest noised update fails the backend's norm check
_PLAN_ITERATIONS = 30


@dataclass
class OwnerLevelDPConfig:
    """Owner-level DP: one owner's whole dataset is the unit; distributed Skellam noise under crypten."""

    name: str = "owner_level"
    target_epsilon: float = 8.0  # over the run's rounds, for each owner's whole dataset
    delta: float = 1e-5
    clip_norm: float = 0.1  # L2 bound on each owner's round delta (model units)
    sample_rate: float = 1.0  # public q: each owner joins each round with this probability (1: no amplification)
    min_honest_owners: int = 3  # t: the shares of any t owners carry the full noise
    noise_multiplier: Optional[float] = None  # sigma in units of clip_norm; None: planned for the target
    # resolved by the runner (server/prepare.py) for the adapter and the cohort; owners check them
    gamma: Optional[float] = None  # integer units per model unit
    mu: Optional[float] = None  # the Skellam parameter of the noise of t shares (integer units)

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise UserError(f"dp.target_epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise UserError(f"dp.delta must be in (0, 1), got {self.delta}; e.g. 1e-5")
        if not self.clip_norm > 0:
            raise UserError(f"dp.clip_norm must be > 0, got {self.clip_norm}; e.g. 0.1")
        if not 0 < self.sample_rate <= 1:
            raise UserError(f"dp.sample_rate must be in (0, 1], got {self.sample_rate}; 1.0 claims no amplification")
        if isinstance(self.min_honest_owners, bool) or not isinstance(self.min_honest_owners, int) \
                or self.min_honest_owners < 2:
            raise UserError(f"dp.min_honest_owners must be an integer >= 2 (one owner's share alone is not "
                            f"the full noise), got {self.min_honest_owners!r}")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise UserError(f"dp.noise_multiplier must be > 0 (or null: planned), got {self.noise_multiplier}")
        for key in ("gamma", "mu"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise UserError(f"dp.{key} must be a finite number > 0 (or null: planned), got {value}")

    @property
    def sigma(self) -> float:
        """The noise multiplier the resolved mu carries: ``sqrt(2 mu) / (gamma clip_norm)``."""
        return noise_multiplier(self.mu, self.gamma, self.clip_norm)


@dataclass(frozen=True)
class IntegerDomain:
    """What a backend sums integers in: the modulus of its sum, and which per-update check bound
    (integer units, L2 and per value) it can check over a number of values."""

    modulus: int
    checkable: Callable[[float, int], bool]


def noise_multiplier(mu: float, gamma: float, clip_norm: float) -> float:
    return math.sqrt(2 * mu) / (gamma * clip_norm)


def check_bound(quantiser: Quantiser, mu: float, honest: int) -> float:
    """The per-update bound a backend checks (integer units): an encoded update's L2 bound plus a
    share's L2 tail at :data:`SHARE_TAIL` (``share_bounds``), + 2 units for the backend's fixed-point
    slack. An honest owner's noised update fails it with probability <= SHARE_TAIL; dropping it then
    is a function of the noised update alone."""
    _, share_l2 = share_bounds(quantiser.dim, mu, honest, SHARE_TAIL)
    return float(math.ceil(quantiser.l2_bound + share_l2) + 2)


def _gamma_for(cfg: OwnerLevelDPConfig, dim: int, cohort: int, sigma: float, domain: IntegerDomain) -> float:
    """The largest gamma within the wrap bound whose check bound the backend can check."""
    per_unit2 = (sigma * cfg.clip_norm) ** 2 / 2
    t = cfg.min_honest_owners
    top = choose_gamma(cfg.clip_norm, dim, cohort, per_unit2, t, domain.modulus, MAX_WRAP)

    def fits(gamma: float) -> bool:
        return domain.checkable(check_bound(Quantiser(cfg.clip_norm, gamma, dim), per_unit2 * gamma**2, t), dim)

    if fits(top):
        return top
    lo = 1.0 / cfg.clip_norm
    if not fits(lo):
        raise UserError(f"dp=owner_level: the backend cannot check updates of {dim} values with noise multiplier "
                        f"{sigma:.3g} even at one integer unit per clip norm: lower dp.noise_multiplier or "
                        "raise dp.min_honest_owners")
    lo, hi = math.log(lo), math.log(top)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(math.exp(mid)) else (lo, mid)
    return math.exp(lo)


def plan(cfg: OwnerLevelDPConfig, dim: int, cohort: int, rounds: int, domain: IntegerDomain) -> tuple[float, float]:
    """``(gamma, mu)`` for a run: gamma as large as the wrap bound and the backend's check allow, mu the
    least that keeps ``rounds`` rounds at q within ``target_epsilon`` (or the explicit noise multiplier's).

    gamma depends on the noise and the noise (through the quantiser's sensitivities) on gamma: iterate
    until the planned noise multiplier is at most the one gamma was chosen for."""
    sigma = cfg.noise_multiplier or 1.0
    for _ in range(_PLAN_ITERATIONS):
        gamma = _gamma_for(cfg, dim, cohort, sigma, domain)
        if cfg.noise_multiplier is not None:
            return gamma, (sigma * gamma * cfg.clip_norm) ** 2 / 2
        q = Quantiser(cfg.clip_norm, gamma, dim)
        mu = skellam.mu_for(cfg.target_epsilon, cfg.delta, cfg.sample_rate, rounds, q.l1_bound, q.l2_bound)
        planned = noise_multiplier(mu, gamma, cfg.clip_norm)
        if planned <= sigma:
            return gamma, mu
        sigma = planned * 1.02  # a little room so the next gamma holds the noise it is then planned for
    raise UserError(f"dp=owner_level: no plan of gamma and mu converged for target_epsilon={cfg.target_epsilon:g}: "
                    "raise dp.target_epsilon or give dp.noise_multiplier")


def run_entry(cfg: OwnerLevelDPConfig, dim: int) -> tuple[float, float, float, float]:
    """``(mu, q, l1, l2)`` of one round of this run, as the accountant takes it (rounds added by the ledger)."""
    if cfg.gamma is None or cfg.mu is None:
        raise UserError("dp=owner_level but dp.gamma / dp.mu are not resolved: run through the fedveil runner "
                        "or ServerApp, which plan them for the adapter and the cohort")
    q = Quantiser(cfg.clip_norm, cfg.gamma, dim)
    return float(cfg.mu), float(cfg.sample_rate), q.l1_bound, q.l2_bound


def check_plan(cfg: OwnerLevelDPConfig, dim: int, cohort: int, honest: int, domain: IntegerDomain) -> float:
    """The owner's checks of the resolved public values, before its data: the wrap bound over the
    cohort at the owner's own t, and that the backend can check the noised update. Returns the check
    bound (integer units). Raises :class:`UserError` naming the key."""
    mu, _, _, l2 = run_entry(cfg, dim)
    quantiser = Quantiser(cfg.clip_norm, cfg.gamma, dim)
    if wrap_probability(dim, cohort, mu, honest, l2, domain.modulus) > MAX_WRAP:
        raise UserError(f"dp.gamma={cfg.gamma:g} with dp.mu={mu:g} could wrap the sum of {cohort} owners "
                        f"(probability > {MAX_WRAP:g} per round): lower dp.gamma")
    bound = check_bound(quantiser, mu, honest)
    if not domain.checkable(bound, dim):
        raise UserError(f"dp.gamma={cfg.gamma:g}: the backend cannot check a noised update of L2 norm {bound:g} "
                        "over this adapter: lower dp.gamma")
    return bound


def resolve(cfg: OwnerLevelDPConfig, dim: int, cohort: int, rounds: int, domain: Optional[IntegerDomain]) -> float:
    """Fill in ``cfg.gamma`` and ``cfg.mu`` where unset (the plan above), check them as an owner will,
    and return the per-update bound the backend must check (``aggregation.norm_bound``, integer units)."""
    if domain is None:
        raise UserError("dp=owner_level needs aggregation=crypten or tenseal with scheme=bfv (an integer domain)")
    if cfg.gamma is None or cfg.mu is None:
        cfg.gamma, cfg.mu = plan(cfg, dim, cohort, rounds, domain)
    return check_plan(cfg, dim, cohort, cfg.min_honest_owners, domain)


def run_epsilon(cfg: OwnerLevelDPConfig, dim: int, rounds: int) -> float:
    """The epsilon a fresh owner spends over ``rounds`` rounds of this (resolved) plan."""
    mu, q, l1, l2 = run_entry(cfg, dim)
    return skellam.epsilon_of([(mu, q, l1, l2, rounds)], cfg.delta)


def epsilon_against_owners(cfg: OwnerLevelDPConfig, dim: int, rounds: int) -> float:
    """The epsilon a fresh owner spends over ``rounds`` rounds against another owner that decrypts its
    single update (tenseal: owners share the secret key; under crypten no owner sees one). That update
    carries the owner's own share alone, ``Sk(mu / t, mu / t)`` with ``t = dp.min_honest_owners`` (the
    share ``noise_share`` draws), so the accountant takes ``mu / t``: ``sqrt(t)`` times less noise. The
    coin stays the owner's secret (a non-joining owner's update is its share alone, of the same form),
    so sampling at ``q`` amplifies against other owners too."""
    mu, q, l1, l2 = run_entry(cfg, dim)
    return skellam.epsilon_of([(mu / cfg.min_honest_owners, q, l1, l2, rounds)], cfg.delta)


def decode_sum(revealed: Revealed, gamma: float, sample_rate: float) -> Revealed:
    """The revealed integer sum (the parties' fixed-point decode may be off by a few 2^-16: the sum
    is an integer, so it is rounded) back to model units, weighted by the public expected number of
    owners that joined: ``q`` times the owners summed (each sends weight 1, joined or not). Never a
    count that depends on who joined: none is known, and that is the point."""
    total = np.rint(np.asarray(revealed.weighted_sum, np.float64)) / gamma
    return Revealed(total, sample_rate * float(revealed.total_weight))
