"""Each backend prices its own bytes (``BackendSpec.cost``): known answers, the contract every backend
keeps, and the calibration the planner passes in (secagg never reads the planner's file itself).

The known answers are the figures the planner gave before the byte models moved out of
``privacy/planner.py`` (under DP, where no held-out pair travels), and the same figures without DP,
where each owner's held-out pair (and tenseal's evalsum message) adds to them; ``test_planner.py``
checks the same models against what ``protect()`` and the server's arrays really hold, and the
tests at the end check the pair's against real protected pairs."""

import numpy as np
import pytest

from fedveil.core.errors import UserError

from fedveil.core.payload import RoundContext
from fedveil.privacy import planner
from fedveil.privacy.planner import PrivacyConfig, choose
from fedveil.privacy.secagg import BACKENDS
from fedveil.privacy.secagg.base import Cost
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.crypten.cost import pair_bytes as crypten_pair_bytes
from fedveil.privacy.secagg.eval_pair import as_update
from fedveil.privacy.secagg.identity import OwnerKeys
from fedveil.privacy.secagg.plain import PlainBackend, PlainConfig
from fedveil.privacy.secagg.sealing import keypair
from fedveil.privacy.secagg.tenseal.backend import TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal import cost as tenseal_cost
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.context import make_context, public_bytes, secret_bytes

TINY, MID = 16_384, 262_144
BYTES = ("update_up", "global_down", "global_down_first", "reencrypt_up", "party_in", "party_out", "parties")

KNOWN = [  # (backend, config, values, owners) -> update_up, global_down, global_down_first, reencrypt_up, party_*
    ("plain", PlainConfig(), TINY, 3, (65_544, 131_072, 131_072, 0, 0, 0, 0)),
    # tenseal: owners keep the global they opened (tenseal/kept.py), so a steady round downloads the round's signed
    # updates alone, as round 1 does (was: + the signed base twice, 657_427, 214_365_792, 42_364_071,
    # 113_087_558 and 3_674_114)
    ("tenseal", TensealConfig(), TINY, 3, (131_571, 394_513, 394_513, 131_423, 0, 0, 0)),
    ("tenseal", TensealConfig(), MID, 100, (2_101_701, 210_162_618, 210_162_618, 2_101_553, 0, 0, 0)),
    ("tenseal", TensealConfig(scheme="ckks"), MID, 3, (8_472_879, 25_418_437, 25_418_437, 8_472_783, 0, 0, 0)),
    ("tenseal", TensealConfig(max_owners=1000), 1_000_003, 12,
     (8_077_762, 96_932_262, 96_932_262, 8_077_614, 0, 0, 0)),
    ("tenseal", TensealConfig(max_owners=2000), TINY, 12, (262_516, 3_149_310, 3_149_310, 262_368, 0, 0, 0)),
    # crypten, seed-compressed shares (the default): one full share + K-1 sealed seeds up (was K full shares:
    # 394_331 and 10_487_432); party_in is the mean over parties of the shares and seeds, plus every owner's
    # whole bundle (was K full shares and a K-th of each bundle: 394_329 and 209_748_600). Each bundle signs
    # the owner's floor, '"min_owners": 3, ' (+17 B up, +17 B per owner to each party; was 132_299, 133_281,
    # 2_099_032, 42_030_800, 394_379, 395_361, 10_487_512 and 209_800_400)
    ("crypten", CryptenConfig(parties=3), TINY, 3, (132_316, 131_072, 131_072, 0, 133_332, 131_072, 3)),
    ("crypten", CryptenConfig(parties=5), MID, 100, (2_099_049, 2_097_152, 2_097_152, 0, 42_032_500, 2_097_152, 5)),
    # the earlier layout, aggregation.shares=full: as before, +16 B per header (its "form" field) and the bundles
    ("crypten", CryptenConfig(parties=3, shares="full"), TINY, 3, (394_396, 131_072, 131_072, 0, 395_412, 131_072, 3)),
    ("crypten", CryptenConfig(parties=5, shares="full"), MID, 100,
     (10_487_529, 2_097_152, 2_097_152, 0, 209_802_100, 2_097_152, 5)),
]


@pytest.mark.parametrize("name, cfg, values, owners, expected", KNOWN,
                         ids=[f"{k[0]}-{i}" for i, k in enumerate(KNOWN)])
