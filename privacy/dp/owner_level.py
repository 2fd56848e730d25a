"""Owner-level DP's mechanism: one owner's quantised update and its share of Skellam noise.

Pure (numpy, scipy; no Flower, no torch). It is not wired into the owner's round yet; the
accountant (``skellam.py``) takes the sensitivities :class:`Quantiser` states.

Why Skellam (Agarwal, Kairouz, Liu 2021, "The Skellam Mechanism for Differentially Private
Federated Learning"): ``Sk(a, a) + Sk(b, b) = Sk(a + b, a + b)`` exactly, so if each owner adds a
share ``Sk(mu / t, mu / t)`` per coordinate (``t`` = the owner's ``min_honest_owners``), the shares
of any ``t`` honest owners sum to exactly the planned ``Sk(mu, mu)`` (variance ``2 mu``), and ``n >=
t`` shares to ``Sk(n mu / t, ...)``. Sums of discrete Gaussians are only close to one, which the
distributed discrete Gaussian's analysis has to pay for.

The owner's update, step by step (``c`` = ``dp.clip_norm``, ``gamma`` integer units per unit):

1. clip the round delta to L2 norm ``c`` (a non-finite delta counts as zeros: nothing released
   may depend on the data except through the noised update, so this never raises on values);
2. scale by ``gamma`` and round each value to ``floor`` or ``ceil`` at random, unbiased (``P(ceil)``
   = the fraction), from the OS CSPRNG;
3. keep the rounding only if ``||z||_2 <= l2_bound`` (conditional randomised rounding, Kairouz,
   Liu, Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with
   Secure Aggregation", Theorem 1): ``l2_bound^2 = min(C^2 + d/4 + sqrt(2 ln(1/beta)) (C +
   sqrt(d)/2), (C + sqrt(d))^2)`` with ``C = gamma c``; one draw passes with probability ``>= 1 -
   beta`` whatever the delta. The paper re-draws until one passes; the number of draws would then
   depend on the delta, and so would the time the owner takes. Here there is one draw, and a draw
   that fails (probability ``<= beta = 1e-9``) encodes as zeros, whose norm is within the bound too,
   so the sensitivities below hold for every output. Against unbiasedness this costs at most
   ``sqrt(beta) * E||z||`` in L2 (Cauchy-Schwarz on the failed event): ~3e-5 of the clip norm;
4. add ``noise_share``: the sum the backend reveals is ``sum_i z_i + Sk(n mu / t, n mu / t)``.

Sensitivities of the sum to one owner's data (its whole update in or out): ``l2_bound`` in L2 and
``l1_bound = min(sqrt(d) l2_bound, l2_bound^2)`` in L1 (integers: ``|z_i| <= z_i^2``).

Randomness and its one approximation: every uniform comes from
:func:`~fedveil.privacy.dp.randomness.secret_uniform` (``os.urandom``, 53 bits each); nothing derives
from a seed or from anything the coordinator sends. Poisson draws are inverse CDFs of those
uniforms: the smallest ``k`` with ``F(k) >= u`` (``scipy.special.pdtr``, integer bisection;
``scipy.stats.poisson.ppf`` takes ~60 s per 32k draws at ``lambda = 1e9`` and returns NaN at
``2^40``). Uniforms on the grid ``{j / 2^53}`` cannot represent a tail of mass below ``2^-53``:
each Poisson draw is within total variation ``2 * 2^-53`` of the exact one in its tails, so one
round's noise (2 draws per coordinate per share) is within :func:`sampler_tv`, and an ``(eps,
delta)`` guarantee of the exact mechanism holds with ``delta + (1 + e^eps) * rounds *
sampler_tv(dim, shares)`` (:func:`sampler_delta`; 7.3e-10 per round at ``d = 16,384``, 100 shares).
Not covered by that figure, as for every floating-point sampler (Mironov 2012): inside the bulk
each value's probability is represented to the grid's ``2^-53`` and ``pdtr``'s float accuracy; an
exact sampler (Canonne, Kamath, Steinke 2020) would close it. Shares stay within
:data:`MAX_SHARE_LAMBDA` so every draw is an exact float64 integer and ``pdtr`` is accurate.

Wrap-around: a backend sums modulo ``m`` (BFV's plain modulus, crypten's ring after its fixed-point
bits) and lifts the sum to ``(-m/2, m/2)``. :func:`wrap_probability` bounds the chance that any
coordinate leaves that range (then the lift is wrong): ``|sum z_i| <= n l2_bound`` per coordinate,
and the Chernoff bound ``P(Sk(L, L) >= a) <= exp(-(a asinh(y) - 2L (sqrt(1 + y^2) - 1)))``, ``y = a /
(2L)`` (MGF ``exp(2L (cosh s - 1))``), twice (both tails) per coordinate, union over coordinates.
:func:`choose_gamma` takes the largest ``gamma`` within ``max_wrap`` (1e-9, to be counted in delta).

Headroom for the existing checks (issue 24 item 1): a noised update is ``z + share`` with ``|z_j|
<= ||z|| <= l2_bound``; :func:`share_bounds` gives ``(max_abs, max_l2)`` such that, with
probability ``>= 1 - p``, every coordinate of a share is within ``max_abs`` (about ``k sqrt(2 mu /
t)``, ``k = 8.0`` at ``d = 16,384``, ``p = 1e-9``) and its L2 norm within ``max_l2`` (about
``sqrt(2 d mu / t) (1 + 6 %)`` at that ``d``). A backend's per-value bound (tenseal's
``value_bound``) grows by ``max_abs`` and its norm bound (tenseal's ``norm_bound``, crypten's norm
check) by ``max_l2``, both in integer units (divide by ``gamma`` for the model's), and a check
then fails an honest owner with probability ``<= p``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

from fedveil.core.errors import UserError
from fedveil.privacy.dp.randomness import secret_uniform

# The largest Poisson mean of a share's draws: values stay exact float64 integers (< 2^53 with
# 40 sigmas of room) and pdtr's CDF resolves single values. At noise multiplier 1 and t = 10 it
# allows gamma * clip_norm up to 1.2e6, where rounding adds 1e-6 of the sensitivity: no loss.
MAX_SHARE_LAMBDA = float(2**36)
_UNIFORM_GRID = 2.0**-53  # secret_uniform's resolution: the tail mass each draw cannot represent
_BRACKET_SIGMAS = 40.0  # a Poisson tail beyond 40 sigma + 40 is below e^-60, far under 2^-53
_GUESS_FROM, _GUESS_REACH = 100.0, 32.0  # where a normal-quantile guess narrows the bisection, and by how much
BETA = 1e-9  # one rounding draw fails the L2 bound (and encodes as zeros) with at most this
_EXACT = 2.0**52  # |z| must stay an exact float64 integer for the norm check


def _positive(name: str, value: float, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not math.isfinite(value) or value <= 0:
        raise UserError(f"{name} must be a finite number > 0, got {value!r}: {fix}")
    return float(value)


def _count(name: str, value: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be an integer >= 1, got {value!r}: {fix}")
    return int(value)


@dataclass(frozen=True)
class Quantiser:
    """An owner's delta to integers: clip to ``clip_norm``, scale by ``gamma``, round at random.

    The bounds are public (they depend on the parameters only) and are the sensitivities the
    accountant takes.
    """

    clip_norm: float
    gamma: float
    dim: int
    beta: float = BETA

    def __post_init__(self) -> None:
        _positive("dp.clip_norm", self.clip_norm, "set the owner-level clip norm")
        _positive("gamma", self.gamma, "take it from choose_gamma")
        _count("dim", self.dim, "pass the adapter layout's number of values")
        if not 0 < self.beta < 1:
            raise UserError(f"beta must be in (0, 1), got {self.beta!r}: leave it at its default 1e-9")
        if self.gamma * self.clip_norm + math.sqrt(self.dim) >= _EXACT:
            raise UserError(f"gamma={self.gamma:g} x clip_norm={self.clip_norm:g} is beyond exact integers (2^52): "
                            "lower gamma (take it from choose_gamma)")

    @property
    def l2_bound(self) -> float:
        """The L2 norm no encoded update exceeds (Kairouz et al. 2021, Theorem 1)."""
        c, root_d = self.gamma * self.clip_norm, math.sqrt(self.dim)
        conditional = c * c + self.dim / 4 + math.sqrt(2 * math.log(1 / self.beta)) * (c + root_d / 2)
        return min(math.sqrt(conditional), c + root_d)

    @property
    def l1_bound(self) -> float:
        """The L1 norm no encoded update exceeds: ``min(sqrt(d) l2, l2^2)`` (integer vectors)."""
        l2 = self.l2_bound
        return min(math.sqrt(self.dim) * l2, l2 * l2)

    def encode(self, delta: np.ndarray) -> np.ndarray:
        """``delta`` (``dim`` floats) as int64 with ``||z||_2 <= l2_bound`` and ``E[z] ~ gamma * clip(delta)``:
        one rounding draw of ``dim`` uniforms, whatever the delta.

        Raises only on the shape (public); a non-finite delta encodes as zeros.
        """
        x = self.gamma * self.clip(delta)
        # float64 sums of squares of exact integers err by at most (d + 1) 2^-53 relative: accept
        # only below the bound shrunk by that much, so the true norm never exceeds it
        slack = (self.dim + 1) * 2.0**-53
        limit = self.l2_bound**2 * (1 - slack) / (1 + slack)
        # one draw whatever the data (a re-draw loop's count, so its time, would depend on it); a draw
        # over the bound (probability <= beta) is zeros, which are within it
        z = randomised_round(x)
        return z.astype(np.int64) if float(np.dot(z, z)) <= limit else np.zeros(self.dim, dtype=np.int64)

    def clip(self, delta: np.ndarray) -> np.ndarray:
        """``delta`` scaled to L2 norm at most ``clip_norm`` (float64; zeros if any value is not finite)."""
        values = np.asarray(delta)
        if values.ndim != 1 or values.size != self.dim:
            raise UserError(f"the update has shape {values.shape}, the quantiser expects ({self.dim},): "
                            "build the Quantiser with the adapter layout's size")
        values = values.astype(np.float64)
        if not np.isfinite(values).all():
            return np.zeros(self.dim)
        top = float(np.max(np.abs(values))) if values.size else 0.0
        if top == 0.0:
            return np.zeros(self.dim)
        unit = values / top  # norm taken on |values| <= 1 so it cannot overflow
        return unit * min(top, self.clip_norm / float(np.linalg.norm(unit)))

    def decode(self, total: np.ndarray) -> np.ndarray:
        """A revealed integer sum back to the model's units (float64).

        ``total`` must already be the centred lift of the backend's residues (in ``(-m/2, m/2)``):
        that is the backend's job, as the modulus is.
        """
        return np.asarray(total, dtype=np.float64) / self.gamma


def randomised_round(x: np.ndarray) -> np.ndarray:
    """Each value to ``floor`` or ``ceil`` with ``P(ceil) = x - floor(x)`` (to 2^-53): float64 integers."""
    low = np.floor(x)
    return low + (secret_uniform(x.size).reshape(x.shape) <= x - low)


def secret_poisson(lam: float, n: int) -> np.ndarray:
    """``n`` Poisson(``lam``) draws (float64 integers): inverse CDF of secret uniforms.

    For each uniform ``u`` the smallest ``k`` with ``pdtr(k, lam) >= u``, by bisection on integers
    between brackets whose CDFs are ~0 and ~1 in float64 (checked), narrowed around a normal-quantile
    guess where that brackets ``u`` too. Equal to ``scipy.stats.poisson.ppf`` below ``u = 1 - 1e-9``
    (above it scipy's search overshoots); a share of 16,384 values at the cap takes ~0.03 s.
    """
    if not 0 < lam <= MAX_SHARE_LAMBDA:
        raise UserError(f"a Poisson mean of {lam:g} is outside (0, 2^36]: lower mu or gamma (choose_gamma)")
    u = secret_uniform(n)
    reach = _BRACKET_SIGMAS * (math.sqrt(lam) + 1)
    low, high = max(-1.0, math.floor(lam - reach)), math.ceil(lam + reach)
    if not _cdf(np.array([low]), lam)[0] < _UNIFORM_GRID or _cdf(np.array([high]), lam)[0] < 1.0:
        raise RuntimeError(f"pdtr does not bracket Poisson({lam:g}) in [{low:g}, {high:g}]")
    lo, hi = np.full(n, low), np.full(n, high)  # invariant: cdf(lo) < u <= cdf(hi)
    if lam >= _GUESS_FROM:
        # Cornish-Fisher (skew 1/sqrt(lam)) lands within a unit or two of the quantile: bisecting
        # +-32 around it takes 6 steps, not ~36; where it does not bracket, the wide bracket stays
        with np.errstate(invalid="ignore", over="ignore"):
            z = special.ndtri(u)
            guess = np.floor(lam + math.sqrt(lam) * z + (z * z - 1) / 6)
            near_lo, near_hi = guess - _GUESS_REACH, guess + _GUESS_REACH
            fits = np.isfinite(guess) & (_cdf(near_lo, lam) < u) & (_cdf(near_hi, lam) >= u)
        lo, hi = np.where(fits, near_lo, lo), np.where(fits, near_hi, hi)
    while True:
        open_ = hi - lo > 1
        if not open_.any():
            return hi
        mid = np.floor((lo + hi) / 2)
        above = _cdf(mid, lam) >= u
        hi = np.where(open_ & above, mid, hi)
        lo = np.where(open_ & ~above, mid, lo)


def _cdf(k: np.ndarray, lam: float) -> np.ndarray:
    return np.where(k < 0, 0.0, special.pdtr(np.maximum(k, 0.0), lam))


def noise_share(dim: int, mu: float, honest: int) -> np.ndarray:
    """One owner's noise share: ``dim`` int64 values of ``Sk(mu/honest, mu/honest)``.

    Any ``honest`` such shares sum to ``Sk(mu, mu)`` per coordinate (variance ``2 mu``). Fresh
    CSPRNG draws on every call.
    """
    dim = _count("dim", dim, "pass the adapter layout's number of values")
    lam = _share_lambda(mu, honest)
    return (secret_poisson(lam, dim) - secret_poisson(lam, dim)).astype(np.int64)


def _share_lambda(mu: float, honest: int, drawn: bool = True) -> float:
    mu = _positive("mu", mu, "plan the owner-level noise (mu = (sigma * gamma * clip_norm)^2 / 2)")
    honest = _count("min_honest_owners", honest, "set it in the owner's policy")
    lam = mu / honest
    if drawn and lam > MAX_SHARE_LAMBDA:
        raise UserError(f"a share's Skellam parameter mu/t = {lam:.3g} is over 2^36: "
                        "lower gamma (choose_gamma caps it)")
    return lam


def _log_tail(a: float, lam: float) -> float:
    """log of the Chernoff bound on ``P(Sk(lam, lam) >= a)``, ``a > 0``."""
    y = a / (2 * lam)
    # sqrt(1 + y^2) - 1 written so that it keeps its digits for small y
    return 2 * lam * (y * y / (math.sqrt(1 + y * y) + 1)) - a * math.asinh(y)


def wrap_probability(dim: int, owners: int, mu: float, honest: int, l2_bound: float, modulus: int) -> float:
    """An upper bound on P(some coordinate of the noised sum of ``owners`` updates leaves ``(-m/2, m/2)``).

    Each update has ``|z_j| <= l2_bound``; the ``owners`` shares sum to ``Sk(owners mu / honest, ...)``.
    """
    dim = _count("dim", dim, "pass the adapter layout's number of values")
    owners = _count("owners", owners, "pass the most owners one round sums")
    lam = owners * _share_lambda(mu, honest, drawn=False)
    l2_bound = _positive("l2_bound", l2_bound, "take it from Quantiser.l2_bound")
    modulus = _count("modulus", modulus, "pass the backend's plain modulus or ring size")
    room = modulus / 2 - owners * l2_bound
    if room <= 0:
        return 1.0
    return min(1.0, math.exp(math.log(2 * dim) + _log_tail(room, lam)))


def choose_gamma(clip_norm: float, dim: int, owners: int, mu_per_unit2: float, honest: int, modulus: int,
                 max_wrap: float = 1e-9, beta: float = BETA) -> float:
    """The largest ``gamma`` with ``wrap_probability <= max_wrap``, capped so a share's draws stay exact.

    Noise is planned in units of the clip norm, so it scales with ``gamma``: ``mu = mu_per_unit2 *
    gamma^2``, ``mu_per_unit2 = (sigma * clip_norm)^2 / 2`` for a noise multiplier ``sigma``. The
    cap (``mu / honest <= MAX_SHARE_LAMBDA``) binds on wide moduli (2^44 and up) and costs nothing:
    rounding then adds under 3e-6 to the sensitivity.
    """
    clip_norm = _positive("dp.clip_norm", clip_norm, "set the owner-level clip norm")
    mu_per_unit2 = _positive("mu_per_unit2", mu_per_unit2, "pass (sigma * clip_norm)^2 / 2")
    honest = _count("min_honest_owners", honest, "set it in the owner's policy")
    if not 0 < max_wrap < 1:
        raise UserError(f"max_wrap must be in (0, 1), got {max_wrap!r}: leave it at 1e-9")

    def wraps(gamma: float) -> float:
        bound = Quantiser(clip_norm, gamma, dim, beta).l2_bound
        return wrap_probability(dim, owners, mu_per_unit2 * gamma * gamma, honest, bound, modulus)

    # (1 - 1e-9): the square of the root must not round above the cap
    ceiling = min(math.sqrt(honest * MAX_SHARE_LAMBDA / mu_per_unit2) * (1 - 1e-9), (_EXACT / 2) / clip_norm)
    smallest = 1.0 / clip_norm  # one integer unit per clip norm: coarser than that quantises to noise
    if wraps(min(smallest, ceiling)) > max_wrap:
        raise UserError(f"a modulus of {modulus:.4g} cannot sum {owners} owners' updates of {dim} values with their "
                        f"noise within wrap probability {max_wrap:g}: use a wider modulus or fewer owners per round")
    if wraps(ceiling) <= max_wrap:
        return ceiling
    lo, hi = math.log(smallest), math.log(ceiling)  # wraps(e^lo) <= max_wrap < wraps(e^hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if wraps(math.exp(mid)) <= max_wrap else (lo, mid)
    return math.exp(lo)


def share_bounds(dim: int, mu: float, honest: int, p: float = 1e-9) -> tuple[float, float]:
    """``(max_abs, max_l2)``: with probability ``>= 1 - p`` a share's every coordinate is within
    ``max_abs`` and its L2 norm within ``max_l2`` (integer units).

    ``max_abs``: the Chernoff tail at ``p / (2 dim)`` per coordinate. ``max_l2``: on that event
    ``||X||^2 = sum min(X_j^2, max_abs^2)``, whose terms have mean ``2 lam`` and second moment ``E
    X^4 = 2 lam + 12 lam^2`` (Skellam's cumulants); Bernstein's inequality at ``p / 2`` bounds it.
    """
    dim = _count("dim", dim, "pass the adapter layout's number of values")
    lam = _share_lambda(mu, honest)
    if not 0 < p < 1:
        raise UserError(f"p must be in (0, 1), got {p!r}: pass the failure probability the check may have")
    target = math.log(p / (4 * dim))  # P(|X_j| >= a) <= 2 e^tail, over dim coordinates: p / 2
    lo, hi = 0.0, 1.0
    while _log_tail(hi, lam) > target:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _log_tail(mid, lam) <= target else (mid, hi)
    max_abs = float(math.ceil(hi))
    log_term = math.log(2 / p)
    cap, variance = max_abs * max_abs, dim * (2 * lam + 12 * lam * lam)
    excess = cap * log_term / 3 + math.sqrt((cap * log_term / 3) ** 2 + 2 * variance * log_term)
    max_l2 = min(math.sqrt(2 * lam * dim + excess), math.sqrt(dim) * max_abs)
    return max_abs, max_l2


def sampler_tv(dim: int, shares: int) -> float:
    """Total variation between one round's sampled noise (``shares`` shares of ``dim`` values) and exact Skellam."""
    return 2 * _count("dim", dim, "pass the adapter layout's number of values") * \
        _count("shares", shares, "pass the owners whose shares a round sums") * 2 * _UNIFORM_GRID


def sampler_delta(dim: int, shares: int, rounds: int, epsilon: float) -> float:
    """What to add to the accountant's delta for the sampler's tails over ``rounds`` rounds at ``epsilon``."""
    rounds = _count("rounds", rounds, "pass the rounds the guarantee covers")
    if not math.isfinite(epsilon) or epsilon < 0:
        raise UserError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    return (1 + math.exp(epsilon)) * rounds * sampler_tv(dim, shares)
