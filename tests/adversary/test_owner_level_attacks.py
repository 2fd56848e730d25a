"""Attacks on ``dp=owner_level``'s claims against the coordinator that must fail (issue 24).

Covered here, one test per claim:

- the coordinator cannot lower t at the parties: each owner signs the ``aggregation.min_owners`` it
  accepted (at least its t) into its share bundle, and the parties reveal no sum of fewer owners
  than any summed owner signed, whatever floor the request names; a round with fewer than t
  contributions reveals nothing (real parties, shared with ``test_crypten_attacks.py``'s helpers);
- the coordinator cannot learn who joined: an owner's coin comes from its own CSPRNG, never from
  the seed, round, node id or config the coordinator sends; a joining owner's sealed payload is as
  long as a non-joining one's;
- the coordinator cannot claim amplification for an owner it picks: the owner's ε ledger charges
  every round at its own q whatever the coordinator's sampling, refuses q < 1 under
  ``allow_amplification=false`` before any ε is reserved, and never passes its
  ``owner_level_max_epsilon`` (nor, where the policy names none, the node config's ``max-epsilon``).

Covered elsewhere (not repeated): less noise, a lower t in the run config, a lower parties' floor in
the run config, a higher q and another backend are refused before data or ε
(``test_transcript.py::test_owner_level_releases_the_same_bytes_for_another_owners_data``), and a
joining and a non-joining owner release the same bytes through the ClientApp
(``test_transcript.py::test_an_owner_that_does_not_join_releases_what_one_that_joins_releases``).
"""

import random

import numpy as np
import pytest
import torch
from nacl.public import PrivateKey
from scipy.stats import binom
import test_crypten_attacks
import test_transcript
from test_crypten_attacks import SIZE, _ask_all, _cfg, _protect
from test_transcript import OWNER_LEVEL_POLICY, START, msg, owner_level_base, transcript

from fedveil.client import owner_level
from fedveil.client.release import Refusal
from fedveil.configs.schema import from_dict
from fedveil.core import wire
from fedveil.core.payload import RoundContext
from fedveil.privacy.dp import owner_ledger, skellam
from fedveil.privacy.dp.owner_level_plan import OwnerLevelDPConfig, run_entry
from fedveil.privacy.policy import OwnerPolicy
from fedveil.privacy.secagg.crypten.backend import CohortTooSmall, CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.crypten.shares import BUNDLE, ShareBundle
from fedveil.privacy.secagg.identity import OwnerKeys
from fedveil.privacy.secagg.sealing import keypair

pytestmark = pytest.mark.adversary  # and slow, per test, where it starts processes or trains

# their fixtures, here per module: one set of real parties; the transcript suite's datasets and task identity
parties = test_crypten_attacks.parties
datasets, task_identity = test_transcript.datasets, test_transcript.task_identity


# --- t at the parties: the owners' signed floor, whatever the request names -------------------------------

def _deltas(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.01, size=SIZE) for _ in range(n)]


# (the floor each owner signed, i.e. the aggregation.min_owners it accepted, at least its t) -> revealed?
FLOORS = [
    ((3, 3), False),  # t=3, two owners' shares: the coordinator asks with min_owners=2, the parties' own floor 2
    ((3, 3, 3), True),  # t contributions: the sum is revealed
    ((4, 4, 4), False),  # t=4, three contributions
    ((3, 3, 4), False),  # one owner's t=4 binds the sum its shares enter
    ((4, 4, 4, 4), True),
]


