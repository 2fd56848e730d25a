"""``fedveil verify-epsilon``: an owner's ε ledgers, both units, checked from outside the round."""

import json

import pytest

from fedveil.privacy.dp import epsilon_ledger, owner_ledger, skellam
from fedveil.privacy.dp.epsilon_ledger import Step
from fedveil.privacy.dp.owner_ledger import Release
from fedveil.privacy.dp.sgd import SampleLevelDPConfig
from fedveil.server.cli import main

ENTRY = dict(mu=5e4, sample_rate=0.5, l1=8e3, l2=300.0)


def owner_level(state, rounds=2, budget=50.0):
    for r in range(1, rounds + 1):
        owner_ledger.reserve(state, Release("run#1", r, **ENTRY), 1e-5, budget)
    return owner_ledger.ledger_path(state)


def sample_level(state):
    led = epsilon_ledger.open_ledger(state, SampleLevelDPConfig(target_epsilon=3.0, delta=1e-5), 1000)
    epsilon_ledger.reserve(state, led, Step("run#1", 1, 1.0, 0.05, 20))


def edit(path, change):
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_both_units_verify_with_their_spend_and_budget(tmp_path, capsys):
    both, only_owner, none = tmp_path / "client_1", tmp_path / "client_2", tmp_path / "client_3"
    sample_level(both)
    owner_level(both)
    owner_level(only_owner, rounds=3)
    none.mkdir()
    assert main(["verify-epsilon", str(both), str(only_owner), str(none)]) == 0
    out = capsys.readouterr().out.splitlines()
    spent = skellam.epsilon_of([(*ENTRY.values(), 2)], 1e-5)
    assert out[0].startswith(f"{both}/privacy_ledger.json: sample-level ε ledger intact, 1 entries")
    assert out[1] == (f"{both}/owner_level_ledger.json: owner-level ε ledger intact, 2 rounds, spent "
                      f"ε={spent:.4g} of its budget 50 (δ=1e-05, skellam)")
    assert out[2].startswith(f"{only_owner}/owner_level_ledger.json: owner-level ε ledger intact, 3 rounds")
    assert out[3] == f"{none}: no ε ledger (this owner never trained under DP)" and len(out) == 4


@pytest.mark.parametrize("change, problem", [
    (lambda raw: raw["history"][0].update(mu=ENTRY["mu"] * 2), "its chain does not hold"),  # less noise claimed
    (lambda raw: raw.update(spent_epsilon=raw["spent_epsilon"] / 2), "does not match its history"),
    (lambda raw: raw.update(budget_epsilon=raw["spent_epsilon"] / 2), "is over its budget"),
    (lambda raw: raw.update(history=raw["history"][:1]), "its chain does not hold"),  # a round dropped
])
def test_a_tampered_owner_level_ledger_is_one_line_naming_the_file_and_the_fix(tmp_path, capsys, change, problem):
    good, bad = tmp_path / "client_1", tmp_path / "client_2"
    owner_level(good)
    sample_level(bad)
    path = owner_level(bad)
    edit(path, change)
    assert main(["verify-epsilon", str(good), str(bad)]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{good}/owner_level_ledger.json: owner-level ε ledger intact")
    [line] = captured.err.splitlines()
    assert line.startswith(f"fedveil: error: {path}") and problem in line
    assert line.endswith("restore it from a backup; it is never reset, because that would forget the privacy "
                         "already spent")


def test_a_missing_state_directory_says_what_to_give(tmp_path, capsys):
    assert main(["verify-epsilon", str(tmp_path / "nope")]) == 1
    assert capsys.readouterr().err == (f"fedveil: error: {tmp_path / 'nope'} is not a directory: give an owner's "
                                       "state directory (e.g. <run>/clients/client_1)\n")
