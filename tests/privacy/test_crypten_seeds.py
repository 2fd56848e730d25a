"""Seed-compressed crypten shares (``shares.seal_shares``): K-1 sealed ChaCha20 seeds and one full share
that rotates over owners and rounds; exact reconstruction, reproducible expansion, exact bytes."""

import numpy as np
import pytest
from nacl.public import PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy.stats import chisquare

from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError, RoundContext
from fedveil.privacy.secagg.crypten import cost
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.crypten.eval_pair import purpose_tag
from fedveil.privacy.secagg.crypten.party import encode_request
from fedveil.privacy.secagg.crypten.shares import (
    BUNDLE, FULL, SEED, ShareHeader, decode_fixed, encode_fixed, expand_seed, full_party, open_share, reconstruct,
    seal_shares,
)
from fedveil.privacy.secagg.identity import OwnerKeys


def _parties(k):
    keys = [PrivateKey.generate() for _ in range(k)]
    return [bytes(p) for p in keys], [bytes(p.public_key) for p in keys]


def _opened(sealed, private, owner, server_round, layout, length, run):
    return [open_share(blob, private[p], ShareHeader(server_round, owner, p, layout, length), run)
            for p, blob in enumerate(sealed)]


@pytest.mark.parametrize("parties", [2, 3, 5])
def test_seeded_shares_reconstruct_the_update_exactly_and_only_one_party_gets_a_full_share(parties):
    private, public = _parties(parties)
    ring = encode_fixed(np.random.default_rng(parties).normal(scale=3.0, size=1000))
    for owner, server_round in (("client_0", 1), ("client_7", 4), ("heavy", 2)):
        sealed = seal_shares(ring, owner, server_round, "L", "run-1", public, 12.0)
        full = full_party(owner, server_round, parties)
        assert [len(b) > 8 * ring.size for b in sealed] == [p == full for p in range(parties)]
        opened = _opened(sealed, private, owner, server_round, "L", ring.size, "run-1")
        assert {count for count, _ in opened} == {12.0}
        assert np.array_equal(reconstruct([share for _, share in opened]), ring)  # exact, in the ring
    # the earlier layout: K full shares, same sum
    sealed = seal_shares(ring, "client_0", 1, "L", "run-1", public, 1.0, shares="full")
    assert all(len(b) > 8 * ring.size for b in sealed)
    assert np.array_equal(reconstruct([s for _, s in _opened(sealed, private, "client_0", 1, "L", 1000, "")]), ring)


def test_a_seed_expands_the_same_on_every_machine():
    # the primitive as RFC 8439 (2.4.2) states it: cryptography's 16-byte ChaCha20 nonce is the 32-bit
    # little-endian block counter, then the 96-bit nonce; expand_seed starts the counter at 0
    key, nonce = bytes(range(32)), bytes.fromhex("01000000" "000000000000004a00000000")
    text = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen"
    assert Cipher(algorithms.ChaCha20(key, nonce), mode=None).encryptor().update(text)[:16].hex() == \
        "6e2e359a2568f98041ba0728dd0d6981"
    # a known answer for the expansion itself: key = the seed, nonce = SHA-256 of the run and the sealed
    # header (length-prefixed, identity.digest), read as little-endian int64
    header = ShareHeader(3, "client_1", 2, "L", 4, SEED)
    ring = expand_seed(bytes(range(32)), header, "run-1")
    assert ring.dtype == np.int64 and ring.tolist() == [-7327571590636867016, -4844839638832864084,
                                                        -5696550805101320950, -3821293818870572054]
    with pytest.raises(PayloadError, match="32 bytes"):
        expand_seed(bytes(31), header, "run-1")


