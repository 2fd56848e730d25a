"""dp=owner_level's config and plan: gamma and mu for the adapter and the cohort, refusals at start."""

import numpy as np
import pytest

from fedveil.configs.schema import from_dict
from fedveil.core.errors import UserError
from fedveil.core.payload import Revealed
from fedveil.privacy.dp import skellam
from fedveil.privacy.dp.owner_level import MAX_SHARE_LAMBDA, Quantiser, wrap_probability
from fedveil.privacy.dp.owner_level_plan import (MAX_WRAP, OwnerLevelDPConfig, check_plan, decode_sum, plan, resolve,
                                                 run_epsilon)
from fedveil.privacy.secagg import BACKENDS

CRYPTEN = BACKENDS["crypten"].integers
DIM, COHORT, ROUNDS = 4096, 4, 3


def test_the_plan_meets_the_target_within_the_wrap_bound_and_the_parties_check():
    cfg = OwnerLevelDPConfig(target_epsilon=4.0, sample_rate=0.5, clip_norm=0.1, min_honest_owners=3)
    bound = resolve(cfg, DIM, COHORT, ROUNDS, CRYPTEN)
    q = Quantiser(cfg.clip_norm, cfg.gamma, DIM)
    eps = skellam.epsilon_of([(cfg.mu, 0.5, q.l1_bound, q.l2_bound, ROUNDS)], cfg.delta)
    assert eps == pytest.approx(run_epsilon(cfg, DIM, ROUNDS))
    assert 4.0 * 0.99 < eps <= 4.0  # the least noise that meets the target (mu_for's 1e-4 step)
    assert wrap_probability(DIM, COHORT, cfg.mu, 3, q.l2_bound, CRYPTEN.modulus) <= MAX_WRAP
    assert CRYPTEN.checkable(bound, DIM) and bound > q.l2_bound
    # the parties check the norm scaled (shares.norm_scale_bits), past the unscaled ring's 2^14.5: a share's
    # exact-draw cap is what binds gamma now; 5 % more (at the same sigma) is refused
    assert bound > 2**14.5 and 0.9 * MAX_SHARE_LAMBDA < cfg.mu / 3 <= MAX_SHARE_LAMBDA  # the plan keeps 2 % room
    wider = OwnerLevelDPConfig(**{**cfg.__dict__, "gamma": cfg.gamma * 1.05, "mu": cfg.mu * 1.05**2})
    with pytest.raises(UserError, match="over 2\\^36"):
        check_plan(wider, DIM, COHORT, 3, CRYPTEN)


def test_an_explicit_noise_multiplier_is_the_plans():
    cfg = OwnerLevelDPConfig(noise_multiplier=1.5)
    gamma, mu = plan(cfg, DIM, COHORT, ROUNDS, CRYPTEN)
    cfg.gamma, cfg.mu = gamma, mu
    assert cfg.sigma == pytest.approx(1.5)


def test_a_larger_gamma_than_the_wrap_bound_allows_is_refused():
    cfg = OwnerLevelDPConfig(noise_multiplier=1.0, gamma=1e14, mu=1.0)  # 4 x 1e13 units > 2^46 / 2
    with pytest.raises(UserError, match="could wrap the sum"):
        check_plan(cfg, DIM, COHORT, 3, CRYPTEN)


def test_decode_divides_the_rounded_integer_sum_by_gamma_and_the_expected_count():
    revealed = Revealed(np.array([300.00002, -149.99998, 0.0]), 4.0)  # 4 owners summed, weight 1 each
    out = decode_sum(revealed, gamma=100.0, sample_rate=0.5)
    assert out.total_weight == 2.0
    np.testing.assert_array_equal(out.weighted_sum, [3.0, -1.5, 0.0])
    np.testing.assert_allclose(out.mean, [1.5, -0.75, 0.0])


def test_owner_level_is_refused_under_plain_and_ckks():
    with pytest.raises(UserError, match="dp=owner_level needs aggregation=crypten \\(or tenseal with BFV\\), got "
                                        "aggregation=plain.*use "
                                        "dp=sample_level"):
        from_dict({"dp": {"name": "owner_level"}, "aggregation": {"name": "plain"}, "num_clients": 4})
    ckks = {"dp": {"name": "owner_level"}, "aggregation": {"name": "tenseal", "scheme": "ckks"}, "num_clients": 4}
    with pytest.raises(UserError, match="aggregation=tenseal needs its integer domain: set aggregation.scheme=bfv"):
        from_dict(ckks)
    with pytest.raises(UserError, match="aggregation.download=sum has none: set aggregation.download=committee"):
        from_dict({"dp": {"name": "owner_level"}, "aggregation": {"name": "tenseal"}, "num_clients": 4,
                   "privacy": {"malicious_owners": False}})  # download auto -> sum, which owners cannot count
    # tenseal's BFV runs it: its owners count the signed contributions (tests/privacy/test_owner_level_tenseal.py)
    assert from_dict({"dp": {"name": "owner_level"}, "aggregation": {"name": "tenseal"}, "num_clients": 4}).dp.name \
        == "owner_level"


def test_the_parties_floor_below_t_is_refused_at_start():
    with pytest.raises(UserError, match="aggregation.min_owners=3 is below dp.min_honest_owners=4.*raise"):
        from_dict({"dp": {"name": "owner_level", "min_honest_owners": 4}, "aggregation": {"name": "crypten"},
                   "num_clients": 4})
    cfg = from_dict({"dp": {"name": "owner_level", "min_honest_owners": 4},
                     "aggregation": {"name": "crypten", "min_owners": 4}, "num_clients": 4})
    assert (cfg.dp.name, cfg.aggregation.min_owners) == ("owner_level", 4)


@pytest.mark.parametrize("key, value", [("clip_norm", 0.0), ("sample_rate", 1.5), ("min_honest_owners", 1),
                                        ("noise_multiplier", -1.0), ("gamma", float("inf"))])
def test_bad_values_are_refused_naming_the_key(key, value):
    with pytest.raises(UserError, match=f"dp.{key}"):
        OwnerLevelDPConfig(**{key: value})


def test_privacy_epsilon_sets_the_owner_level_target_and_keeps_the_unit():
    cfg = from_dict({"dp": {"name": "owner_level"}, "aggregation": {"name": "crypten"}, "num_clients": 4,
                     "privacy": {"epsilon": 2.0}})
    assert (cfg.dp.name, cfg.dp.target_epsilon) == ("owner_level", 2.0)


def test_privacy_epsilon_meets_the_cap_of_its_own_unit():
    base = {"dp": {"name": "owner_level"}, "aggregation": {"name": "crypten"}, "num_clients": 4,
            "privacy": {"epsilon": 4.0}}
    # the sample-level cap does not bound an owner-level target ...
    cfg = from_dict({**base, "owner_policy": {"max_epsilon": 2.0}})
    assert (cfg.dp.name, cfg.dp.target_epsilon) == ("owner_level", 4.0)
    # ... the owner-level one does, and the line names it
    with pytest.raises(UserError, match=r"privacy.epsilon=4 is above the owners' policy owner_level_max_epsilon=3: "):
        from_dict({**base, "owner_policy": {"owner_level_max_epsilon": 3.0}})
    # and sample_level still meets max_epsilon only
    sample = {**base, "dp": {"name": "sample_level"}}
    assert from_dict({**sample, "owner_policy": {"owner_level_max_epsilon": 3.0}}).dp.target_epsilon == 4.0
    with pytest.raises(UserError, match="above the owners' policy max_epsilon=2: "):
        from_dict({**sample, "owner_policy": {"max_epsilon": 2.0}})
