"""Owner-level accounting for the distributed Skellam mechanism, with owners that sample themselves.

The unit is the whole owner: neighbouring federations differ by one owner's quantised update z, added
or removed. z is an integer vector with ``||z||_1 <= l1`` and ``||z||_2 <= l2``. The sum secure
aggregation reveals carries noise Sk(mu, mu) per coordinate (Poisson(mu) - Poisson(mu), variance
2*mu): shares drawn by the honest owners sum to it exactly, since sums of independent Skellams are
Skellam. Each round each owner joins with the public probability q (Poisson sampling by the owners
themselves; q = 1 claims no amplification). An entry ``(mu, q, l1, l2, rounds)`` is ``rounds`` such
releases; the guarantee is (epsilon, delta)-DP for one owner over every entry of its history.

The bounds, and what they were checked against:

- :func:`rdp`: Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially Private
  Federated Learning" (NeurIPS), the multi-dimensional Skellam RDP bound (Thm 3.5 / Cor 3.6), for
  integer orders alpha > 1. With V = 2*mu the noise's variance the paper states it as
  ``alpha*l2^2/(2V) + min(((2alpha-1)*l2^2 + 6*l1)/(4V^2), 3*l1/(2V))``; in our mu that is
  ``alpha*l2^2/(4mu) + min(((2alpha-1)*l2^2 + 6*l1)/(16mu^2), 3*l1/(4mu))``. Checked against the
  authors' reference code, google-research/federated ``distributed_dp/accounting_utils.py``
  (``_skellam_rdp``, whose ``central_var`` is V and whose ``scale`` is 1 in the integer domain).
- :func:`subsampled_rdp`: the owner joins with probability q, so one round releases the mixture
  M = (1-q) P + q Q, where P is the aggregate's law without the owner's z and Q = P shifted by z. For
  integer alpha the bound is the binomial expansion over :func:`rdp`, the formula of Mironov, Talwar,
  Zhang 2019 ("Renyi Differential Privacy of the Sampled Gaussian Mechanism", A_alpha) and of Zhu &
  Wang 2019's tight bound ("Poisson Subsampled Renyi Differential Privacy", ICML; proven there for
  mechanisms that meet a condition, the Gaussian and the Laplace), here with the Skellam's eps(l)::

      (1/(alpha-1)) log[ (1-q)^(alpha-1) (alpha*q - q + 1)
                         + sum_{l=2..alpha} C(alpha,l) q^l (1-q)^(alpha-l) e^((l-1) eps(l)) ]

  taken as the minimum with the unsampled eps(alpha) (quasi-convexity of the divergence). It is
  sound for this mechanism in both directions of add/remove, for every z the quantiser allows:

  * remove (D_alpha(M || P)): with L = Q/P, ``E_P[(M/P)^alpha] = sum_l C(alpha,l) (1-q)^(alpha-l) q^l
    E_P[L^l]`` exactly, ``E_P[L^l] = e^((l-1) D_l(Q || P)) <= e^((l-1) eps(l))`` by Agarwal et al.,
    and every coefficient is non-negative.
  * add (D_alpha(P || M)) is at most remove, because the pair is symmetric: Q(x) = P(y + z - x), y
    the other owners' contribution (condition on it: a divergence between mixtures with shared
    weights is at most the largest), each coordinate's Sk(mu, mu) being symmetric. Mironov et al.
    prove add <= remove for the Gaussian; the proof here needs only Q = P o T with T an involution.
    Put a = 1-q+qL, c = 1-q+q/L, f(x) = x^alpha - x^(1-alpha) and phi(L) = f(a) + L f(c). Remove
    minus add is
    ``E_P[(M/P)^alpha] - E_P[(P/M)^(alpha-1)] = E_P[f(a)] = E_P[L f(c)]`` (substitute x -> T x), so
    it is ``E_P[phi(L)]/2``, and phi >= 0: phi(1) = 0, phi(1/L) = phi(L)/L, and for L > 1, with
    s = alpha - 1/2, A = ln a and C = -ln c (A >= q ln L >= C > 0 by concavity of log), phi >= 0
    reads ``sinh(sA)/sinh(sC) >= L sqrt(c/a)``, whose left side grows with s (x coth(sx) grows with
    x) and whose two sides are equal at s = 1/2 (there phi = a + L c - 1 - L = 0).

  The tests compute both directions exactly (1-D, and a 2-D shift with its l1 and l2) and check the
  bound against them. Zhu & Wang's general bound for any mechanism (a factor 3 on the l >= 3 terms),
  which the authors' Skellam code uses (``_compute_rdp_subsampled``, upper_bound=True), is sound too
  but about 3x the exact epsilon: it adds up to log(3)/(alpha-1) per round.
- RDP composes by addition; RDP -> (epsilon, delta) is dp-accounting's ``compute_epsilon``
  (Balle et al. 2020, Prop. 12), the conversion its own RDP accountant uses.

``tests/privacy/test_skellam_accounting.py`` checks these against an independent computation of the
privacy loss (exact Renyi divergences of 1-D and 2-D Skellams and their mixtures by summing over the
support, and dp-accounting's PLD of the two PMFs), documented with its figures in docs/privacy.md
("Owner-level DP: the accountant").

Pure functions: no Flower, no torch. ``epsilon_of`` and ``mu_for`` are memoised per process, as in
``accounting.py``.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Sequence

import numpy as np
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon
from scipy.special import gammaln

from fedveil.core.errors import UserError
from fedveil.privacy.dp.accounting import BudgetUnreachable

Entry = tuple[float, float, float, float, int]  # (mu, q, l1, l2, rounds)

# Integer orders only: both bounds are proven for them. The tail reaches the orders that small
# epsilons (large mu, many rounds) pick.
ORDERS: tuple[float, ...] = tuple(float(a) for a in (*range(2, 129), 160, 192, 256, 384, 512, 768, 1024))
_MAX_ORDER = int(max(ORDERS))

MU_TOLERANCE = 1e-4  # mu_for's mu is the smallest to this relative step
MAX_MU = 1e15  # the search's ceiling: a standard deviation of 4.5e7 per coordinate, past any sane plan


def rdp(alpha: float, mu: float, l1: float, l2: float) -> float:
    """RDP of order ``alpha`` of one release of z + Sk(mu, mu) per coordinate (Agarwal et al. 2021).

    ``alpha * l2^2/(4 mu) + min(((2 alpha - 1) l2^2 + 6 l1)/(16 mu^2), 3 l1/(4 mu))``: the Gaussian
    mechanism's RDP at variance 2*mu plus a discretisation term that vanishes as mu grows.

    Parameters
    ----------
    alpha : an integer order >= 2 (the bound is proven for integer orders)
    mu : each Poisson's mean (> 0); the noise's variance per coordinate is 2*mu
    l1, l2 : bounds (> 0) on the owner's integer update, ``||z||_1 <= l1`` and ``||z||_2 <= l2``
    """
    order = _check_order(alpha)
    _check_noise(mu, l1, l2)
    return float(_rdp_curve(np.array([order], dtype=float), mu, l1, l2)[0])


def subsampled_rdp(alpha: int, q: float, mu: float, l1: float, l2: float) -> float:
    """RDP of order ``alpha`` of one round in which the owner joins with probability ``q``
    (the binomial expansion over :func:`rdp`, sound for the Skellam's symmetric pair: module
    docstring; ``q = 1``: :func:`rdp`).

    Holds only where the coordinator cannot tell whether the owner joined: an owner that does not
    join sends an update of the same size carrying only its noise share, under secure aggregation.
    """
    order = _check_order(alpha)
    _check_noise(mu, l1, l2)
    _check_q(q)
    return float(_subsampled_curve((order,), float(q), float(mu), float(l1), float(l2))[0])


def epsilon_of(history: Sequence[Entry], delta: float) -> float:
    """Epsilon one owner has spent over ``history`` at ``delta`` (0.0 for an empty history).

    Each entry ``(mu, q, l1, l2, rounds)`` adds ``rounds`` times its subsampled RDP curve over
    :data:`ORDERS`; dp-accounting converts the sum to (epsilon, delta).
    """
    _check_delta(delta)
    return _epsilon(_normalise(history), float(delta))


def mu_for(target_epsilon: float, delta: float, q: float, rounds: int, l1: float, l2: float,
           spent: Sequence[Entry] = ()) -> float:
    """The smallest mu (to a relative 1e-4) with which ``rounds`` more rounds at ``q``, after the
    ``spent`` history, keep the owner's epsilon within ``target_epsilon``.

    Raises :class:`~fedveil.privacy.dp.accounting.BudgetUnreachable` when ``spent`` has used the
    target already, or no mu up to :data:`MAX_MU` meets it.
    """
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise UserError(f"dp.target_epsilon={target_epsilon:g} must be a positive number: e.g. 4")
    if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 1:
        raise UserError(f"rounds={rounds} must be a whole number >= 1: plan the noise for the rounds left")
    _check_delta(delta)
    _check_noise(1.0, l1, l2)
    _check_q(q)
    return _mu_for(float(target_epsilon), float(delta), float(q), int(rounds), float(l1), float(l2),
                   _normalise(spent))


# --- the curves -------------------------------------------------------------------------------

def _rdp_curve(orders: np.ndarray, mu: float, l1: float, l2: float) -> np.ndarray:
    variance = 2.0 * mu  # the paper's mu; the reference code's central_var
    gaussian = orders * l2 ** 2 / (2.0 * variance)
    discrete = np.minimum(((2.0 * orders - 1.0) * l2 ** 2 + 6.0 * l1) / (4.0 * variance ** 2),
                          3.0 * l1 / (2.0 * variance))
    return gaussian + discrete


def _subsampled_curve(orders: Sequence[float], q: float, mu: float, l1: float, l2: float) -> np.ndarray:
    order_array = np.asarray(orders, dtype=float)
    plain = _rdp_curve(order_array, mu, l1, l2)
    if q == 1.0:
        return plain
    log_q, log_1q = math.log(q), math.log1p(-q)
    bound = np.empty_like(order_array)
    for rows, log_binom, ell in _log_binomials(tuple(orders)):
        a = order_array[rows]
        # The l = 0..alpha weights C(a,l) q^l (1-q)^(a-l) sum to 1, so the sum inside the log is
        # 1 + sum_{l>=2} weight_l * (e^((l-1) eps(l)) - 1): positive terms only, summed in logs, where
        # 1 + (the sum of the terms) would round away the small divergences of small q.
        x = (ell - 1) * _rdp_curve(ell, mu, l1, l2)
        log_expm1 = np.where(x > 1.0, x + np.log1p(-np.exp(-np.maximum(x, 1.0))),
                             np.log(np.expm1(np.minimum(x, 1.0))))
        log_terms = log_binom + ell * (log_q - log_1q) + log_expm1  # + a*log(1-q), added per row below
        top = log_terms.max(axis=1)
        log_excess = top + np.log(np.exp(log_terms - top[:, None]).sum(axis=1)) + a * log_1q
        bound[rows] = np.logaddexp(0.0, log_excess) / (a - 1)
    return np.minimum(bound, plain)


@lru_cache(maxsize=4)
def _log_binomials(orders: tuple[float, ...]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """log C(a, l) for l = 2..a, in blocks of orders within a factor 2 of each other (rows; -inf where
    l > a), with each block's row indices and its l: a fraction of one orders x max-order matrix."""
    ranked = sorted(range(len(orders)), key=lambda i: orders[i])
    blocks: list[list[int]] = []
    for i in ranked:
        if blocks and orders[i] <= 2 * orders[blocks[-1][0]]:
            blocks[-1].append(i)
        else:
            blocks.append([i])
    out = []
    for rows in blocks:
        a = np.asarray([orders[i] for i in rows], dtype=float)[:, None]
        ell = np.arange(2, int(a.max()) + 1, dtype=float)
        inside = ell[None, :] <= a
        log_binom = np.where(inside, gammaln(a + 1) - gammaln(ell + 1) - gammaln(np.where(inside, a - ell + 1, 1.0)),
                             -np.inf)
        out.append((np.asarray(rows), log_binom, ell))
    return out


