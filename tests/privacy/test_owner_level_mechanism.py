"""Owner-level DP's mechanism (privacy/dp/owner_level.py): noise, rounding, wrap-around, headroom.

Every statistical test fails falsely with probability at most 1e-8 (stated at each); the bounds
checked against exact figures (scipy.stats.skellam) cannot fail by chance.
"""

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize, stats

from fedveil.core.errors import UserError
from fedveil.privacy.dp import owner_level
from fedveil.privacy.dp.owner_level import (MAX_SHARE_LAMBDA, Quantiser, choose_gamma, noise_share, randomised_round,
                                            sampler_delta, sampler_tv, secret_poisson, share_bounds, wrap_probability)

FALSE_FAILURE = 1e-8
Z = stats.norm.isf(FALSE_FAILURE / 2)  # two-sided z at 1e-8: 5.73

# The realistic federation of issue 24: a 16,384-value adapter, 100 owners, t = 10, noise multiplier 1
DIM, OWNERS, HONEST, SIGMA, CLIP = 16_384, 100, 10, 1.0, 1.0
# crypten: Z_2^64 with 16 fractional bits, and the parties keep what they compute under 2^61
# (mpc.RING_HEADROOM): integers in (-2^61, 2^61) / 2^16, a modulus of 2^46
CRYPTEN_MODULUS = 2 * 2**61 // 2**16
BFV_MODULUS = 2**44  # a 45-bit plain modulus t is at least 2^44


def test_the_sum_of_owners_encoded_noised_updates_has_the_planned_mean_and_variance():
    owners, honest, mu, dim, rounds = 5, 3, 60.0, 2000, 20
    quantiser = Quantiser(clip_norm=1.0, gamma=30.0, dim=dim)
    rng = np.random.default_rng(7)  # the test's deltas only; the mechanism draws from the CSPRNG
    deltas = [rng.standard_normal(dim) * s for s in (0.01, 0.02, 0.05, 0.1, 1.0)]  # the last ones are clipped
    expected = sum(quantiser.gamma * quantiser.clip(d) for d in deltas)
    fraction = [x - np.floor(x) for x in (quantiser.gamma * quantiser.clip(d) for d in deltas)]
    rounding_var = float(np.mean(sum(p * (1 - p) for p in fraction)))
    planned_var = rounding_var + 2 * owners * mu / honest  # the shares of n owners: Sk(n mu / t, n mu / t)

    residuals = np.concatenate([
        sum(quantiser.encode(d) + noise_share(dim, mu, honest) for d in deltas) - expected for _ in range(rounds)])
    n = residuals.size
    # mean: z-test at 1e-8 (conditional rounding's shrinkage is < 1 unit in L2 per owner: < 0.01 per value here)
    assert abs(residuals.mean()) <= Z * math.sqrt(planned_var / n) + owners / math.sqrt(dim)
    # variance: z-test at 1e-8 on the sample variance, its spread from the sample's fourth moment
    centred = residuals - residuals.mean()
    spread = math.sqrt((np.mean(centred**4) - planned_var**2) / n)
    assert abs(centred.var() - planned_var) <= Z * spread
    # the planned noise dominates: 2 n mu / t = 200, rounding adds the rest
    assert 2 * owners * mu / honest / planned_var > 0.99


def test_honest_shares_sum_to_skellam_mu_mu_in_variance_and_pmf():
    mu, honest, n = 6.0, 4, 40_000
    total = sum(noise_share(n, mu, honest) for _ in range(honest))
    assert total.dtype == np.int64
    # chi-square against scipy's Sk(mu, mu) pmf, bins with fewer than 20 expected merged into the tails
    support = np.arange(-40, 41)
    pmf = stats.skellam.pmf(support, mu, mu)
    keep = pmf * n >= 20
    low, high = support[keep][0], support[keep][-1]
    observed = np.array([np.sum(total < low)] + [np.sum(total == k) for k in range(low, high + 1)]
                        + [np.sum(total > high)])
    expected = n * np.concatenate([[stats.skellam.cdf(low - 1, mu, mu)], stats.skellam.pmf(np.arange(low, high + 1),
                                   mu, mu), [stats.skellam.sf(high, mu, mu)]])
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, len(observed) - 1) > FALSE_FAILURE
    # variance 2 mu; the sample variance's spread from Sk's fourth moment 2 mu + 12 mu^2
    assert abs(total.var() - 2 * mu) <= Z * math.sqrt((2 * mu + 12 * mu**2 - 4 * mu**2) / n)


