"""One owner's owner-level update: its coin, its quantised delta, its noise share (client/owner_level.py)."""

import numpy as np
import pytest
from scipy import stats

from fedveil.client import owner_level
from fedveil.core.payload import Revealed
from fedveil.privacy.dp.owner_level_plan import OwnerLevelDPConfig

DIM = 20_000


class Run:  # the part of a FedveilConfig noised_update reads
    def __init__(self, sample_rate):
        self.dp = OwnerLevelDPConfig(sample_rate=sample_rate, clip_norm=1.0, min_honest_owners=4, gamma=50.0, mu=400.0)


@pytest.mark.parametrize("q, joins", [(1.0, True), (1e-12, False)])
def test_the_update_is_the_quantised_delta_if_the_coin_joins_else_the_noise_share_alone(q, joins):
    delta = np.full(DIM, 1.0 / np.sqrt(DIM))  # norm 1: gamma units of 50 / sqrt(d) = 0.35 per value
    update = owner_level.noised_update(Run(q), delta)
    assert update.dtype == np.float64 and update.shape == (DIM,) and np.array_equal(update, np.rint(update))
    noise_var = 2 * 400.0 / 4  # Sk(mu / t, mu / t)
    mean = 50.0 / np.sqrt(DIM) if joins else 0.0
    z = (update.mean() - mean) / np.sqrt((noise_var + 0.25) / DIM)
    assert abs(z) < stats.norm.isf(1e-6 / 2)
    # the variance: the share's 2 mu / t plus rounding's (at most 1/4; 0.23 here), both tails
    statistic = stats.chi2(DIM - 1)
    low, high = update.var() * (DIM - 1) / (noise_var + 0.25), update.var() * (DIM - 1) / noise_var
    assert statistic.cdf(high) > 1e-6 and statistic.sf(low) > 1e-6


def test_a_non_finite_delta_joins_as_zeros_and_still_sends_its_noise():
    delta = np.full(DIM, np.nan)
    update = owner_level.noised_update(Run(1.0), delta)
    noise_std = np.sqrt(2 * 400.0 / 4)  # Sk(mu / t, mu / t): 14.1; the mean of d draws within 6 of its sigmas
    assert np.isfinite(update).all() and abs(update.mean()) < 6 * noise_std / np.sqrt(DIM) and update.std() > 5


def test_an_owner_that_decrypts_sums_itself_counts_its_t_and_decodes_over_gamma():
    class Policy:
        min_honest_owners = 3

    class TensealSide:  # what floor_for sets on tenseal's owner side (TensealOwner)
        min_contributions = 0

        @staticmethod
        def decode(revealed):
            return revealed

    backend = TensealSide()
    owner_level.floor_for(backend, Run(0.5), Policy())
    assert backend.min_contributions == 4  # the run's t (4), above the policy's floor (3)
    out = backend.decode(Revealed(np.array([100.0, -50.00001]), 4.0))  # 4 owners summed, gamma 50, q 1/2
    assert out.total_weight == 2.0 and np.array_equal(out.weighted_sum, [2.0, -1.0])
    crypten_side = object()  # the parties enforce t there: nothing to set
    owner_level.floor_for(crypten_side, Run(0.5), Policy())
