"""Owner-side secret sharing for the crypten backend: exact reconstruction, uniform single shares,
refusal of misrouted, replayed or cut shares."""

import math

import numpy as np
import pytest
from nacl.public import PrivateKey
from scipy.stats import chisquare

from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg.crypten import compat as crypten_compat
from fedveil.privacy.secagg.crypten.shares import (
    ShareHeader, decode_fixed, encode_fixed, open_share, reconstruct, seal_share, split,
)


def test_shares_reveal_the_update_within_one_ulp_per_owner():
    rng = np.random.default_rng(0)
    updates = [rng.normal(scale=0.3, size=1000) for _ in range(3)]
    weights = [216.0, 54.0, 1000.0]
    per_party = [split(encode_fixed(w * u), 3) for u, w in zip(updates, weights)]
    # each party sums the shares it holds; the parties' sums together reveal the weighted sum
    party_sums = [reconstruct([shares[p] for shares in per_party]) for p in range(3)]
    revealed = decode_fixed(reconstruct(party_sums))
    expected = sum(w * u for u, w in zip(updates, weights))
    assert np.abs(revealed - expected).max() <= 3 * 2**-16 + 1e-9
    assert decode_fixed(encode_fixed(np.array([-1.49999])))[0] == pytest.approx(-1.49999, abs=2**-17)


def test_fixed_point_matches_patched_crypten_encoder():
    import torch

    crypten_compat.import_crypten()
    from crypten.encoder import FixedPointEncoder

    x = np.array([-1.49999, -3.00001, 0.25, 7.123456, -1e-6])
    ours = encode_fixed(x)
    assert np.array_equal(ours, FixedPointEncoder().encode(torch.tensor(x)).numpy())
    assert np.allclose(decode_fixed(ours), FixedPointEncoder().decode(torch.tensor(ours)).numpy(), atol=1e-6)


def test_a_single_share_is_uniform_whatever_the_update():
    # the top byte of a party's share should be uniform over 256 values for any fixed update
    for update in (np.zeros(20000), np.full(20000, 3.0)):
        share = split(encode_fixed(update), 3)[1]
        top = (share.view(np.uint64) >> np.uint64(56)).astype(np.int64)
        counts = np.bincount(top, minlength=256)
        assert chisquare(counts).pvalue > 1e-7  # 4 tests of fresh randomness: 4e-7 by chance
        low = (share.view(np.uint64) & np.uint64(0xFF)).astype(np.int64)
        assert chisquare(np.bincount(low, minlength=256)).pvalue > 1e-7


def test_sealed_shares_open_only_for_their_party_round_and_length():
    parties = [PrivateKey.generate() for _ in range(3)]
    shares = split(encode_fixed(np.arange(10) / 7), 3)
    def head(p, **kw):
        return ShareHeader(**{"round": 2, "client": "client_0", "party": p, "layout_digest": "abc", "length": 10, **kw})

    sealed = [seal_share(s, head(p), bytes(parties[p].public_key), count=12) for p, s in enumerate(shares)]
    assert open_share(sealed[2], bytes(parties[2]), head(2))[0] == 12
    opened = [open_share(sealed[p], bytes(parties[p]), head(p))[1] for p in range(3)]
    assert np.allclose(decode_fixed(reconstruct(opened)), np.arange(10) / 7, atol=2**-16)
    with pytest.raises(PayloadError, match="does not open with party 1"):
        open_share(sealed[0], bytes(parties[1]), head(1))
    with pytest.raises(PayloadError, match="does not match"):
        open_share(sealed[0], bytes(parties[0]), head(0, round=3))  # replayed into another round
    wrong_length = seal_share(shares[0][:9], head(0, length=10), bytes(parties[0].public_key))
    with pytest.raises(PayloadError, match="holds 9 values"):
        open_share(wrong_length, bytes(parties[0]), head(0))
    with pytest.raises(PayloadError):
        open_share(sealed[0][:-5], bytes(parties[0]), head(0))  # cut short


@pytest.mark.slow
def test_mpc_norm_check_drops_the_oversized_update_and_reveals_the_others_aggregate():
    from fedveil.privacy.secagg.crypten.mpc import run_local_parties

    rng = np.random.default_rng(1)
    updates = [rng.normal(scale=0.05, size=500) for _ in range(3)]
    updates[1] = updates[1] * 1000  # far over the bound
    counts = [216, 54, 100]
    shares = [split(encode_fixed(u), 3) for u in updates]
    results = run_local_parties(shares, counts, bound=5.0)
    assert len(results) == 3
    for accepted, weighted_sum, total in results:  # every party agrees
        assert accepted == [True, False, True] and total == 316
        expected = (216 * updates[0] + 100 * updates[2]) / 316
        assert np.abs(weighted_sum / total - expected).max() < 1e-4