@pytest.mark.parametrize("lam", [0.3, 1e4, MAX_SHARE_LAMBDA])
def test_poisson_draws_match_their_distribution_up_to_the_share_cap(lam):
    n, bins = 20_000, 40
    draws = secret_poisson(lam, n)
    assert np.all(draws == np.round(draws)) and draws.min() >= 0
    if lam < 1:  # a chi-square on the few values
        observed = np.bincount(draws.astype(int), minlength=4)[:4]
        observed[-1] += int(np.sum(draws >= 4))
        expected = n * np.append(stats.poisson.pmf(np.arange(3), lam), stats.poisson.sf(2, lam))
    else:  # about equiprobable bins cut at integers, their mass from scipy's Poisson CDF
        cuts = np.unique(np.floor(lam + math.sqrt(lam) * stats.norm.ppf(np.linspace(0, 1, bins + 1)[1:-1])))
        cdf = np.concatenate([[0.0], stats.poisson.cdf(cuts, lam), [1.0]])
        below = np.concatenate([[0], np.searchsorted(np.sort(draws), cuts, side="right"), [n]])
        observed, expected = np.diff(below), n * np.diff(cdf)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, len(observed) - 1) > FALSE_FAILURE


@pytest.mark.parametrize("lam", [0.3, 3.0, 150.0, 1e5, 1e8])
def test_poisson_draws_are_exactly_scipys_inverse_cdf_of_the_uniforms(monkeypatch, lam):
    # the same uniforms through scipy.stats.poisson.ppf (too slow to use at large lam, NaN at 2^40)
    u = np.concatenate([[2.0**-53, 1e-12, 1 - 1e-12, 1 - 2.0**-53], np.linspace(1e-4, 1 - 1e-4, 300)])
    monkeypatch.setattr(owner_level, "secret_uniform", lambda n: u[:n].copy())
    draws = secret_poisson(lam, u.size)
    # the definition: the smallest k with cdf(k) >= u, at every uniform, the 53-bit extremes included
    assert np.all(stats.poisson.cdf(draws, lam) >= u) and np.all(stats.poisson.cdf(draws - 1, lam) < u)
    # scipy's ppf agrees except above 1 - 1e-9, where its search overshoots (at lam = 1e8, u = 1 - 1e-12,
    # by 374 values whose cdf is already >= u)
    bulk = u < 1 - 1e-9
    assert np.array_equal(draws[bulk], stats.poisson.ppf(u[bulk], lam))


def test_randomised_rounding_is_unbiased():
    x = np.array([0.0, 0.5, -0.25, 3.999, 7.1, -2.75, 100.0, 0.01] * 8)
    draws = 4000
    z = np.stack([randomised_round(x) for _ in range(draws)])
    assert np.all((z == np.floor(x)) | (z == np.ceil(x)))
    p = x - np.floor(x)
    varying = p > 0
    assert np.all(z[:, ~varying] == x[~varying])
    # each coordinate rounds up Bin(draws, p) times: exact two-sided bands (a normal band was too narrow
    # at p = 0.999 and 0.01), Bonferroni over the coordinates
    alpha = FALSE_FAILURE / (2 * varying.sum())
    ups = np.sum(z[:, varying] == np.ceil(x[varying]), 0)
    assert np.all(stats.binom.ppf(alpha, draws, p[varying]) <= ups)
    assert np.all(ups <= stats.binom.isf(alpha, draws, p[varying]))


