"""Each backend prices its own bytes (``BackendSpec.cost``): known answers, the contract every backend
keeps, and the calibration the planner passes in (secagg never reads the planner's file itself).

The known answers are the figures the planner gave before the byte models moved out of
``privacy/planner.py``; ``test_planner.py`` checks the same models against what ``protect()`` and the
server's arrays really hold."""

import pytest

from fedveil.privacy import planner
from fedveil.privacy.secagg import BACKENDS
from fedveil.privacy.secagg.base import Cost
from fedveil.privacy.secagg.crypten.backend import CryptenConfig
from fedveil.privacy.secagg.plain import PlainConfig
from fedveil.privacy.secagg.tenseal.config import TensealConfig

TINY, MID = 16_384, 262_144
BYTES = ("update_up", "global_down", "global_down_first", "reencrypt_up", "party_in", "party_out", "parties")

KNOWN = [  # (backend, config, values, owners) -> update_up, global_down, global_down_first, reencrypt_up, party_*
    ("plain", PlainConfig(), TINY, 3, (65_544, 131_072, 131_072, 0, 0, 0, 0)),
    ("tenseal", TensealConfig(), TINY, 3, (131_571, 657_427, 394_513, 131_423, 0, 0, 0)),
    ("tenseal", TensealConfig(), MID, 100, (2_101_701, 214_365_792, 210_162_618, 2_101_553, 0, 0, 0)),
    ("tenseal", TensealConfig(scheme="ckks"), MID, 3, (8_472_879, 42_364_071, 25_418_437, 8_472_783, 0, 0, 0)),
    ("tenseal", TensealConfig(max_owners=1000), 1_000_003, 12,
     (8_077_762, 113_087_558, 96_932_262, 8_077_614, 0, 0, 0)),
    ("tenseal", TensealConfig(max_owners=2000), TINY, 12, (262_516, 3_674_114, 3_149_310, 262_368, 0, 0, 0)),
    ("crypten", CryptenConfig(parties=3), TINY, 3, (394_331, 131_072, 131_072, 0, 394_329, 131_072, 3)),
    ("crypten", CryptenConfig(parties=5), MID, 100, (10_487_432, 2_097_152, 2_097_152, 0, 209_748_600, 2_097_152, 5)),
]


@pytest.mark.parametrize("name, cfg, values, owners, expected", KNOWN,
                         ids=[f"{k[0]}-{i}" for i, k in enumerate(KNOWN)])
def test_each_backend_prices_its_bytes_exactly_as_before(name, cfg, values, owners, expected):
    cost = BACKENDS[name].cost(cfg, values, owners, planner.calibration())
    assert isinstance(cost, Cost) and (cost.backend, cost.values, cost.owners) == (name, values, owners)
    assert tuple(getattr(cost, k) for k in BYTES) == expected
    assert cost.seconds == 0.0  # the backend prices bytes; the planner adds the rough seconds
    planned = planner.estimate(name, cfg, values, owners)
    assert tuple(getattr(planned, k) for k in BYTES) == expected
    assert planned.seconds == planner.rough_seconds(name, values, owners)


def test_crypten_update_bytes_follow_the_owner_and_round_its_headers_name():
    cfg = CryptenConfig(parties=3)
    assert BACKENDS["crypten"].update_bytes(cfg, TINY) == 394_331  # client_0, round 1
    # 3 share headers and the bundle each name the owner (+2 characters) and the round (+3 digits)
    assert BACKENDS["crypten"].update_bytes(cfg, TINY, "client_123", 1234) == 394_331 + 4 * (2 + 3)
    assert BACKENDS["tenseal"].update_bytes(TensealConfig(), TINY, "client_123", 1234) == 131_571  # no ids inside


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_keeps_the_cost_contract(name):
    spec = BACKENDS[name]
    cfg = spec.priced_config(3, 3) if spec.priced_config else spec.config()
    cost = spec.cost(cfg, TINY, 3, planner.calibration())
    assert cost.update_up == spec.update_bytes(cfg, TINY, "client_0", 1, planner.calibration())
    assert cost.per_owner == cost.update_up + cost.global_down > 4 * TINY
    assert cost.global_down_first <= cost.global_down


def test_the_calibrated_ciphertext_sizes_are_what_tenseal_produces_and_the_planner_passes_them_in(monkeypatch):
    """Without calibration.json the backend measures its ciphertexts with TenSEAL: the same bytes. The
    planner hands its calibration to the spec (a different size there moves the estimate by exactly that)."""
    spec, cfg = BACKENDS["tenseal"], TensealConfig()
    assert spec.cost(cfg, TINY, 3) == spec.cost(cfg, TINY, 3, planner.calibration())
    key = "bfv/4096/[60, 49]/46"
    real = planner.calibration()["tenseal_ciphertext_fixed_bytes"][key]
    monkeypatch.setattr(planner, "calibration", lambda: {"tenseal_ciphertext_fixed_bytes": {key: real + 10}})
    assert planner.estimate("tenseal", cfg, TINY, 3).update_up == 131_571 + 2 * 10  # two ciphertexts

