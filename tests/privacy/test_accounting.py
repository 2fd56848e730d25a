"""Epsilon figures: known answers, an independent accountant, and the noise planner."""

import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from fedveil.privacy.dp.accounting import BudgetUnreachable, epsilon_of, plan_noise


def exact_gaussian_epsilon(sigma, steps, delta):
    """Full-batch DP-SGD is a Gaussian mechanism with mu = sqrt(steps)/sigma; its exact (eps, delta)
    curve is delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Balle & Wang 2018)."""
    mu = math.sqrt(steps) / sigma
    def curve(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta

    return brentq(curve, 1e-9, 100)


@pytest.mark.parametrize("sigma, steps, delta", [(1.0, 10, 1e-5), (2.0, 100, 1e-5), (5.0, 50, 1e-6)])
def test_known_answer_full_batch_gaussian(sigma, steps, delta):
    exact = exact_gaussian_epsilon(sigma, steps, delta)
    assert epsilon_of([(sigma, 1.0, steps)], delta, "prv") == pytest.approx(exact, rel=0.01)
    assert epsilon_of([(sigma, 1.0, steps)], delta, "rdp") >= exact  # RDP is an upper bound


def test_known_answer_subsampled_rdp():
    # q=0.01, sigma=1.0, 1000 steps, delta=1e-5: 2.1014, the figure Google's RDP accountant gives too.
    from dp_accounting import dp_event, rdp

    google = rdp.RdpAccountant()
    google.compose(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(1.0)), 1000)
    ours = epsilon_of([(1.0, 0.01, 1000)], 1e-5, "rdp")
    assert ours == pytest.approx(2.1014, abs=1e-3)
    assert ours == pytest.approx(google.get_epsilon(1e-5), rel=1e-3)


@pytest.mark.parametrize("q, sigma, steps", [(0.074, 1.0, 60), (0.01, 0.8, 500), (0.25, 2.0, 40)])
def test_opacus_never_reports_less_than_google_pld_minus_one_percent(q, sigma, steps):
    from dp_accounting import dp_event, pld

    delta = 1e-5
    accountant = pld.PLDAccountant()
    accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
    reference = accountant.get_epsilon(delta)
    for name in ("prv", "rdp"):
        assert epsilon_of([(sigma, q, steps)], delta, name) >= 0.99 * reference, name


def test_planned_noise_meets_the_target_tightly():
    sigma = plan_noise(4.0, 1e-5, 16 / 216, 60)
    eps = epsilon_of([(sigma, 16 / 216, 60)], 1e-5)
    assert 3.9 <= eps <= 4.0


def test_planning_after_history_spends_only_what_is_left():
    first = plan_noise(4.0, 1e-5, 0.05, 30)
    spent = [(first, 0.05, 30)]
    sigma = plan_noise(6.0, 1e-5, 0.05, 30, spent=spent)
    assert sigma < first  # more budget left over, less noise needed
    assert 5.9 <= epsilon_of([*spent, (sigma, 0.05, 30)], 1e-5) <= 6.0


def test_unreachable_and_exhausted_budgets():
    with pytest.raises(BudgetUnreachable, match="unreachable in 100 steps"):
        plan_noise(0.01, 1e-5, 0.5, 100, max_noise=20.0)
    with pytest.raises(BudgetUnreachable, match="already spent"):
        plan_noise(1.0, 1e-5, 0.05, 10, spent=[(0.5, 0.05, 200)])


def test_noiseless_steps_are_not_private():
    assert epsilon_of([(0.0, 0.1, 5)], 1e-5) == math.inf
    assert epsilon_of([], 1e-5) == 0.0


def test_owner_ledger_epsilon_composed_over_rounds_is_within_one_percent_of_google_pld(tmp_path):
    """What an owner reports after each of 3 rounds (its ledger, PRV) against Google's PLD accountant
    composing the same Poisson-subsampled Gaussian steps: within 1 % either way."""
    from dp_accounting import dp_event, pld

    from fedveil.privacy.dp import epsilon_ledger
    from fedveil.privacy.dp.sgd import SampleLevelDPConfig

    cfg = SampleLevelDPConfig(target_epsilon=4.0, sample_rate=0.05)
    ledger = epsilon_ledger.open_ledger(tmp_path, cfg, 240)
    sigma = epsilon_ledger.run_noise(ledger, "run", cfg, 0.05, 60)
    for server_round in (1, 2, 3):
        reported = epsilon_ledger.reserve(tmp_path, ledger, epsilon_ledger.Step("run", server_round, sigma, 0.05, 20))
        google = pld.PLDAccountant()
        google.compose(dp_event.PoissonSampledDpEvent(0.05, dp_event.GaussianDpEvent(sigma)), 20 * server_round)
        assert reported == pytest.approx(google.get_epsilon(1e-5), rel=0.01), server_round


@pytest.fixture
def counted_accountant(monkeypatch):
    """Opacus' accountant, counted; the process-wide memo emptied before and after (no leaks)."""
    from fedveil.privacy.dp import accounting

    calls = []
    real = accounting.create_accountant

    def counting(mechanism):
        calls.append(mechanism)
        return real(mechanism=mechanism)

    accounting._epsilon.cache_clear(), accounting._plan_noise.cache_clear()
    monkeypatch.setattr(accounting, "create_accountant", counting)
    yield calls  # (sample rate 1.0 below: Opacus' RDP is closed-form there, so these tests are quick)
    accounting._epsilon.cache_clear(), accounting._plan_noise.cache_clear()


def test_an_epsilon_is_computed_once_per_process_and_is_the_same_number(counted_accountant):
    history = [(1.1, 1.0, 20)]
    first = epsilon_of(history, 1e-5, "rdp")
    assert epsilon_of([(1.1, 1.0, 20)], 1e-5, "rdp") == first  # the ledger re-checks what reserve computed
    assert epsilon_of(((1.1, 1.0, 20.0),), 1e-5, "rdp") == first  # normalised: same key
    assert counted_accountant == ["rdp"]
    assert epsilon_of([(1.1, 1.0, 21)], 1e-5, "rdp") > first  # another history is computed anew
    assert epsilon_of([(1.1, 1.0, 20)], 1e-6, "rdp") > first  # ... and another delta
    assert len(counted_accountant) == 3


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_owners_sharing_a_plan_plan_once_and_a_refusal_is_never_remembered(counted_accountant):
    sigma = plan_noise(8.0, 1e-5, 1.0, 20, "rdp")
    planned = len(counted_accountant)
    assert planned > 5  # a bisection
    assert plan_noise(8.0, 1e-5, 1.0, 20, "rdp") == sigma and len(counted_accountant) == planned
    assert (
        plan_noise(8.0, 1e-5, 1.0, 20, "rdp", spent=[(2 * sigma, 1.0, 20)]) > sigma
    )  # the spent history is in the key
    for _ in range(2):
        with pytest.raises(BudgetUnreachable):
            plan_noise(8.0, 1e-5, 1.0, 20, "rdp", spent=[(0.3, 1.0, 400)])
