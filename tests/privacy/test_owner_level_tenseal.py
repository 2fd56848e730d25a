"""dp=owner_level's integer domain under tenseal's BFV: its modulus, the plan in it, an exact round trip."""

import numpy as np
import pytest

from fedveil.configs.schema import from_dict
from fedveil.core.errors import UserError
from fedveil.experiments.plan import dp_plan, render
from fedveil.privacy.dp.owner_level import Quantiser, choose_gamma, noise_share, wrap_probability
from fedveil.privacy.dp import skellam
from fedveil.privacy.dp.owner_level_plan import (MAX_WRAP, OwnerLevelDPConfig, check_plan, decode_sum,
                                                 epsilon_against_owners, resolve, run_epsilon)
from fedveil.privacy.secagg import BACKENDS
from fedveil.privacy.secagg.tenseal import bfv, checks
from fedveil.privacy.secagg.tenseal.backend import TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig, integers
from fedveil.privacy.secagg.tenseal.context import make_context, public_bytes, secret_bytes

DIM, COHORT, ROUNDS, T = 4096, 4, 3, 3


def planned(domain) -> tuple[OwnerLevelDPConfig, float]:
    cfg = OwnerLevelDPConfig(target_epsilon=4.0, sample_rate=0.5, clip_norm=0.1, min_honest_owners=T)
    return cfg, resolve(cfg, DIM, COHORT, ROUNDS, domain)


def test_bfv_gives_each_value_one_digit_of_the_plain_modulus_and_one_owners_levels_to_check():
    agg = TensealConfig(max_owners=COHORT)
    domain = integers(agg)
    # 46-bit t: a digit's radix isqrt(t) (23 bits) is the modulus of a value's sum; one owner sends up to
    # (R - 1) // 2 // 4 levels, the most a per-update bound may be
    assert (agg.plain_modulus_bits, domain.modulus) == (46, 8388607) == (46, bfv.radix(4096, 46))
    assert agg.levels == 1048575
    assert domain.checkable(1048575.0, DIM) and not domain.checkable(1048576.0, DIM)
    # a larger cohort: a smaller t (45 bits), and each owner's share of the digit shrinks with it
    wide = TensealConfig(max_owners=100)
    assert (integers(wide).modulus, wide.levels) == (bfv.radix(4096, 45), 29658)
    assert integers(TensealConfig(max_owners=COHORT, scheme="ckks")) is None  # CKKS sums approximately


def test_the_plan_under_bfv_is_bound_by_one_owners_levels_not_by_the_wrap():
    agg = TensealConfig(max_owners=COHORT)
    domain = integers(agg)
    cfg, bound = planned(domain)
    q = Quantiser(cfg.clip_norm, cfg.gamma, DIM)
    assert bound <= agg.levels and bound > q.l2_bound
    assert wrap_probability(DIM, COHORT, cfg.mu, T, q.l2_bound, domain.modulus) <= MAX_WRAP
    # the wrap bound alone would allow 15x the gamma: the per-owner digit is what binds (as crypten's norm check)
    per_unit2 = (cfg.sigma * cfg.clip_norm) ** 2 / 2
    wrap_only = choose_gamma(cfg.clip_norm, DIM, COHORT, per_unit2, T, domain.modulus, MAX_WRAP)
    assert 14 < wrap_only / cfg.gamma < 17
    assert cfg.gamma * cfg.clip_norm == pytest.approx(16984, rel=0.01)  # crypten's scaled check: 447,580 here
    wider = OwnerLevelDPConfig(**{**cfg.__dict__, "gamma": cfg.gamma * 1.05, "mu": cfg.mu * 1.05**2})
    with pytest.raises(UserError, match="cannot check a noised update"):
        check_plan(wider, DIM, COHORT, T, domain)
    # at a gamma the wrap bound refuses, the line says so
    far = OwnerLevelDPConfig(**{**cfg.__dict__, "gamma": wrap_only * 4, "mu": per_unit2 * (wrap_only * 4) ** 2})
    with pytest.raises(UserError, match="could wrap the sum of 4 owners"):
        check_plan(far, DIM, COHORT, T, domain)


@pytest.fixture(scope="module")
def integer_round():
    """The plan at COHORT owners, and tenseal at step 1 (max_weight 1, value_bound = levels): what owners encrypt."""
    base = TensealConfig(max_owners=COHORT)
    cfg, bound = planned(integers(base))
    agg = TensealConfig(max_owners=COHORT, max_weight=1.0, value_bound=float(base.levels), norm_bound=bound)
    ctx = make_context(agg)
    pub, sec = public_bytes(ctx), secret_bytes(ctx)
    return cfg, bound, agg, TensealOwner(agg, DIM, public=pub, secret=sec), TensealServer(agg, DIM, public=pub)


