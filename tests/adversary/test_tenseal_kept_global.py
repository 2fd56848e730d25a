"""An owner keeps the global it opened (``tenseal/kept.py``), so the coordinator may leave the signed base out
(``EncryptedGlobal.arrays_for``). The owner reads its own copy, never the coordinator's word: a base-less message
whose pending rounds do not start right after the round it keeps is refused (``bad-global``,
``check=kept-global``), and the next message with the base works. Starting from the kept copy gives, bit for
bit, the global the signed base gives (BFV)."""

import shutil

import numpy as np
import pytest

from fedveil.core import wire
from fedveil.core.errors import Refusal
from fedveil.core.payload import Protected, RoundContext
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.tenseal import kept
from fedveil.privacy.secagg.tenseal.backend import TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import BASE, ROUND_UPDATES, EncryptedGlobal
from fedveil.privacy.secagg.tenseal.keys import run_dir

CFG = TensealConfig(max_owners=3, max_weight=2.0, value_bound=6.0, global_bound=10.0)
SIZE = 40
RUN = "/runs/kept#00000001"
OWNERS = ("client_0", "client_1", "client_2")
ZEROS = np.zeros(SIZE, np.float32)


@pytest.fixture()
def fed(tmp_path, tenseal_keyed):
    keys, made = tenseal_keyed(tmp_path, CFG, RUN, OWNERS)
    owners = {o: backend_spec("tenseal").owner(CFG, SIZE, keys[o], {}, run=RUN) for o in OWNERS}
    server = TensealServer(CFG, SIZE, public=made.public, run=RUN,
                           signers={o: k.member().verify_key for o, k in keys.items()})
    return owners, server, keys


def play_round(owners, server, state, server_round, rng):
    """Round ``server_round``: every owner's signed update (irregular values: the fixed point matters) joins the
    holder's pending rounds."""
    payloads = {o: b.protect(rng.normal(0, 0.05, SIZE), 1.0 + 0.5 * i, RoundContext(server_round, "L", o))
                for i, (o, b) in enumerate(owners.items())}
    combined = server.combine(payloads, RoundContext(server_round, "L"))
    assert not combined.excluded
    state.pending.append(combined.payload.blobs[ROUND_UPDATES])


def hand_back(owner, state, vector, after_round):
    blob, signature = owner.encrypt_global(vector, after_round)
    reply = Protected(blobs={wire.ENCRYPTED_GLOBAL: blob, wire.GLOBAL_SIGNATURE: signature})
    assert state.adopt({owner.keys.owner_id: reply}, owner.keys.owner_id, after_round) is None


def kept_file(owner):
    return run_dir(owner.keys.state_dir, RUN) / kept.KEPT_FILE


def test_an_owner_that_keeps_the_global_opens_the_same_vector_bit_for_bit_without_the_base(fed):
    """Four carried rounds: ``client_1`` always gets the whole holder (the signed base), ``client_2`` what
    ``arrays_for`` leaves it (no base after round 1); both open the same vector, bit for bit, every round."""
    owners, server, _ = fed
    state, rng = EncryptedGlobal(check=server.check_global), np.random.default_rng(3)
    for r in range(1, 5):  # round r's train opens the global after r - 1; client_0 re-encrypts it
        whole, lean = state.arrays(), state.arrays_for("client_2")
        lean = whole if lean is None else lean
        assert (BASE in lean) is False and (BASE in whole) is (r >= 3)
        if r >= 3:
            assert sum(a.nbytes for a in lean.values()) < sum(a.nbytes for a in whole.values()) - 4 * SIZE
        got = {o: owners[o].open_global(whole if o != "client_2" else lean, ZEROS, r - 1) for o in OWNERS}
        assert np.array_equal(got["client_1"], got["client_2"]) and np.array_equal(got["client_0"], got["client_2"])
        state.opened(r - 1, dict.fromkeys(OWNERS, True))
        if r >= 2:
            hand_back(owners["client_0"], state, got["client_0"], r - 1)
        play_round(owners, server, state, r, rng)
    assert kept.kept(run_dir(owners["client_2"].keys.state_dir, RUN), RUN, server.context_id, SIZE).round == 3


