"""The owner-level ε ledger: its own file and budget, reserved under the lock, chained, never reset."""

import json

import pytest

from fedveil.privacy.dp import epsilon_ledger, owner_ledger, skellam
from fedveil.privacy.dp.ledger_format import LedgerError
from fedveil.privacy.dp.owner_ledger import Release
from fedveil.privacy.policy import OwnerPolicy, PolicyViolation
from fedveil.configs.schema import from_dict

ENTRY = dict(mu=5e4, sample_rate=0.5, l1=8e3, l2=300.0)


def test_reserve_records_each_round_at_the_skellam_epsilon_of_the_history(tmp_path):
    eps = [owner_ledger.reserve(tmp_path, Release("run#1", r, **ENTRY), 1e-5, 50.0)[0] for r in (1, 2, 3)]
    expected = [skellam.epsilon_of([(*ENTRY.values(), r)], 1e-5) for r in (1, 2, 3)]
    assert eps == pytest.approx(expected, rel=1e-9) and eps[0] < eps[1] < eps[2]
    ledger = owner_ledger.load(tmp_path)
    assert [r.round for r in ledger.history] == [1, 2, 3] and ledger.spent_epsilon == pytest.approx(eps[-1])
    assert epsilon_ledger.load(tmp_path) is None  # the sample-level ledger is another file, untouched


def test_past_the_budget_nothing_is_recorded(tmp_path):
    one = skellam.epsilon_of([(*ENTRY.values(), 1)], 1e-5)
    owner_ledger.reserve(tmp_path, Release("run#1", 1, **ENTRY), 1e-5, one * 1.2)
    before = owner_ledger.ledger_path(tmp_path).read_bytes()
    with pytest.raises(epsilon_ledger.BudgetExceeded, match="owner-level privacy budget"):
        owner_ledger.reserve(tmp_path, Release("run#1", 2, **ENTRY), 1e-5, target=100.0)  # the run cannot raise it
    assert owner_ledger.ledger_path(tmp_path).read_bytes() == before


def test_the_owners_cap_sets_the_budget_of_an_existing_ledger(tmp_path):
    owner_ledger.reserve(tmp_path, Release("run#1", 1, **ENTRY), 1e-5, 50.0)
    with pytest.raises(epsilon_ledger.BudgetExceeded):
        owner_ledger.reserve(tmp_path, Release("run#1", 2, **ENTRY), 1e-5, 50.0, owner_cap=1.0)
    assert owner_ledger.load(tmp_path).budget_epsilon == 50.0  # nothing written on a refusal


def test_an_edited_or_shortened_ledger_is_refused_not_reset(tmp_path):
    for r in (1, 2):
        owner_ledger.reserve(tmp_path, Release("run#1", r, **ENTRY), 1e-5, 50.0)
    path = owner_ledger.ledger_path(tmp_path)
    raw = json.loads(path.read_text())
    raw["history"][0]["mu"] *= 10  # more noise claimed for a round already released
    path.write_text(json.dumps(raw))
    with pytest.raises(LedgerError, match="damaged or was edited"):
        owner_ledger.load(tmp_path)
    raw = json.loads(path.read_text())
    raw["history"][0]["mu"] /= 10
    raw["history"].pop()
    raw["entry_count"] = 1
    path.write_text(json.dumps(raw))
    with pytest.raises(LedgerError):
        owner_ledger.reserve(tmp_path, Release("run#1", 3, **ENTRY), 1e-5, 50.0)


def test_a_ledger_that_over_counts_loads_and_one_that_under_counts_is_refused(tmp_path, monkeypatch):
    # An earlier accountant (Zhu & Wang's general subsampled bound) recorded ~3x today's epsilon at q < 1:
    # that ledger must still load, its recorded spend kept; a recorded spend below today's is an edit.
    real = skellam.epsilon_of
    for scale, loads in ((3.0, True), (0.5, False)):
        state = tmp_path / str(scale)
        with monkeypatch.context() as patched:
            patched.setattr(skellam, "epsilon_of", lambda history, delta: scale * real(history, delta))
            for r in (1, 2):
                owner_ledger.reserve(state, Release("run#1", r, **ENTRY), 1e-5, 50.0)
        if loads:
            assert owner_ledger.load(state).spent_epsilon == pytest.approx(3.0 * real([(*ENTRY.values(), 2)], 1e-5))
            after, _ = owner_ledger.reserve(state, Release("run#1", 3, **ENTRY), 1e-5, 50.0)
            assert after == pytest.approx(real([(*ENTRY.values(), 3)], 1e-5))  # today's accountant from here on
        else:
            with pytest.raises(LedgerError, match="does not match its history"):
                owner_ledger.load(state)


def crypten_owner_level(**dp):
    return from_dict({"dp": {"name": "owner_level", "gamma": 1000.0, "mu": 1e4, **dp},
                      "aggregation": {"name": "crypten", "min_owners": dp.get("min_honest_owners", 3)},
                      "num_clients": 5})


@pytest.mark.parametrize("policy, dp, rule", [
    (OwnerPolicy(owner_level_max_epsilon=2.0), {"target_epsilon": 4.0}, "owner_level_max_epsilon"),
    (OwnerPolicy(owner_level_min_noise_multiplier=2.0), {}, "owner_level_min_noise_multiplier"),  # sigma 1.41
    (OwnerPolicy(owner_level_min_noise_multiplier=2.0), {"noise_multiplier": 1.0}, "owner_level_min_noise_multiplier"),
    (OwnerPolicy(owner_level_max_sample_rate=0.1), {"sample_rate": 0.2}, "owner_level_max_sample_rate"),
    (OwnerPolicy(allow_amplification=False), {"sample_rate": 0.5}, "allow_amplification"),
    (OwnerPolicy(min_honest_owners=4), {"min_honest_owners": 3}, "min_honest_owners"),
    (OwnerPolicy(max_delta=1e-6), {"delta": 1e-5}, "max_delta"),
])
def test_the_policy_refuses_each_owner_level_rule_by_its_key(policy, dp, rule):
    with pytest.raises(PolicyViolation) as caught:
        policy.check(crypten_owner_level(**dp), "")
    assert caught.value.public["rule"] == rule


def test_the_unit_budgets_are_separate_keys():
    cfg = crypten_owner_level(target_epsilon=4.0)
    OwnerPolicy(max_epsilon=1.0, min_noise_multiplier=50.0, max_sample_rate=0.01).check(cfg, "")  # sample-level keys
    OwnerPolicy(owner_level_max_epsilon=4.0, owner_level_min_noise_multiplier=1.0, min_honest_owners=3).check(cfg, "")