def test_the_full_share_rotates_over_owners_and_rounds_so_each_party_carries_an_even_load():
    owners = [f"client_{i}" for i in range(30)]
    for parties in (3, 5):
        for server_round in (1, 2, 3):
            load = np.bincount([full_party(o, server_round, parties) for o in owners], minlength=parties)
            assert load.tolist() == [30 // parties] * parties
        # each owner's full share moves to the next party every round
        assert [full_party("client_4", r, parties) for r in range(1, parties + 1)] == \
            [(4 + r) % parties for r in range(1, parties + 1)]
    # ids without an index are placed by a hash, still within range and stable
    assert full_party("heavy", 1, 3) == full_party("heavy", 1, 3) in range(3)


def test_a_seed_presented_in_any_other_context_expands_to_an_unrelated_share():
    # One seed, and every field the nonce binds changed in turn: the run, the round, the owner, the party,
    # the layout (a held-out pair's purpose tag), the length. No two expansions agree anywhere but by chance,
    # and the difference between two rounds' expansions is uniform: a full share masked by a seed re-used in
    # another round tells its party nothing about the difference of the two updates (see also
    # tests/adversary/test_crypten_attacks.py::test_a_seed_reused_across_rounds_leaves_the_full_share_masked).
    seed, n = bytes(range(32)), 20_000
    base = ShareHeader(1, "client_0", 1, "L", n, SEED)
    variants = {"base": (base, "run-1"), "run": (base, "run-2"),
                "round": (ShareHeader(2, "client_0", 1, "L", n, SEED), "run-1"),
                "owner": (ShareHeader(1, "client_1", 1, "L", n, SEED), "run-1"),
                "party": (ShareHeader(1, "client_0", 2, "L", n, SEED), "run-1"),
                "purpose": (ShareHeader(1, "client_0", 1, purpose_tag("L"), n, SEED), "run-1"),
                "form": (ShareHeader(1, "client_0", 1, "L", n, FULL), "run-1")}
    streams = {k: expand_seed(seed, h, r) for k, (h, r) in variants.items()}
    names = list(streams)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.mean(streams[a] == streams[b]) < 1e-3, (a, b)
    with np.errstate(over="ignore"):
        diff = (streams["base"] - streams["round"]).view(np.uint64)
    assert chisquare(np.bincount((diff >> np.uint64(56)).astype(np.int64), minlength=256)).pvalue > 1e-4
    # a longer expansion of the same context is not a prefix of it either (the length is bound too)
    longer = expand_seed(seed, ShareHeader(1, "client_0", 1, "L", n + 1, SEED), "run-1")
    assert np.mean(longer[:n] == streams["base"]) < 1e-3


def test_the_full_share_is_uniform_whatever_the_update():
    # fresh seeds: 4 chi-square tests at 1e-7 fail 4e-7 of runs by chance
    for update in (np.zeros(20_000), np.full(20_000, 3.0)):
        private, public = _parties(3)
        sealed = seal_shares(encode_fixed(update), "client_0", 1, "L", "r", public, 1.0)
        full = full_party("client_0", 1, 3)
        _, share = open_share(sealed[full], private[full], ShareHeader(1, "client_0", full, "L", update.size), "r")
        for part in (share.view(np.uint64) >> np.uint64(56), share.view(np.uint64) & np.uint64(0xFF)):
            assert chisquare(np.bincount(part.astype(np.int64), minlength=256)).pvalue > 1e-7


def test_a_seed_opens_only_for_its_party_round_owner_and_run(tmp_path):
    private, public = _parties(3)
    ring = encode_fixed(np.arange(10) / 7)
    sealed = seal_shares(ring, "client_0", 2, "L", "run-1", public, 5.0)  # full share: party 2; seeds: 0 and 1
    assert full_party("client_0", 2, 3) == 2

    def head(p, **kw):
        return ShareHeader(**{"round": 2, "client": "client_0", "party": p, "layout_digest": "L", "length": 10, **kw})

    with pytest.raises(PayloadError, match="does not open with party 1's key"):
        open_share(sealed[0], private[1], head(1), "run-1")  # a seed sealed to party 0, given to party 1
    for wrong in (head(0, round=3), head(0, client="client_1"), head(0, layout_digest=purpose_tag("L")),
                  head(0, length=11)):
        with pytest.raises(PayloadError, match="does not match"):
            open_share(sealed[0], private[0], wrong, "run-1")
    # the run is not in the sealed header but in the owner's signed bundle (party.py passes the bundle's):
    # under another run the seed expands to another share and the sum is garbage, never the update
    shares = [s for _, s in _opened(sealed, private, "client_0", 2, "L", 10, "run-1")]
    assert np.allclose(decode_fixed(reconstruct(shares)), np.arange(10) / 7, atol=2**-16)
    other = open_share(sealed[0], private[0], head(0), "run-2")[1]
    assert np.abs(decode_fixed(reconstruct([other, *shares[1:]])) - np.arange(10) / 7).min() > 1.0


def test_config_names_the_share_layouts():
    assert CryptenConfig().shares == "seeded" and CryptenConfig(shares="full").shares == "full"
    with pytest.raises(UserError, match="aggregation.shares must be one of seeded|full, got 'zip'"):
        CryptenConfig(shares="zip")


@pytest.mark.parametrize("shares", ["seeded", "full"])
@pytest.mark.parametrize("parties", [2, 3, 5])
def test_cost_prices_the_real_payloads_and_the_parties_requests_exactly(tmp_path, parties, shares):
    """cost.py against what ``protect`` produces and what each party's request really carries, for
    owners and rounds that move the full share around."""
    cfg = CryptenConfig(parties=parties, shares=shares)
    _, public = _parties(parties)
    values = 500

    def payloads(owners, server_round):
        out = {}
        for o in owners:
            backend = CryptenBackend(cfg, values, party_keys=public, keys=OwnerKeys(o, str(tmp_path / o)))
            out[o] = backend.protect(np.full(values, 0.01), 3.0, RoundContext(server_round, "0" * 64, o))
            assert out[o].nbytes == cost.update_bytes(cfg, values, o, server_round)
            pair = backend.protect(np.array([2.5]), 10.0, RoundContext(server_round, "0" * 64, o).for_eval_pair())
            assert pair.nbytes == cost.pair_bytes(cfg, o, "", "0" * 64, server_round)
        return out

    def received(sent):  # each party: its sealed share or seed of every owner, and every owner's whole bundle
        got = [sum(len(sent[o].blobs[f"share.{p}"]) + len(sent[o].blobs[BUNDLE]) for o in sent)
               for p in range(parties)]
        for p in range(parties):
            framed = encode_request({"clients": list(sent)}, [sent[o].blobs[f"share.{p}"] for o in sent],
                                    [sent[o].blobs[BUNDLE] for o in sent])
            assert got[p] < len(framed) < got[p] + 64 * (2 * len(sent) + 1)  # framing and meta only
        return got

    # K divides the cohort: every party receives exactly what the planner prices
    assert set(received(payloads([f"client_{i}" for i in range(2 * parties)], 1))) == \
        {cost.party_in_bytes(cfg, values, 2 * parties, dp_on=True)}
    # one owner more: the full shares rotate, so a party gets floor or ceil(owners / K) of them
    uneven = received(payloads([f"client_{i}" for i in range(parties + 1)], 7))
    assert len(set(uneven)) == (1 if shares == "full" else 2)
    assert sum(uneven) // parties == cost.party_in_bytes(cfg, values, parties + 1, dp_on=True)


def test_the_coordinator_accepts_seeds_beside_one_full_share_and_nothing_shorter(tmp_path):
    from fedveil.core.payload import Protected

    _, public = _parties(3)
    cfg, values = CryptenConfig(parties=3), 500
    owner = CryptenBackend(cfg, values, party_keys=public, keys=OwnerKeys("client_0", str(tmp_path)))
    payload = owner.protect(np.full(values, 0.01), 3.0, RoundContext(1, "L", "client_0"))
    server = CryptenBackend(cfg, values)
    server.validate(payload)
    full = f"share.{full_party('client_0', 1, 3)}"
    seed = next(k for k in payload.blobs if k.startswith("share.") and k != full)
    with pytest.raises(PayloadError, match="no share is long enough for 500 values"):
        server.validate(Protected(blobs={**payload.blobs, full: payload.blobs[seed]}))
    with pytest.raises(PayloadError, match="lacks the share for party"):
        server.validate(Protected(blobs={k: v for k, v in payload.blobs.items() if k != seed}))