def test_each_backend_prices_its_bytes_exactly_as_before(name, cfg, values, owners, expected):
    """Under DP: the figures as pinned before the held-out pair, which never travels under DP."""
    cost = BACKENDS[name].cost(cfg, values, owners, planner.calibration(), dp_on=True)
    assert isinstance(cost, Cost) and (cost.backend, cost.values, cost.owners) == (name, values, owners)
    assert tuple(getattr(cost, k) for k in BYTES) == expected
    assert (cost.eval_up, cost.evalsum_down, cost.evalsum_up) == (0, 0, 0)
    assert cost.per_owner == cost.update_up + cost.global_down
    assert cost.seconds == 0.0  # the backend prices bytes; the planner adds the rough seconds
    planned = planner.estimate(name, cfg, values, owners, dp_on=True)
    assert tuple(getattr(planned, k) for k in BYTES) == expected
    assert planned.seconds == planner.rough_seconds(name, values, owners)


PAIR = ("eval_up", "evalsum_down", "evalsum_up", "party_in", "party_out", "per_owner", "per_round")
KNOWN_NO_DP = [  # the same runs without DP -> eval_up, evalsum_down, evalsum_up, party_in, party_out, per_*
    # plain: 2 float64 (loss, tokens) per owner up
    (KNOWN[0], (16, 0, 0, 0, 0, 196_632, 589_896)),
    # tenseal: a 56 B secret box + 64 B signature up; one owner gets the cohort's (framed, with a JSON head)
    # and replies with the mean (float64)
    (KNOWN[1], (120, 448, 8, 0, 0, 526_204, 1_710_491)),
    (KNOWN[2], (120, 14_118, 8, 0, 0, 212_264_439, 21_228_559_579)),
    (KNOWN[3], (120, 448, 8, 0, 0, 33_891_436, 110_147_547)),
    # crypten: the pair's sealed share and K-1 seeds (was K shares: 1_191 and 1_787 B) + the signed bundle up;
    # each party gets its share or seed of every pair and every bundle, and returns the pair's float64 sum; the
    # pair's bundle signs the owner's floor too (+17 B: was 1_271, 1_931, 1_239 and 1_867 up)
    (KNOWN[6], (1_288, 0, 0, 135_656, 131_072 + 16, 264_676, 1_594_260)),
    (KNOWN[7], (1_948, 0, 0, 42_123_780, 2_097_152 + 16, 4_198_149, 640_919_640)),
    (KNOWN[8], (1_256, 0, 0, 397_704, 131_072 + 16, 526_724, 3_166_548)),
    (KNOWN[9], (1_884, 0, 0, 209_892_100, 2_097_152 + 16, 12_586_565, 2_318_602_840)),
]


@pytest.mark.parametrize("known, expected", KNOWN_NO_DP, ids=[f"{k[0][0]}-{i}" for i, k in enumerate(KNOWN_NO_DP)])
def test_without_dp_each_backend_adds_the_held_out_pair_and_nothing_else(known, expected):
    name, cfg, values, owners, under_dp = known
    cost = planner.estimate(name, cfg, values, owners, dp_on=False)
    assert tuple(getattr(cost, k) for k in PAIR[:5]) + (cost.per_owner, cost.per_round) == expected
    # the update and the global are as under DP (crypten's parties: plus the pairs, checked above)
    same = [k for k in BYTES if k not in ("party_in", "party_out")]
    assert [getattr(cost, k) for k in same] == [v for k, v in zip(BYTES, under_dp) if k in same]
    assert cost.per_owner == cost.update_up + cost.eval_up + cost.global_down
    assert cost.per_round == (owners * cost.per_owner + cost.reencrypt_up + cost.evalsum_down + cost.evalsum_up
                              + cost.parties * (cost.party_in + cost.party_out))
    assert {"eval_up", "evalsum_down", "evalsum_up"} <= set(cost.as_dict())


CARRIED = ("global_down_first", "second_down", "global_down", "evaluate_down", "per_owner")
KNOWN_CARRIED = [  # eval_in_train (the default), under DP -> round 1, round 2, a steady round, the last's evaluate
    # message, per_owner; then the downloads of rounds 1..3 of a 3-round run
    # plain and crypten: one fp32 global a round (the train message), the last round's evaluate message besides
    (KNOWN[0], (65_536, 65_536, 65_536, 65_536, 131_080), (65_536, 65_536, 131_072)),
    (KNOWN[6], (65_536, 65_536, 65_536, 65_536, 197_852), (65_536, 65_536, 131_072)),
    # tenseal: round r's train sends round r-1's signed updates (round 1 nothing); the owner keeps the global after
    # r-2 it opened in round r-1, so no signed base (was 525_970 a steady round: tests/faults/test_tenseal_kept_global)
    (KNOWN[1], (0, 394_513, 394_513, 394_513, 526_084), (0, 394_513, 789_026)),
    (KNOWN[2], (0, 210_162_618, 210_162_618, 210_162_618, 212_264_319), (0, 210_162_618, 420_325_236)),
]