@pytest.mark.slow
@pytest.mark.parametrize("floors, revealed", FLOORS, ids=["-".join(map(str, f)) for f, _ in FLOORS])
def test_a_request_below_the_owners_t_reveals_nothing(parties, floors, revealed):
    # Before: the parties' floor was max(their own --min-owners, the request's min_owners). A coordinator
    # that sent owners min_owners >= t and asked the parties with 2 got the sum of 2 owners' updates,
    # carrying 2/t of the noise each owner sized its share for.
    addresses, keys = parties
    owners = [f"client_{i}" for i in range(len(floors))]
    deltas = _deltas(len(owners), seed=len(floors) * 10 + max(floors))
    payloads = {o: _protect(_cfg(addresses, min_owners=f), keys, o, d, 10, 1)
                for o, f, d in zip(owners, floors, deltas)}
    run = "tfloor-" + "-".join(map(str, floors))
    meta = {"round": 1, "run": run, "clients": owners, "layout_digest": "L", "length": SIZE, "bound": 1.0,
            "min_owners": 2, "max_weight": None}
    for m, body in _ask_all(addresses, meta, payloads):
        assert m["min_owners"] == max(floors) and m["refused"] is None
        if revealed:
            assert m["status"] == ["ok"] * len(owners) and m["weight"] == 10 * len(owners)
            assert not m["below_min_owners"] and np.abs(body - 10 * sum(deltas)).max() < 1e-3
        else:
            assert m["status"] == ["unchecked"] * len(owners) and m["below_min_owners"]
            assert m["weight"] == 0 and body.size == 0


@pytest.mark.slow
def test_the_coordinator_cannot_rewrite_an_owners_signed_floor(parties):
    # The coordinator lowers min_owners inside each bundle (it cannot re-sign): no party opens the shares.
    # The same through its own backend, asking with aggregation.min_owners=2: the round fails, naming 3.
    addresses, keys = parties
    owners = ("client_0", "client_1")
    payloads = {o: _protect(_cfg(addresses), keys, o, d, 10, 2) for o, d in zip(owners, _deltas(2, seed=7))}
    forged = {}
    for o, p in payloads.items():
        bundle = ShareBundle.decode(p.blobs[BUNDLE])
        assert bundle.min_owners == 3  # the owner's accepted aggregation.min_owners (the default)
        lowered = ShareBundle(**{**bundle.__dict__, "min_owners": 2}).encode()
        forged[o] = type(p)(blobs={**p.blobs, BUNDLE: lowered})
    meta = {"round": 2, "run": "tfloor-forged", "clients": list(owners), "layout_digest": "L", "length": SIZE,
            "bound": 1.0, "min_owners": 2, "max_weight": None}
    for m, body in _ask_all(addresses, meta, forged):
        assert m["status"] == ["unsigned", "unsigned"] and m["below_min_owners"] and body.size == 0
    with pytest.raises(CohortTooSmall, match=r"cohort below aggregation.min_owners=3: 2 of 2 owners remained"):
        CryptenBackend(_cfg(addresses, min_owners=2), SIZE, run="tfloor-backend").combine(payloads,
                                                                                          RoundContext(2, "L"))


# --- who joined: the coin is the owner's, and the payload's length does not tell -------------------------

class Run:  # the part of a FedveilConfig noised_update reads: a delta far above the noise shows the coin
    def __init__(self, sample_rate: float):
        self.seed = 3
        self.dp = OwnerLevelDPConfig(sample_rate=sample_rate, clip_norm=1.0, min_honest_owners=2, gamma=1e4, mu=4.0)


def _joined(update: np.ndarray) -> bool:
    # joined: every value is gamma / sqrt(SIZE) = 1250 (the delta at the clip) plus a share of std 2
    return bool(update.mean() > 625)


