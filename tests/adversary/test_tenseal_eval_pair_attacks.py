"""A malicious coordinator against tenseal's held-out pairs (``privacy/secagg/tenseal/eval_pair.py``).

The server keeps the owners' signed, boxed pairs (loss x tokens, tokens) and asks one owner to reveal
their token-weighted mean. Without the owner's checks it could have that owner reveal one owner's
loss (a "mean" of one pair), a pair replayed from another round, or a mean over a subset chosen to
difference two answers. Each is refused with a code; the honest mean is exact.
"""

import numpy as np
import pytest

from fedveil.core.errors import Refusal
from fedveil.core.payload import PayloadError, Protected, RoundContext
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.tenseal import eval_pair
from fedveil.privacy.secagg.tenseal.backend import TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import RoundUpdates

pytestmark = pytest.mark.adversary
CFG = TensealConfig(max_owners=3, max_weight=2.0, value_bound=6.0, global_bound=10.0)
SIZE = 40
RUN = "/runs/eval#00000001"
OWNERS = ("client_0", "client_1", "client_2")
KNOWN = {"client_0": (2.5, 1200), "client_1": (3.75, 40), "client_2": (1.125, 333)}  # loss, tokens


@pytest.fixture()
def fed(tmp_path, tenseal_keyed):
    keys, made = tenseal_keyed(tmp_path, CFG, RUN, OWNERS)
    server = TensealServer(CFG, SIZE, public=made.public, run=RUN,
                           signers={o: k.member().verify_key for o, k in keys.items()})
    return keys, server


def owner(keys, o):
    return backend_spec("tenseal").owner(CFG, SIZE, keys[o], {}, run=RUN)


def ctx(server_round, o=""):
    return RoundContext(server_round, "L", o).for_eval_pair()


def pairs_of(keys, server_round, known=KNOWN):
    """Each owner's protected round-``server_round`` pair, as its evaluate reply carries it."""
    return {o: owner(keys, o).protect(np.array([loss]), float(t), ctx(server_round, o)) for o, (loss,
                                                                                                t) in known.items()}


def reveal(keys, who, combined, server_round):
    return owner(keys, who).reveal_eval_mean(combined, ctx(server_round, who))


def test_the_revealing_owner_returns_the_token_weighted_mean_only(fed):
    keys, server = fed
    for server_round in (0, 1):
        combined = server.combine(pairs_of(keys, server_round), ctx(server_round))
        assert combined.excluded == {}
        mean = reveal(keys, "client_1", combined.payload, server_round)
        assert mean == pytest.approx((2.5 * 1200 + 3.75 * 40 + 1.125 * 333) / 1573, rel=1e-12)
    # what the server holds opens to nothing without the secret context: no loss, no count in it
    blob = combined.payload.blobs[eval_pair.PAIRS]
    for value in (2.5 * 1200, 1200.0, 1573.0):
        assert eval_pair.PAIR_VALUES.pack(value, 1200.0)[:8] not in blob


def test_one_owners_pair_alone_is_refused(fed):
    # Without the floor: the server sends client_1 only client_1's own pair, or its own and client_0's; either
    # way the "mean" it gets back is (in the second case, with client_1's own answer known to the server
    # through an accomplice) one owner's held-out loss.
    keys, server = fed
    pairs = pairs_of(keys, 3)
    alone = server.combine({"client_1": pairs["client_1"]}, ctx(3)).payload
    with pytest.raises(Refusal) as err:
        reveal(keys, "client_1", alone, 3)
    assert (err.value.code, err.value.public) == ("limit", {"limit": "eval_min_owners"})


def test_a_set_without_the_revealing_owners_own_pair_is_refused(fed):
    keys, server = fed
    pairs = pairs_of(keys, 4)
    others = server.combine({o: pairs[o] for o in ("client_0", "client_2")}, ctx(4)).payload
    with pytest.raises(Refusal) as err:
        reveal(keys, "client_1", others, 4)
    assert (err.value.code, err.value.public) == ("bad-update", {"owner": "client_1"})


def test_a_pair_replayed_from_another_round_is_refused(fed):
    keys, server = fed
    old = pairs_of(keys, 5)
    new = pairs_of(keys, 6)
    # client_0's round-5 pair beside this round's others, presented as round 6: its signature binds round 5
    mixed = RoundUpdates(6, {o: ((old if o == "client_0" else new)[o].blobs[eval_pair.PAIR],
                                 (old if o == "client_0" else new)[o].blobs[eval_pair.SIGNATURE]) for o in OWNERS})
    with pytest.raises(Refusal) as err:
        reveal(keys, "client_1", Protected(blobs={eval_pair.PAIRS: mixed.encode()}), 6)
    assert (err.value.code, err.value.public) == ("bad-update", {"owner": "client_0"})
    # the server's own filter leaves such a pair out too
    assert set(server.combine({**new, "client_0": old["client_0"]}, ctx(6)).excluded) == {"client_0"}
    # the whole round-5 set presented as round 6
    stale = server.combine(old, ctx(5)).payload
    with pytest.raises(Refusal) as err:
        reveal(keys, "client_1", stale, 6)
    assert err.value.code == "replay"


def test_each_owner_reveals_one_mean_per_round(fed):
    # Without the once-per-round rule: ask client_1 for {0, 1, 2}, then for {1, 2}: the two means and an
    # accomplice's knowledge of tokens would give client_0's loss.
    keys, server = fed
    pairs = pairs_of(keys, 7)
    reveal(keys, "client_1", server.combine(pairs, ctx(7)).payload, 7)
    subset = server.combine({o: pairs[o] for o in ("client_1", "client_2")}, ctx(7)).payload
    with pytest.raises(Refusal) as err:
        reveal(keys, "client_1", subset, 7)
    assert err.value.code == "replay"


def test_a_pair_never_passes_for_an_update_nor_an_update_for_a_pair(fed):
    keys, server = fed
    server_round = 8
    pair = pairs_of(keys, server_round)["client_0"]
    update = owner(keys, "client_0").protect(np.full(SIZE, 0.5), 1.0, RoundContext(server_round, "L", "client_0"))
    # a pair as an update: not a ciphertext the server (or any owner) adds
    with pytest.raises(PayloadError):
        server.validate(Protected(blobs={**update.blobs, "ciphertext": pair.blobs[eval_pair.PAIR]}))
    assert set(server.combine({"client_0": pair}, RoundContext(server_round, "L")).excluded) == {"client_0"}
    # an update as a pair: refused by the server's filter (not one box) and by the revealing owner (signature)
    assert set(server.combine({"client_0": update}, ctx(server_round)).excluded) == {"client_0"}
    forged = Protected(blobs={eval_pair.PAIR: update.blobs["ciphertext"][:eval_pair.PAIR_BYTES - 64],
                              eval_pair.SIGNATURE: update.blobs["signature"]})
    pairs = {**pairs_of(keys, server_round), "client_0": forged}
    blob = RoundUpdates(server_round, {o: (p.blobs[eval_pair.PAIR], p.blobs[eval_pair.SIGNATURE]) for o,
                                       p in pairs.items()})
    with pytest.raises(Refusal) as err:
        reveal(keys, "client_1", Protected(blobs={eval_pair.PAIRS: blob.encode()}), server_round)
    assert (err.value.code, err.value.public) == ("bad-update", {"owner": "client_0"})