@pytest.mark.parametrize("known, expected, by_round", KNOWN_CARRIED,
                         ids=[f"{k[0][0]}-{i}" for i, k in enumerate(KNOWN_CARRIED)])
def test_carried_evaluation_prices_one_global_a_round_but_the_last(known, expected, by_round):
    name, cfg, values, owners, _ = known
    apart = planner.estimate(name, cfg, values, owners, dp_on=True)
    cost = planner.estimate(name, cfg, values, owners, dp_on=True, carried=True)
    assert cost.carried and not apart.carried
    assert tuple(getattr(cost, k) for k in CARRIED) == expected
    assert tuple(cost.down_in(r, 3) for r in (1, 2, 3)) == by_round
    # what travels up is as apart; apart, every round is round 1's or a steady one
    assert (cost.update_up, cost.eval_up, cost.reencrypt_up) == (apart.update_up, apart.eval_up, apart.reencrypt_up)
    assert [apart.down_in(r, 3) for r in (1, 2, 3)] == [apart.global_down_first, apart.global_down, apart.global_down]
    # over a run, carrying saves a steady round's evaluate message in every round but the last
    for rounds in range(1, 6):
        saved = sum(apart.down_in(r, rounds) - cost.down_in(r, rounds) for r in range(1, rounds + 1))
        assert saved == (rounds - 1) * (apart.global_down - cost.global_down) > -1
    assert cost.last_per_owner(3) == cost.per_owner + by_round[2] - cost.global_down > cost.per_owner
    # as summary.json keeps it
    assert type(cost).of(cost.as_dict()) == cost


def test_carried_rounds_bring_two_evaluations_and_re_encryptions_in_the_last_round_none_handed_over_in_the_first():
    apart = planner.estimate("tenseal", TensealConfig(), TINY, 3, dp_on=False)
    cost = planner.estimate("tenseal", TensealConfig(), TINY, 3, dp_on=False, carried=True)
    assert [cost.evaluations_in(r, 3) for r in (1, 2, 3)] == [1, 1, 2]  # round 0's in round 1; rounds 2's and 3's
    assert [cost.reencrypts_in(r, 3) for r in (1, 2, 3)] == [0, 1, 2]  # the starting adapter is no one's
    assert [cost.reencrypts_in(1, 1), cost.evaluations_in(1, 1)] == [1, 2]
    assert [(apart.evaluations_in(r, 3), apart.reencrypts_in(r, 3)) for r in (1, 2, 3)] == [(1, 1)] * 3
    assert cost.last_per_owner(3) == cost.per_owner + cost.evaluate_down + cost.eval_up  # a second pair up


def test_the_byte_limit_counts_the_held_out_pair_without_dp():
    """A limit that fits tenseal's steady-state round under DP exactly is 120 bytes short without DP."""
    cfg, private = TensealConfig(), PrivacyConfig(coordinator="curious")
    under_dp = planner.estimate("tenseal", cfg, TINY, 3, dp_on=True).per_owner
    limited = PrivacyConfig(coordinator="curious", max_bytes_per_round=under_dp)
    assert choose(limited, 3, values=TINY, dp_on=True).pick == "tenseal"
    plan = choose(limited, 3, values=TINY, dp_on=False)
    tenseal = next(v for v in plan.verdicts if v.backend == "tenseal")
    assert plan.pick is None and tenseal.why_not == [f"moves {under_dp + 120:,} bytes per owner per round, over "
                                                     f"privacy.max_bytes_per_round={under_dp:,}"]
    assert choose(private, 3, values=TINY, dp_on=False).pick == "tenseal"