@lru_cache(maxsize=1024)
def _epsilon(history: tuple[Entry, ...], delta: float) -> float:
    if not history:
        return 0.0
    total = np.zeros(len(ORDERS))
    for mu, q, l1, l2, rounds in history:
        total += rounds * _curve(mu, q, l1, l2)
    eps, _ = compute_epsilon(ORDERS, total, delta)
    return float(eps)


@lru_cache(maxsize=4096)
def _curve(mu: float, q: float, l1: float, l2: float) -> np.ndarray:
    return _subsampled_curve(ORDERS, q, mu, l1, l2)


@lru_cache(maxsize=64)  # a refusal (BudgetUnreachable) is not cached: it is raised again each time
def _mu_for(target: float, delta: float, q: float, rounds: int, l1: float, l2: float,
            spent: tuple[Entry, ...]) -> float:
    if spent and _epsilon(spent, delta) >= target:
        raise BudgetUnreachable(
            f"the owner-level budget epsilon={target:g} is already spent; no further rounds are possible: "
            "raise dp.target_epsilon or stop here")

    def meets(mu: float) -> bool:
        return _epsilon((*spent, (mu, q, l1, l2, rounds)), delta) <= target

    low, high = 1.0, 1.0  # epsilon falls as mu grows: bracket by doubling, then bisect geometrically
    if meets(high):
        while meets(low) and low > 1e-12:
            low /= 2
        high = 2 * low
    else:
        while not meets(high):
            low, high = high, high * 2
            if high > MAX_MU:
                raise BudgetUnreachable(
                    f"dp.target_epsilon={target:g} is unreachable in {rounds} rounds at owner sampling rate "
                    f"{q:.4g} with Skellam noise mu <= {MAX_MU:g}: raise the target, or plan fewer rounds")
    while high / low > 1 + MU_TOLERANCE:
        mid = math.sqrt(low * high)
        low, high = (low, mid) if meets(mid) else (mid, high)
    return float(high)