def test_a_base_less_message_without_the_kept_round_is_refused_and_the_next_with_the_base_works(fed, tmp_path):
    owners, server, keys = fed
    state, rng = EncryptedGlobal(check=server.check_global), np.random.default_rng(4)
    owner = owners["client_1"]
    play_round(owners, server, state, 1, rng)
    g1 = owner.open_global(state.arrays(), ZEROS, 1)
    hand_back(owners["client_0"], state, g1, 1)
    play_round(owners, server, state, 2, rng)
    state.opened(1, {"client_1": True})
    lean = state.arrays_for("client_1")
    assert BASE not in lean and len(lean) == 1  # round 2's updates alone
    stash = tmp_path / "stash"
    shutil.move(kept_file(owner), stash)  # missing
    with pytest.raises(Refusal, match="keeps no global of this run") as refused:
        owner.open_global(lean, ZEROS, 2)
    assert (refused.value.code, refused.value.public) == ("bad-global", {"check": "kept-global"})
    g2 = owner.open_global(state.arrays(), ZEROS, 2)  # with the base: as before, and it keeps round 2
    assert kept.kept(run_dir(owner.keys.state_dir, RUN), RUN, server.context_id, SIZE).round == 2
    state.opened(2, {"client_1": True})
    hand_back(owners["client_0"], state, g2, 2)
    play_round(owners, server, state, 3, rng)
    shutil.move(stash, kept_file(owner))  # stale: round 1's copy, asked to build round 3 on round 2
    with pytest.raises(Refusal, match="keeps the global after round 1") as refused:
        owner.open_global(state.arrays_for("client_1"), ZEROS, 3)
    assert refused.value.public == {"check": "kept-global"}
    # another run's (or context's) copy is not this run's: refused as missing
    other = backend_spec("tenseal").owner(CFG, SIZE, keys["client_1"], {}, run=RUN)
    other.run = "/runs/other#00000002"
    kept.keep(run_dir(owner.keys.state_dir, RUN), other.run, server.context_id, 2, g2)
    with pytest.raises(Refusal, match="keeps no global of this run"):
        owner.open_global(state.arrays_for("client_1"), ZEROS, 3)
    np.testing.assert_array_equal(owner.open_global(state.arrays(), ZEROS, 3),
                                  owners["client_2"].open_global(state.arrays(), ZEROS, 3))


def test_a_coordinator_that_omits_the_base_cannot_make_an_owner_open_another_chain(fed):
    """The owner keeps round 2. Without the base, a chain that re-applies round 2 over it, or skips round 3,
    is refused; one from round 1 over the starting adapter (every owner's own) is the honest global."""
    owners, server, _ = fed
    state, rng = EncryptedGlobal(), np.random.default_rng(5)
    owner = owners["client_2"]
    for r in (1, 2):
        play_round(owners, server, state, r, rng)
    honest2 = owner.open_global(EncryptedGlobal(None, state.pending[:2]).arrays(), ZEROS, 2)
    play_round(owners, server, state, 3, rng)
    play_round(owners, server, state, 4, rng)
    round2, round3, round4 = state.pending[1:]
    with pytest.raises(Refusal, match="building on round 1") as refused:  # round 2 twice
        owner.open_global(EncryptedGlobal(None, [round2, round3]).arrays(), ZEROS, 3)
    assert refused.value.public == {"check": "kept-global"}
    with pytest.raises(Refusal, match="building on round 3"):  # round 3 skipped
        owner.open_global(EncryptedGlobal(None, [round4]).arrays(), ZEROS, 4)
    with pytest.raises(Refusal, match="building on round 4"):  # nothing sent: only its own round 2 would do
        owner.open_global({}, ZEROS, 4)
    assert owner.open_global({}, ZEROS, 2) is not None  # its own round 2: nothing to fetch
    # round 3 over its kept round 2: rounds 1-3 over the starting adapter, within the fixed point of the
    # global's re-encryption (what it keeps: what the signed base would decrypt to)
    np.testing.assert_allclose(owner.open_global(EncryptedGlobal(None, [round3]).arrays(), ZEROS, 3),
                               owners["client_0"].open_global(EncryptedGlobal(None, state.pending[:3]).arrays(),
                                                              ZEROS, 3), atol=CFG.global_step, rtol=0)
    assert not np.array_equal(honest2, ZEROS)


def test_the_holder_omits_the_base_only_for_owners_whose_last_reply_opened_a_round_it_reaches(fed):
    owners, server, _ = fed
    state, rng = EncryptedGlobal(check=server.check_global), np.random.default_rng(6)
    play_round(owners, server, state, 1, rng)
    g1 = owners["client_0"].open_global(state.arrays(), ZEROS, 1)
    hand_back(owners["client_0"], state, g1, 1)
    play_round(owners, server, state, 2, rng)
    state.opened(1, {"client_0": True, "client_1": False})  # client_1 replied with an error: it gets the base
    assert BASE not in state.arrays_for("client_0") and state.arrays_for("client_1") is None
    assert state.arrays_for("client_2") is None  # never heard of
    state.opened(0, {"client_0": True})  # older than the base: the base again
    assert state.arrays_for("client_0") is None
    state.opened(2, {"client_0": True})
    assert state.arrays_for("client_0") == {}  # it holds exactly what the holder reaches
    resumed = state.restored(state.arrays())  # a restarted coordinator knows nothing: the base to all
    assert all(resumed.arrays_for(o) is None for o in OWNERS)