def test_crypten_update_bytes_follow_the_owner_and_round_its_headers_name():
    cfg = CryptenConfig(parties=3)
    assert BACKENDS["crypten"].update_bytes(cfg, TINY) == 132_316  # client_0, round 1
    # 3 share (or seed) headers and the bundle each name the owner (+2 characters) and the round (+3 digits);
    # which party gets the full share moves with them, the total does not
    assert BACKENDS["crypten"].update_bytes(cfg, TINY, "client_123", 1234) == 132_316 + 4 * (2 + 3)
    # the bundle signs the owner's aggregation.min_owners: one more digit, one more byte
    assert BACKENDS["crypten"].update_bytes(CryptenConfig(parties=3, min_owners=10), TINY) == 132_316 + 1
    assert BACKENDS["tenseal"].update_bytes(TensealConfig(), TINY, "client_123", 1234) == 131_571  # no ids inside


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_keeps_the_cost_contract(name):
    spec = BACKENDS[name]
    cfg = spec.priced_config(3, 3) if spec.priced_config else spec.config()
    cost = spec.cost(cfg, TINY, 3, planner.calibration(), dp_on=True)
    assert cost.update_up == spec.update_bytes(cfg, TINY, "client_0", 1, planner.calibration())
    assert cost.per_owner == cost.update_up + cost.global_down > 4 * TINY
    assert cost.global_down_first <= cost.global_down
    without_dp = spec.cost(cfg, TINY, 3, planner.calibration(), dp_on=False)
    assert 0 < without_dp.eval_up < 2_000 and without_dp.per_owner == cost.per_owner + without_dp.eval_up


def test_the_calibrated_ciphertext_sizes_are_what_tenseal_produces_and_the_planner_passes_them_in(monkeypatch):
    """Without calibration.json the backend measures its ciphertexts with TenSEAL: the same bytes. The
    planner hands its calibration to the spec (a different size there moves the estimate by exactly that)."""
    spec, cfg = BACKENDS["tenseal"], TensealConfig()
    assert spec.cost(cfg, TINY, 3, dp_on=True) == spec.cost(cfg, TINY, 3, planner.calibration(), dp_on=True)
    key = "bfv/4096/[60, 49]/46"
    real = planner.calibration()["tenseal_ciphertext_fixed_bytes"][key]
    monkeypatch.setattr(planner, "calibration", lambda: {"tenseal_ciphertext_fixed_bytes": {key: real + 10}})
    assert planner.estimate("tenseal", cfg, TINY, 3, dp_on=True).update_up == 131_571 + 2 * 10  # two ciphertexts



# --- the held-out pair: planned bytes == what a real protected pair holds ----------------------

def pair_ctx(owner: str, server_round: int = 1, digest: str = "0" * 64) -> RoundContext:
    return RoundContext(server_round, digest, owner).for_eval_pair()


def test_plain_plans_the_bytes_of_a_protected_pair():
    pair = PlainBackend(size=TINY).protect(*as_update(2.25, 1_234), pair_ctx("client_0"))
    assert pair.nbytes == planner.estimate("plain", PlainConfig(), TINY, 3, dp_on=False).eval_up == 16


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_tenseal_plans_the_bytes_of_signed_pairs_and_of_the_evalsum_message(tmp_path, scheme):
    """Each owner's boxed, signed pair, and the server's combined pairs, which the evalsum message carries
    to one owner (its KEYS record)."""
    owners, cfg = 3, TensealConfig(scheme=scheme)
    ctx = make_context(cfg)
    sides = {f"client_{i}": TensealOwner(cfg, TINY, public=public_bytes(ctx), secret=secret_bytes(ctx),
                                         keys=OwnerKeys(f"client_{i}", str(tmp_path / str(i))), run="run")
             for i in range(owners)}
    pairs = {o: side.protect(*as_update(2.0 + i, 100 * (i + 1)), pair_ctx(o))
             for i, (o, side) in enumerate(sides.items())}
    planned = planner.estimate("tenseal", cfg, TINY, owners, dp_on=False)
    assert {p.nbytes for p in pairs.values()} == {planned.eval_up}
    combined = TensealServer(cfg, TINY, public=public_bytes(ctx)).combine(pairs, pair_ctx(""))
    assert not combined.excluded and combined.payload.nbytes == planned.evalsum_down
    # the mean it replies with (its checks: tests/adversary/test_tenseal_eval_pair_attacks.py)
    assert planned.evalsum_up == np.dtype(np.float64).itemsize


def test_crypten_plans_the_bytes_of_a_protected_pair(tmp_path):
    cfg = CryptenConfig(parties=3)
    parties = [keypair(tmp_path / f"p{i}")[1] for i in range(cfg.parties)]
    backend = CryptenBackend(cfg, TINY, party_keys=parties, keys=OwnerKeys("client_0", str(tmp_path / "o")))
    planned = planner.estimate("crypten", cfg, TINY, 3, dp_on=False)
    real = backend.protect(*as_update(2.0, 10), pair_ctx("client_0"))
    assert real.nbytes == planned.eval_up == crypten_pair_bytes(cfg, "client_0", "", "0" * 64, 1)
    # as for updates, the run id, owner id and round in the headers and bundle move it by their lengths
    assert crypten_pair_bytes(cfg, "client_12", "run", "0" * 64, 10) == planned.eval_up + 4 * (1 + 1) + 3