def test_noised_integer_updates_pass_the_owners_checks_and_sum_exactly_under_bfv(integer_round):
    cfg, bound, agg, owner, server = integer_round
    assert agg.step == 1.0  # integers travel as themselves: one level per integer unit
    rng = np.random.default_rng(5)
    deltas = [rng.normal(0, 1, DIM) for _ in range(COHORT)]  # clipped to 0.1 by the quantiser
    quantiser = Quantiser(cfg.clip_norm, cfg.gamma, DIM)
    updates = [(quantiser.encode(d) if k % 2 else np.zeros(DIM, np.int64)) + noise_share(DIM, cfg.mu, T)
               for k, d in enumerate(deltas)]  # owners 1 and 3 joined; 0 and 2 sent their share alone
    payloads = {f"client_{k}": owner.protect(u.astype(np.float64), 1.0) for k, u in enumerate(updates)}
    for p in payloads.values():  # every owner's range and norm checks pass an honest noised update
        assert checks.problem(owner, p) is None
    revealed = owner.reveal(server.combine(payloads).payload)
    total = np.sum(updates, axis=0)
    np.testing.assert_array_equal(revealed.weighted_sum, total)  # exact: no wrap, no rounding
    assert revealed.total_weight == COHORT
    out = decode_sum(revealed, cfg.gamma, cfg.sample_rate)
    assert out.total_weight == COHORT * 0.5
    np.testing.assert_array_equal(out.weighted_sum, total / cfg.gamma)
    # the decoded sum is the joined owners' clipped deltas plus noise of 4 shares (sd sqrt(2 * 4 mu / 3) / gamma)
    noise_sd = np.sqrt(2 * COHORT * cfg.mu / T) / cfg.gamma
    clipped = sum(quantiser.clip(deltas[k]) for k in (1, 3))
    assert np.std(out.weighted_sum - clipped) == pytest.approx(noise_sd, rel=0.05)


def test_an_update_over_the_owner_level_norm_bound_is_refused_by_the_owners_check(integer_round):
    cfg, bound, agg, owner, server = integer_round
    over = np.zeros(DIM)
    # each value within the levels, the norm over the bound and the check's slack (half a step per value)
    over[:2] = (bound + np.sqrt(DIM) / 2 + 1) / np.sqrt(2)
    assert np.abs(over).max() <= agg.levels
    within = np.zeros(DIM)
    within[:2] = np.floor(bound / np.sqrt(2))
    assert checks.problem(owner, owner.protect(within, 1.0)) is None  # at the bound: passes
    assert "L2 norm" in checks.problem(owner, owner.protect(over, 1.0))


def test_the_registry_gives_tenseal_its_domain_for_the_config_and_none_under_ckks():
    spec = BACKENDS["tenseal"]
    assert spec.integers is integers and spec.enforces_honest_floor
    assert spec.integer_domain(TensealConfig(max_owners=COHORT)).modulus == 8388607
    assert spec.integer_domain(TensealConfig(max_owners=COHORT, scheme="ckks")) is None
    assert BACKENDS["plain"].integer_domain(None) is None


def test_the_epsilon_against_other_owners_is_one_update_with_its_own_share_alone():
    cfg, _ = planned(integers(TensealConfig(max_owners=COHORT)))
    q = Quantiser(cfg.clip_norm, cfg.gamma, DIM)
    against = epsilon_against_owners(cfg, DIM, ROUNDS)
    assert against == skellam.epsilon_of([(cfg.mu / T, 0.5, q.l1_bound, q.l2_bound, ROUNDS)], cfg.delta)
    # 1/t of the variance: 4.00 against the coordinator is 8.76 against an owner that decrypts one update
    assert run_epsilon(cfg, DIM, ROUNDS) == pytest.approx(4.0, abs=1e-3)
    assert against == pytest.approx(8.764, abs=0.005)
    more = OwnerLevelDPConfig(**{**cfg.__dict__, "min_honest_owners": 2 * T})  # the same mu split in 6 shares
    assert epsilon_against_owners(more, DIM, ROUNDS) > against


def plan_lines(cfg) -> list[str]:
    base = {"privacy": {}, "owners": COHORT, "rounds": ROUNDS, "local_steps": 1, "adapter_values": DIM, "model": "m",
            "backends": [], "pick": cfg.aggregation.name, "reason": "named"}
    return render({**base, "dp": dp_plan(cfg, DIM)}).splitlines()


def test_the_plan_states_both_epsilons_under_tenseal_and_one_under_crypten():
    values = {"dp": {"name": "owner_level", "target_epsilon": 4.0, "sample_rate": 0.5, "min_honest_owners": T},
              "aggregation": {"name": "crypten"}, "num_clients": COHORT, "rounds": ROUNDS}
    cfg = from_dict(values)
    assert dp_plan(cfg, DIM)["epsilon_other_owners"] is None  # no owner sees another's update under crypten
    assert not any("against other owners" in line for line in plan_lines(cfg))
    cfg = from_dict({**values, "aggregation": {"name": "tenseal"}})
    planned_dp = dp_plan(cfg, DIM)
    assert planned_dp["epsilon"] == pytest.approx(4.0, abs=1e-3)
    assert planned_dp["epsilon_other_owners"] == pytest.approx(8.764, abs=0.005)
    line = next(x for x in plan_lines(cfg) if x.startswith("DP against other owners"))
    assert line.startswith("DP against other owners: epsilon 8.76") and "t = 3" in line
    assert line.endswith("against the coordinator 4.000")