@pytest.mark.slow
def test_mpc_norm_check_scales_a_bound_past_the_unscaled_limit_and_keeps_it_exact_to_a_unit():
    """Owner-level DP's noised integers: a bound of 2^20 integer units (the unscaled check stops at ~2^14.5)
    is checked on x 2^-k; an update within it passes, one a few units over fails, as does one coordinate over."""
    from fedveil.privacy.secagg.crypten.mpc import run_local_parties
    from fedveil.privacy.secagg.crypten.shares import norm_scale_bits, scaled_norm_limit

    dim, bound = 64, 2.0**20
    k = norm_scale_bits(bound, dim)
    assert norm_scale_bits(2.0**14, dim) == 0 and k == 6  # per value 2^14: (2^30)^2 < 2^61
    over_by = math.sqrt(scaled_norm_limit(bound, dim, k)) * 2.0**k - bound  # what the slack lets through
    assert 0 < over_by < 1.0  # integer units
    rng = np.random.default_rng(7)
    direction = rng.normal(size=dim)
    direction /= np.linalg.norm(direction)

    def at(norm):  # integers of L2 norm just under `norm`
        return np.floor(np.abs(direction) * norm) * np.sign(direction)

    spike = np.zeros(dim)
    spike[3] = bound + 1  # one coordinate over (its norm too)
    updates = [at(bound), at(bound + 8), spike, at(bound * 0.5)]
    assert np.linalg.norm(updates[0]) <= bound < np.linalg.norm(updates[1]) - 4
    shares = [split(encode_fixed(u), 3) for u in updates]
    for accepted, weighted_sum, total in run_local_parties(shares, [1, 1, 1, 1], bound=bound):
        assert accepted == [True, False, False, True] and total == 2
        assert np.array_equal(np.rint(weighted_sum), updates[0] + updates[3])  # integers: exact


@pytest.mark.slow
def test_the_weighted_sum_of_large_integers_is_exact():
    """Owner-level's noised integers (~2^21 units, 2^37 in the ring) summed with integer weights: exact. CrypTen's
    public multiply-then-truncate got several of 2,048 such values wrong by 2^32 units (2^48 ring units)."""
    from fedveil.privacy.secagg.crypten.mpc import run_local_parties

    rng = np.random.default_rng(3)
    updates = [np.rint(rng.normal(scale=9e5, size=2048)) for _ in range(4)]
    shares = [split(encode_fixed(u), 3) for u in updates]
    for accepted, weighted_sum, total in run_local_parties(shares, [1, 1, 2, 1], bound=None):
        assert accepted == [True] * 4 and total == 5
        assert np.array_equal(weighted_sum, updates[0] + updates[1] + 2 * updates[2] + updates[3])


def test_a_share_bundle_binds_round_layout_owner_and_each_parties_share(tmp_path):
    from fedveil.privacy.secagg.crypten.shares import NotRostered, ShareBundle, check_bundle, sign_bundle
    from fedveil.privacy.secagg.identity import OwnerKeys

    me, other = OwnerKeys("client_0", str(tmp_path / "a")), OwnerKeys("client_1", str(tmp_path / "b"))
    roster = {"client_0": me.member().verify_key, "client_1": other.member().verify_key}
    sealed = [b"share-0", b"share-1", b"share-2"]
    bundle = sign_bundle(sealed, "run#1", 4, "L", "client_0", me.sign, min_owners=3)
    for p, s in enumerate(sealed):  # each party checks its own share, without the others'
        check_bundle(bundle, s, p, "client_0", 4, "L", roster)
    with pytest.raises(NotRostered):
        check_bundle(bundle, sealed[0], 0, "client_0", 4, "L", {"client_1": roster["client_1"]})
    for args in ((sealed[1], 0, "client_0", 4, "L"),  # another party's share
                 (sealed[0], 0, "client_1", 4, "L"),  # presented as another owner
                 (sealed[0], 0, "client_0", 5, "L"),  # another round
                 (sealed[0], 0, "client_0", 4, "M")):  # another layout
        with pytest.raises(PayloadError):
            check_bundle(bundle, *args, roster)
    assert check_bundle(bundle, sealed[0], 0, "client_0", 4, "L", roster).min_owners == 3
    for change in ({"run": "run#2"}, {"min_owners": 2}):  # the signature covers the run and the owner's floor too
        forged = ShareBundle(**{**ShareBundle.decode(bundle).__dict__, **change}).encode()
        with pytest.raises(PayloadError, match="not signed"):
            check_bundle(forged, sealed[0], 0, "client_0", 4, "L", roster)
    for floor in ('"3"', "-1", "true", str(2**31), "3.0"):  # a floor that is no count is no bundle
        with pytest.raises(PayloadError, match="malformed"):
            check_bundle(bundle.replace(b'"min_owners": 3', f'"min_owners": {floor}'.encode()), sealed[0], 0,
                         "client_0", 4, "L", roster)
    with pytest.raises(PayloadError, match="malformed"):
        check_bundle(b"{", sealed[0], 0, "client_0", 4, "L", roster)
