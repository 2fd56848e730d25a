"""A poisoning owner under ``tenseal``: owners check every update of a round before adding it.

Owners share the secret key, so one owner can encrypt anything. Before, only the decrypted *sum*
was range-checked: one owner could use every other owner's headroom (2.9x its cap passed with
three owners), wrap a digit (4x passed, wrapped), send an unbounded CKKS weight slot, or skip
``train.update_clip_norm``. Each owner now decrypts every signed update of a pending round and
refuses the round (``Refusal("bad-update", owner=...)``) if one is beyond an owner's bounds.
"""

import numpy as np
import pytest

from fedveil.core.errors import Refusal
from fedveil.core.io import pack
from fedveil.core.payload import Protected, RoundContext
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.tenseal import bfv
from fedveil.privacy.secagg.tenseal.backend import SIGNATURE, TensealOwner, TensealServer, update_statement
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, EncryptedGlobal
from fedveil.privacy.secagg.tenseal.config import TensealConfig

pytestmark = pytest.mark.adversary
CFG = TensealConfig(max_owners=3, max_weight=2.0, value_bound=6.0, norm_bound=8.0, global_bound=10.0)
CKKS = TensealConfig(scheme="ckks", max_weight=2.0, value_bound=6.0, norm_bound=8.0)
SIZE = 41  # odd: the last slot's padding digit is checked too
RUN = "/runs/a#00000001"
OWNERS = ("client_0", "client_1", "client_2")
ZEROS = np.zeros(SIZE, np.float32)


@pytest.fixture()
def keyed(tmp_path, tenseal_keyed):
    return lambda cfg: owner_sides(*tenseal_keyed(tmp_path, cfg, RUN, OWNERS), cfg)


def owner_sides(keys, made, cfg):
    return keys, {o: backend_spec("tenseal").owner(cfg, SIZE, keys[o], {}, run=RUN) for o in OWNERS}, made


def signed(owner: TensealOwner, blob: bytes, server_round: int = 1) -> Protected:
    """What a malicious owner sends: any ciphertext it made with the shared secret context, signed as its update."""
    tags = owner._tag(blob)
    tags[SIGNATURE] = owner.keys.sign(update_statement(RUN, owner.context_id, server_round, owner.keys.owner_id, blob))
    return Protected(blobs=tags)


def opened_round(owners, made, cfg, payloads):
    """Every owner's view: the server (honest, it cannot tell) keeps the signed updates; each owner opens them."""
    server = TensealServer(cfg, SIZE, public=made.public, run=RUN,
                           signers={o: b.keys.member().verify_key for o, b in owners.items()})
    combined = server.combine(payloads, RoundContext(1, "L"))
    assert combined.excluded == {}  # the server cannot see the range: every update is summed
    return EncryptedGlobal(None, [combined.payload.blobs[ROUND_UPDATES]]).arrays()


def honest(owners, delta, weight=1.0):
    return {o: b.protect(np.full(SIZE, delta), weight, RoundContext(1, "L", o)) for o, b in owners.items()}


def bfv_update(owner: TensealOwner, digits: np.ndarray, weight: float) -> bytes:
    import tenseal as ts

    slots = bfv.pack_slots(digits.astype(np.int64), bfv.radix(CFG.poly_modulus_degree, CFG.plain_modulus_bits))
    return pack([bfv.header(b"u", CFG.step), ts.bfv_vector(owner._secret, slots.tolist()).serialize(),
                 bfv.seal_weight(owner._weight_key, weight)])


def refused_naming(owner, arrays, who):
    with pytest.raises(Refusal, match=f"owner {who}'s update") as exc:
        owner.open_global(arrays, ZEROS, 1)
    assert (exc.value.code, exc.value.public) == ("bad-update", {"owner": who})


@pytest.mark.parametrize("factor", [2.9, 4.0])
def test_an_owner_over_its_bfv_cap_is_refused_by_every_owner(keyed, factor):
    # Before: 2.9x the per-owner cap used the other owners' headroom and was accepted (the sum of three
    # stayed within 3x); 4x wrapped a digit, decrypted to garbage, and was accepted as well.
    _, owners, made = keyed(CFG)
    payloads = honest(owners, 0.01)
    mal = owners["client_2"]
    payloads["client_2"] = signed(mal, bfv_update(mal, np.full(SIZE, int(factor * CFG.levels)), 1.0))
    arrays = opened_round(owners, made, CFG, payloads)
    for o in ("client_0", "client_1"):  # every honest owner
        refused_naming(owners[o], arrays, "client_2")