# --- input checks: one line each, naming the fix ----------------------------------------------

def _normalise(history: Sequence[Entry]) -> tuple[Entry, ...]:
    out = []
    for entry in history:
        if len(entry) != 5:
            raise UserError(f"an owner-level entry {tuple(entry)!r} must be (mu, q, l1, l2, rounds)")
        mu, q, l1, l2, rounds = entry
        _check_noise(mu, l1, l2)
        _check_q(q)
        if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
            raise UserError(f"an owner-level entry's rounds={rounds} must be a whole number >= 0")
        if int(rounds) > 0:
            out.append((float(mu), float(q), float(l1), float(l2), int(rounds)))
    return tuple(out)


def _check_order(alpha: float) -> int:
    if not (isinstance(alpha, numbers.Real) and math.isfinite(alpha) and alpha == int(alpha) and alpha >= 2):
        raise UserError(f"RDP order alpha={alpha} must be a whole number >= 2: the Skellam bounds hold for "
                        "integer orders only")
    if alpha > _MAX_ORDER:
        raise UserError(f"RDP order alpha={alpha:g} is above the largest this accountant uses ({_MAX_ORDER})")
    return int(alpha)


def _check_noise(mu: float, l1: float, l2: float) -> None:
    if not (math.isfinite(mu) and mu > 0):
        raise UserError(f"Skellam noise mu={mu:g} must be a positive number (each owner's shares sum to "
                        "Sk(mu, mu)): plan it with mu_for")
    for name, value in (("l1", l1), ("l2", l2)):
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"the owner's update bound {name}={value:g} must be a positive number: it bounds "
                            f"the {name} norm of the clipped, quantised update")


def _check_q(q: float) -> None:
    if not (math.isfinite(q) and 0 < q <= 1):
        raise UserError(f"the owner sampling probability q={q:g} must be in (0, 1]: q=1 means every round "
                        "(no amplification)")


def _check_delta(delta: float) -> None:
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise UserError(f"dp.delta={delta:g} must be in (0, 1): e.g. 1e-5, below 1/(number of owners)")