def test_conditional_rounding_never_exceeds_l2_bound_and_a_failed_draw_is_zeros():
    # every scaled value halfway between integers: ||rounding error||^2 = d/4 exactly, so the norm's
    # spread comes from <x, e> alone; at beta = e^-0.5 (not the default 1e-9) the bound binds often
    dim, draws = 64, 3000
    quantiser = Quantiser(clip_norm=1.0, gamma=28.0, dim=dim, beta=math.exp(-0.5))
    delta = np.full(dim, 3.5 / 28.0)  # norm 1: the clip leaves it (to rounding), gamma * delta = 3.5 everywhere
    x = quantiser.gamma * quantiser.clip(delta)
    assert x == pytest.approx(np.full(dim, 3.5))
    bound = quantiser.l2_bound
    plain = np.stack([randomised_round(x) for _ in range(draws)])
    over = np.mean(np.sum(plain**2, 1) > bound**2)
    assert 0.05 < over < 1 - math.exp(-0.5)  # the bound is exercised, and within Theorem 1's beta
    encoded = np.stack([quantiser.encode(delta) for _ in range(draws)])
    assert encoded.dtype == np.int64
    assert max(sum(int(v) ** 2 for v in row) for row in encoded) <= bound**2  # exact integers
    zeros = ~encoded.any(1)
    assert np.all((encoded[~zeros] == 3) | (encoded[~zeros] == 4))  # a kept draw is a rounding of 3.5
    spread = stats.norm.isf(FALSE_FAILURE / 2) * math.sqrt(over * (1 - over) * (1 / draws + 1 / draws))
    assert abs(zeros.mean() - over) <= spread  # a failed draw is zeros, never a second draw
    assert quantiser.decode(encoded.sum(0)) == pytest.approx(encoded.sum(0) / 28.0)


@pytest.mark.parametrize("delta", [np.zeros(256), np.full(256, 0.5 / 16), np.full(256, 1e9), np.full(256, np.nan)])
def test_encode_draws_the_same_number_of_uniforms_whatever_the_delta(monkeypatch, delta):
    """One rounding draw of d uniforms: how long encoding takes says nothing about the delta (a re-draw
    loop until the norm passes would take longer for some deltas than others)."""
    calls, real = [], owner_level.secret_uniform
    monkeypatch.setattr(owner_level, "secret_uniform", lambda n: calls.append(n) or real(n))
    Quantiser(clip_norm=0.5, gamma=100.0, dim=256).encode(delta)
    assert calls == [256]


def test_bounds_and_clipping():
    quantiser = Quantiser(clip_norm=0.5, gamma=100.0, dim=16, beta=math.exp(-0.5))
    c, d = 50.0, 16
    assert quantiser.l2_bound == pytest.approx(math.sqrt(c * c + d / 4 + (c + 2)))  # sqrt(2 ln(1/beta)) = 1
    root = math.sqrt(2 * math.log(1e9))  # the default beta 1e-9: 6.44
    assert Quantiser(clip_norm=0.5, gamma=100.0, dim=16).l2_bound == pytest.approx(math.sqrt(c * c + d / 4
                                                                                              + root * (c + 2)))
    assert quantiser.l1_bound == pytest.approx(4 * quantiser.l2_bound)
    coarse = Quantiser(clip_norm=1.0, gamma=0.5, dim=16, beta=math.exp(-0.5))
    assert coarse.l2_bound == pytest.approx(math.sqrt(0.25 + 4 + 2.5))
    assert coarse.l1_bound == pytest.approx(6.75)  # integers: l1 <= l2^2, below sqrt(d) l2 here
    strict = Quantiser(clip_norm=1.0, gamma=1.0, dim=1, beta=1e-6)
    assert strict.l2_bound == pytest.approx(2.0)  # (C + sqrt d) is the smaller branch at a tiny beta
    big = np.full(16, 1e300)
    assert np.linalg.norm(quantiser.clip(big)) == pytest.approx(0.5)
    assert np.linalg.norm(quantiser.clip(np.full(16, 1e-3))) == pytest.approx(4e-3)
    nan = np.full(16, 1.0)
    nan[3] = np.nan
    assert np.all(quantiser.encode(nan) == 0)
    assert np.all(quantiser.encode(np.full(16, np.inf)) == 0)