def test_the_coin_is_the_owners_own_whatever_the_coordinator_sends():
    # Were the coin drawn from a generator the coordinator can seed (numpy's, Python's, torch's: reseeded
    # here from its seed before every call), two owners given the same inputs would join in the same
    # rounds: the coordinator would know who joined. Two owners' coins over N calls with every input
    # fixed: each joins ~ Binomial(N, q), both ~ Binomial(N, q^2) if independent (Binomial(N, q) if the
    # same). Each count's two-sided band holds with probability >= 1 - 1e-9 / 3: the test fails falsely
    # with probability <= 1e-9.
    n, q, alpha = 2000, 0.3, 1e-9 / 3 / 2
    cfg, delta = Run(q), np.full(SIZE, 1.0)
    coins = np.zeros((2, n), bool)
    for i in range(n):
        for owner in range(2):
            np.random.seed(cfg.seed)
            random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
            coins[owner, i] = _joined(owner_level.noised_update(cfg, delta))

    def band(p: float) -> tuple[int, int]:
        return int(binom.ppf(alpha, n, p)), int(binom.isf(alpha, n, p))

    low, high = band(q)
    assert low <= coins[0].sum() <= high and low <= coins[1].sum() <= high, (coins.sum(axis=1), band(q))
    low, high = band(q * q)
    both = int((coins[0] & coins[1]).sum())
    assert low <= both <= high, (both, band(q * q))
    assert high < band(q)[0]  # a shared coin (both == each) could not pass


def test_a_joining_and_a_non_joining_owners_sealed_payloads_have_equal_lengths(tmp_path):
    # The update a non-joining owner sends (its noise share alone) is sealed as a joining one's (the delta plus
    # the share): the same blobs, each of the same length, for either share layout and every round.
    keys = [keypair(tmp_path / f"party-{p}")[1] for p in range(3)]
    me = OwnerKeys("client_5", str(tmp_path / "owner"))
    delta = np.full(SIZE, 1.0)
    for shares in ("seeded", "full"):
        cfg = CryptenConfig(parties=3, shares=shares)
        owner = CryptenBackend(cfg, SIZE, party_keys=keys, run="run", keys=me)
        for server_round in (1, 2, 3):
            lengths = {}
            for q in (1.0, 1e-12):  # joins for sure, stays out but for 1e-12
                update = owner_level.noised_update(Run(q), delta)
                assert _joined(update) == (q == 1.0)
                sealed = owner.protect(update, 1.0, RoundContext(server_round, "L", "client_5"))
                lengths[q] = {k: len(v) for k, v in sealed.blobs.items()}
            assert lengths[1.0] == lengths[1e-12], (shares, server_round)
            assert set(lengths[1.0]) == {"share.0", "share.1", "share.2", BUNDLE}


# --- amplification: charged at the owner's own q, whoever the coordinator picks ----------------------------

def _ledger_epsilons(state_dir) -> list[float]:
    ledger = owner_ledger.load(state_dir)
    return [] if ledger is None else [r.epsilon_after for r in ledger.history]


def _trains(rounds, overrides=None):
    return [msg("train", r, cfg=overrides or {}, per_round={wire.PARTY_KEYS: _party_keys()}) for r in rounds]


def _party_keys() -> str:
    return ",".join(bytes(PrivateKey.generate().public_key).hex() for _ in range(2))


@pytest.mark.slow
def test_an_owner_the_coordinator_picks_is_charged_at_its_own_q_and_never_past_its_cap(datasets, tiny_gpt2, tmp_path,
                                                                                      monkeypatch):
    # A coordinator samples 3 of 100 owners a round (clients_per_round), or sends the train message to this owner
    # alone, round after round: were the owner to believe its sampling, it would charge each round at
    # q x 3/100. It charges q (its own coin's), as in the full cohort.
    model, base = {"path": str(tiny_gpt2)}, owner_level_base()
    cohorts = {"full cohort": {}, "picked": {"num_clients": 100, "clients_per_round": 3}}
    spent = {}
    for name, overrides in cohorts.items():
        out = transcript(_trains((1, 2, 3), overrides), datasets["D"], tmp_path / name, model, monkeypatch, base,
                         OWNER_LEVEL_POLICY)
        assert all(reply[1][0] != "error" for reply in out), out
        spent[name] = _ledger_epsilons(tmp_path / name)
    dp = OwnerLevelDPConfig(**base["dp"])
    mu, q, l1, l2 = run_entry(dp, START["size"])
    expected = [skellam.epsilon_of([(mu, q, l1, l2, k)], dp.delta) for k in (1, 2, 3)]
    assert spent["picked"] == spent["full cohort"] == pytest.approx(expected, rel=1e-9)
    claimed = skellam.epsilon_of([(mu, q * 3 / 100, l1, l2, 3)], dp.delta)
    assert claimed < expected[2] / 2  # what amplification by the coordinator's pick would have claimed

    # The same owner with its cap between its epsilon after 2 and after 3 rounds: the coordinator asks for a
    # target within the cap (the policy passes it) but sends the noise planned for more; round 3 is refused
    # ("budget"), nothing is reserved for it, and the ledger stays within the cap.
    cap = (expected[1] + expected[2]) / 2
    capped = OwnerPolicy(**{**OWNER_LEVEL_POLICY.__dict__, "owner_level_max_epsilon": cap})
    out = transcript(_trains((1, 2, 3), {"dp.target_epsilon": cap}), datasets["D"], tmp_path / "capped", model,
                     monkeypatch, base, capped)
    assert [reply[1][0] == "error" for reply in out] == [False, False, True]
    assert out[2][1][2] == "budget", out[2]
    assert _ledger_epsilons(tmp_path / "capped") == pytest.approx(expected[:2], rel=1e-9)
    assert max(_ledger_epsilons(tmp_path / "capped")) <= cap