def test_a_padding_digit_or_a_weight_over_max_weight_is_refused(keyed):
    _, owners, made = keyed(CFG)
    mal = owners["client_1"]
    padded = np.zeros(SIZE + 1, np.int64)
    padded[-1] = 3 * CFG.levels  # the dropped half of the last slot: it would carry into the sum
    for blob in (bfv_update(mal, padded, 1.0), bfv_update(mal, np.zeros(SIZE), 1e6)):
        payloads = {**honest(owners, 0.01), "client_1": signed(mal, blob)}
        refused_naming(owners["client_0"], opened_round(owners, made, CFG, payloads), "client_1")


def test_an_update_over_its_norm_bound_is_refused_and_honest_ones_at_the_bounds_open(keyed):
    _, owners, made = keyed(CFG)
    at_bounds = honest(owners, 6.0 / np.sqrt(SIZE) * 8.0 / 6.0, weight=2.0)  # L2 norm 8 = norm_bound, weight 2
    np.testing.assert_allclose(owners["client_0"].open_global(opened_round(owners, made, CFG, at_bounds), ZEROS, 1),
                               8.0 / np.sqrt(SIZE), atol=1e-4)
    # an owner that skipped train.update_clip_norm: every value within value_bound, the norm 6 x sqrt(41) = 38
    skipped = {**honest(owners, 0.01),
               "client_0": owners["client_0"].protect(np.full(SIZE, 6.0), 1.0, RoundContext(1, "L", "client_0"))}
    refused_naming(owners["client_2"], opened_round(owners, made, CFG, skipped), "client_0")


@pytest.mark.parametrize("slot", ["weight", "value"])
def test_a_ckks_update_with_an_unbounded_weight_slot_or_value_is_refused(keyed, slot):
    # Before: CKKS left the weight slot unbounded: one owner's weight 1e6 made the mean its own update.
    _, owners, made = keyed(CKKS)
    mal = owners["client_2"]
    values = np.full(SIZE + 1, 0.01)
    values[-1] = 1e6 if slot == "weight" else 1.0
    values[0] = 0.01 if slot == "weight" else 7.0  # over weight x value_bound = 6
    payloads = {**honest(owners, 0.01), "client_2": signed(mal, mal._encrypt(values))}
    for o in ("client_0", "client_1"):
        refused_naming(owners[o], opened_round(owners, made, CKKS, payloads), "client_2")
    fine = owners["client_0"].open_global(opened_round(owners, made, CKKS, honest(owners, 0.5, 2.0)), ZEROS, 1)
    np.testing.assert_allclose(fine, 0.5, atol=1e-4)


def test_dp_owner_level_a_round_of_fewer_than_t_signed_updates_is_refused_before_decrypting(keyed, monkeypatch):
    # dp=owner_level under tenseal: each update carries one noise share, and only t of them carry the full
    # noise. A coordinator that keeps fewer than t signed updates in a round (here 2 of 3, t = 3) would
    # show the owners (who hold the key) a sum with less noise: every owner counts, before decrypting.
    _, owners, made = keyed(CFG)
    payloads = honest(owners, 0.01)
    kept = {o: payloads[o] for o in ("client_0", "client_1")}
    arrays = opened_round(owners, made, CFG, kept)
    np.testing.assert_allclose(owners["client_0"].open_global(arrays, ZEROS, 1), 0.01, atol=1e-4)  # no floor: opens
    decrypted = []
    monkeypatch.setattr(TensealOwner, "_vectors", lambda self, p, ctx: decrypted.append(ctx) or [])
    for o in ("client_0", "client_1"):
        owners[o].min_contributions = 3
        with pytest.raises(Refusal, match="sums 2 signed contribution.*fewer than this owner's t=3") as exc:
            owners[o].open_global(arrays, ZEROS, 1)
        assert (exc.value.code, exc.value.public) == ("bad-global", {"check": "contributions"})
    assert decrypted == []  # nothing loaded, let alone decrypted
    monkeypatch.undo()
    full = opened_round(owners, made, CFG, payloads)  # all three: the floor is met
    np.testing.assert_allclose(owners["client_0"].open_global(full, ZEROS, 1), 0.01, atol=1e-4)