# --- tenseal's download forms (tenseal/committee.py): every update, a verifier committee, the sum alone -------

FORM_BYTES = ("update_up", "reveal_up", "global_down", "committee", "committee_down", "committee_up")
FORMS_100 = {  # tiny adapter, 100 owners per round (BFV for 100), under DP, committee of 2 (the default) and 3
    2: {"every": (131_571, 0, 13_149_618, 0, 0, 0),
        # + commitment and signed contribution up, the nonce and its reveal signature up; down (the owner keeps the
        # global it opened: no signed base): two Merkle paths + the sum + the lean certificate (names, nonces, one
        # root, the members' signatures); a member: the paths, the full set, every other signed update and the
        # signatures (it computes the sum), its signature up
        "committee": (131_667, 96, 141_928, 2, 13_038_876, 64),
        "sum": (131_571, 0, 136_627, 0, 0, 0)},
    3: {"committee": (131_667, 96, 142_020, 3, 13_038_980, 64)},
}


@pytest.mark.parametrize("size", [2, 3])
def test_tenseal_prices_each_download_form_with_its_mean_and_max_over_owners(size):
    cfg = tenseal_cost.priced_config(100)
    cfg.committee_size = size
    forms = planner.download_forms("tenseal", cfg, TINY, 100, dp_on=True)
    assert {f: tuple(getattr(c, k) for k in FORM_BYTES) for f, c in forms.items() if f in FORMS_100[size]} == \
        FORMS_100[size]
    every, committee, alone = forms["every"], forms["committee"], forms["sum"]
    assert every == tenseal_cost.cost(cfg, TINY, 100, planner.calibration(), dp_on=True)  # what runs today
    assert committee.mean_down == ((100 - size) * committee.global_down + size * committee.committee_down) / 100
    assert committee.max_down == committee.committee_down  # a member downloads the whole round
    assert committee.per_owner == committee.update_up + committee.reveal_up + committee.committee_down + 64
    assert committee.per_round == (100 * (committee.update_up + 96 + committee.global_down) + committee.reencrypt_up
                                   + size * (committee.committee_down - committee.global_down + 64))
    assert alone.max_down == alone.mean_down == alone.global_down
    # against plain's download with its evaluation apart (131 KB, where issue 23's 4x is defined): outside the
    # committee and the sum alone about one ciphertext set (1.08x, 1.04x); the mean 1 + c x 0.99 x 2 sets
    plain = planner.estimate("plain", PlainConfig(), TINY, 100, dp_on=True).global_down
    assert plain == 131_072
    assert round(committee.global_down / plain, 2) == 1.08 and round(alone.global_down / plain, 3) == 1.042
    assert round(committee.mean_down / plain, 2) == {2: 3.05, 3: 4.04}[size]
    assert round(every.global_down / plain, 1) == 100.3


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_the_priced_sum_is_the_sum_blob_the_server_makes(scheme):
    cfg, owners = TensealConfig(scheme=scheme, max_owners=4), 4
    ctx = make_context(cfg)
    side = TensealOwner(cfg, TINY, public=public_bytes(ctx), secret=secret_bytes(ctx))
    payloads = {f"client_{i}": side.protect(np.full(TINY, 0.01 * i), 1.0) for i in range(owners)}
    total = TensealServer(cfg, TINY, public=public_bytes(ctx)).combine(payloads)
    assert not total.excluded
    assert len(total.payload.blobs["ciphertext"]) == tenseal_cost.sum_blob_bytes(cfg, TINY, owners,
                                                                                 planner.calibration())
    assert tenseal_cost.COMMIT_BYTES == 32 + 64  # commitment + Ed25519 signature beside each update


def test_the_planner_picks_the_download_form_from_the_stated_threats():
    assert planner.download_form(PrivacyConfig()) == ("committee", True)
    assert planner.download_form(PrivacyConfig(malicious_owners=False)) == ("sum", False)
    assert planner.download_form(PrivacyConfig(coordinator="malicious", malicious_owners=False)) == ("committee", False)
    with pytest.raises(UserError, match="privacy.malicious_owners must be true or false"):
        PrivacyConfig(malicious_owners="yes")
    for size in (0, 1, True, 2.5):
        with pytest.raises(UserError, match="aggregation.committee_size must be an integer >= 2"):
            TensealConfig(committee_size=size)