@pytest.mark.slow
def test_an_owner_that_allows_no_amplification_refuses_q_below_1_before_any_epsilon(datasets, tiny_gpt2, tmp_path,
                                                                                   monkeypatch):
    model, base = {"path": str(tiny_gpt2)}, owner_level_base()
    assert base["dp"]["sample_rate"] == 0.5
    strict = OwnerPolicy(**{**OWNER_LEVEL_POLICY.__dict__, "allow_amplification": False,
                            "owner_level_max_sample_rate": None})
    out = transcript(_trains((1,)), datasets["D"], tmp_path / "strict", model, monkeypatch, base, strict)
    assert out[0][1][0] == "error" and "policy rule=allow_amplification" in out[0][1][2], out
    assert not owner_ledger.ledger_path(tmp_path / "strict").exists()
    # control: the same owner takes the round at q = 1 (no amplification claimed), charged at q = 1
    out = transcript(_trains((1,), {"dp.sample_rate": 1.0}), datasets["D"], tmp_path / "q1", model, monkeypatch,
                     base, strict)
    assert out[0][1][0] != "error", out
    assert [r.sample_rate for r in owner_ledger.load(tmp_path / "q1").history] == [1.0]


def test_the_node_configs_max_epsilon_caps_the_owner_level_budget_where_the_policy_sets_none(tmp_path):
    """The coordinator's dp.target_epsilon (50) cannot set the budget of an owner whose node config caps
    ε (30) and whose policy names no owner-level cap: the node's cap holds, and a round past it is refused."""
    cfg = from_dict({"dp": {"name": "owner_level", "gamma": 1000.0, "mu": 1e4, "target_epsilon": 50.0},
                     "aggregation": {"name": "crypten", "min_owners": 3}, "num_clients": 5})
    record = owner_level.reserve(cfg, OwnerPolicy(), str(tmp_path / "node"), "run#1", 1, 64, node_cap=30.0)
    assert record[wire.DP_BUDGET] == 30.0 == owner_ledger.load(tmp_path / "node").budget_epsilon  # not the run's 50
    with pytest.raises(Refusal) as refused:  # a round past the node's cap: refused, nothing recorded
        owner_level.reserve(cfg, OwnerPolicy(), str(tmp_path / "tight"), "run#1", 1, 64, node_cap=1e-3)
    assert refused.value.code == "budget" and owner_ledger.load(tmp_path / "tight") is None
    wins = owner_level.reserve(cfg, OwnerPolicy(owner_level_max_epsilon=40.0), str(tmp_path / "policy"), "run#1", 1,
                               64, node_cap=30.0)
    assert wins[wire.DP_BUDGET] == 40.0  # the policy's own key wins over the node config