def test_two_calls_draw_independent_noise_whatever_the_global_seeds():
    np.random.seed(0)
    first = noise_share(20_000, 50.0, 5)
    np.random.seed(0)
    second = noise_share(20_000, 50.0, 5)
    assert not np.array_equal(first, second)
    r = np.corrcoef(first, second)[0, 1]
    assert abs(r) <= Z / math.sqrt(first.size)  # uncorrelated, z-test at 1e-8
    quantiser = Quantiser(clip_norm=1.0, gamma=10.5, dim=200)
    delta = np.full(200, 1.0 / math.sqrt(200))  # every scaled value has a fractional part
    assert not np.array_equal(quantiser.encode(delta), quantiser.encode(delta))


def test_wrap_bound_is_above_the_measured_wrap_rate_at_a_tight_modulus():
    owners, dim, honest, mu, rounds = 4, 8, 2, 200.0, 10_000
    quantiser = Quantiser(clip_norm=1.0, gamma=20.0, dim=dim, beta=math.exp(-0.5))  # a smaller bound: a tighter test
    delta = np.zeros(dim)
    delta[0] = 5.0  # every owner at its clip norm on one coordinate: the sum's worst coordinate
    encoded = [quantiser.encode(delta) for _ in range(owners)]
    assert all(np.array_equal(z, encoded[0]) for z in encoded) and encoded[0][0] == 20  # integers: exact
    # coordinates are independent, so one long draw per owner, cut into rounds, is the same as a draw per round
    noised = sum(encoded) + sum(noise_share(dim * rounds, mu, honest).reshape(rounds, dim) for _ in range(owners))
    modulus = 300
    bound = wrap_probability(dim, owners, mu, honest, quantiser.l2_bound, modulus)
    assert bound < 1
    lifted = (noised + modulus // 2) % modulus - modulus // 2  # the backend's centred lift
    wraps = int(np.sum((lifted != noised).any(axis=1)))
    assert wraps >= 20  # wraps are frequent enough to count (about 80 expected)
    assert wraps <= stats.binom.isf(FALSE_FAILURE, rounds, bound)  # one-sided test at 1e-8 of rate <= bound


@pytest.mark.parametrize("lam, room", [(400.0, 70.0), (400.0, 150.0), (1e6, 6000.0), (1e6, 8000.0)])
def test_wrap_bound_is_above_the_exact_skellam_tail_and_within_15x(lam, room):
    # one coordinate, one owner whose update is 0 (l2_bound -> 0): P(|Sk(lam, lam)| >= room)
    exact = 2 * stats.skellam.sf(math.ceil(room) - 1, lam, lam)
    bound = wrap_probability(1, 1, 2 * lam, 2, 1e-12, int(2 * room))
    assert exact <= bound <= 15 * exact


@pytest.mark.parametrize("dim, owners, honest, mu, bound, modulus", [
    (1, 1, 2, 800.0, 1e-12, 140), (8, 4, 2, 200.0, 20.58, 300), (DIM, OWNERS, HONEST, 1e6, 500.0, 2**24)])
def test_wrap_bound_known_answer(dim, owners, honest, mu, bound, modulus):
    # the Chernoff bound minimised numerically over s: 2 tails x dim coordinates x min_s E[e^(s N)] e^(-s a)
    lam, room = owners * mu / honest, modulus / 2 - owners * bound
    best = optimize.minimize_scalar(lambda s: 2 * lam * (math.cosh(s) - 1) - s * room, bounds=(0, 50),
                                    method="bounded", options={"xatol": 1e-12})
    assert wrap_probability(dim, owners, mu, honest, bound, modulus) == pytest.approx(
        min(1.0, 2 * dim * math.exp(best.fun)), rel=1e-6)


@pytest.mark.parametrize("modulus", [CRYPTEN_MODULUS, BFV_MODULUS])
def test_realistic_federation_wraps_with_probability_under_1e_9(modulus):
    mu_per_unit2 = (SIGMA * CLIP) ** 2 / 2
    gamma = choose_gamma(CLIP, DIM, OWNERS, mu_per_unit2, HONEST, modulus)
    quantiser = Quantiser(CLIP, gamma, DIM)
    assert wrap_probability(DIM, OWNERS, mu_per_unit2 * gamma**2, HONEST, quantiser.l2_bound, modulus) <= 1e-9
    # on these moduli the share cap binds, not the wrap: gamma c = sqrt(2 t 2^36) / sigma = 1.17e6
    assert mu_per_unit2 * gamma**2 / HONEST == pytest.approx(MAX_SHARE_LAMBDA, rel=1e-6)
    assert gamma * CLIP == pytest.approx(1.1723e6, rel=1e-4)
    # the rounding costs nothing at that gamma: the sensitivity is the clip norm's to 3e-6
    assert quantiser.l2_bound / (gamma * CLIP) - 1 < 3e-6


def test_choose_gamma_is_the_largest_within_the_wrap_bound_where_the_modulus_binds():
    modulus, mu_per_unit2 = 2**24, 0.5
    gamma = choose_gamma(CLIP, DIM, OWNERS, mu_per_unit2, HONEST, modulus)

    def wraps(g):
        return wrap_probability(DIM, OWNERS, mu_per_unit2 * g * g, HONEST, Quantiser(CLIP, g, DIM).l2_bound, modulus)

    assert wraps(gamma) <= 1e-9 < wraps(gamma * 1.001)
    assert gamma == pytest.approx(67_136, rel=1e-3)  # even a 24-bit modulus holds 100 owners at gamma c = 67,136


def test_share_bounds_hold_against_the_exact_tail_and_measured_shares():
    mu, honest, p = 1e6 * HONEST, HONEST, 1e-9
    lam = mu / honest
    max_abs, max_l2 = share_bounds(DIM, mu, honest, p)
    assert DIM * 2 * stats.skellam.sf(max_abs, lam, lam) <= p / 2  # the exact per-coordinate tail
    assert max_abs / math.sqrt(2 * lam) == pytest.approx(7.98, abs=0.01)
    assert 1 < max_l2 / math.sqrt(2 * lam * DIM) < 1.06
    shares = np.stack([noise_share(DIM, mu, honest) for _ in range(4)])
    assert np.abs(shares).max() <= max_abs
    assert np.linalg.norm(shares.astype(float), axis=1).max() <= max_l2


def test_sampler_delta_figures():
    assert sampler_tv(DIM, OWNERS) == pytest.approx(4 * DIM * OWNERS * 2.0**-53)
    assert sampler_tv(DIM, OWNERS) == pytest.approx(7.276e-10, rel=1e-3)
    assert sampler_delta(DIM, OWNERS, rounds=100, epsilon=1.0) == pytest.approx((1 + math.e) * 100 * 7.276e-10,
                                                                                 rel=1e-3)


@pytest.mark.parametrize("call, fix", [
    (lambda: Quantiser(clip_norm=0.0, gamma=1.0, dim=4), "clip norm"),
    (lambda: Quantiser(clip_norm=1.0, gamma=-1.0, dim=4), "choose_gamma"),
    (lambda: Quantiser(clip_norm=1.0, gamma=1.0, dim=0), "adapter layout"),
    (lambda: Quantiser(clip_norm=1.0, gamma=1.0, dim=4, beta=1.0), "default"),
    (lambda: Quantiser(clip_norm=1.0, gamma=2.0**53, dim=4), "lower gamma"),
    (lambda: Quantiser(clip_norm=1.0, gamma=1.0, dim=4).encode(np.zeros(5)), "adapter layout"),
    (lambda: noise_share(4, 0.0, 2), "plan the owner-level noise"),
    (lambda: noise_share(4, 1.0, 0), "owner's policy"),
    (lambda: noise_share(4, MAX_SHARE_LAMBDA * 3, 2), "lower gamma"),
    (lambda: wrap_probability(4, 3, 1.0, 2, 1.0, 0), "plain modulus"),
    (lambda: choose_gamma(1.0, DIM, OWNERS, 0.5, HONEST, 2**12), "wider modulus"),
    (lambda: share_bounds(4, 1.0, 1, p=2.0), "failure probability"),
])
def test_bad_input_raises_one_line_naming_the_fix(call, fix):
    with pytest.raises(UserError) as raised:
        call()
    assert "\n" not in str(raised.value) and fix in str(raised.value)


def test_the_mechanism_imports_neither_torch_nor_flower():
    code = ("import sys, fedveil.privacy.dp.owner_level; "
            "print(sorted(m for m in ('torch', 'flwr', 'opacus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
