"""Attacks on ``tenseal`` keys across a restart (``resume=true``) that must fail.

A restarted coordinator takes up the context every owner holds for the run instead of keying
again (``server/key_setup.py``). It relays every key set-up message and holds the checkpointed
ciphertexts, so it may try to re-key the run, replay an old context, or make owners use their key
for another run or federation. Each test says what the attack achieved before and checks that it
is refused, with the owners' held contexts untouched.
"""

import os
import shutil

import numpy as np
import pytest

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError, Protected, RoundContext
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.identity import OwnerKeys, Roster, pin_roster, write_roster
from fedveil.privacy.secagg.tenseal import keys as setup
from fedveil.privacy.secagg.tenseal.backend import TensealServer
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, EncryptedGlobal
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.server.key_setup import rejoin

pytestmark = pytest.mark.adversary
CFG = TensealConfig()
SIZE = 40
RUN, OTHER_RUN = "/runs/a#00000001", "/runs/b#00000002"
OWNERS = ("client_0", "client_1", "client_2")
SETUP = backend_spec("tenseal").key_setup
ZEROS = np.zeros(SIZE, np.float32)


def key_run(keys, run):
    made = setup.generate(CFG, keys["client_0"], run, {o: setup.announce(k) for o, k in keys.items()})
    for o, k in keys.items():
        setup.install(k, run, public=made.public, statement=made.statement, signature=made.signature,
                      sealed=made.sealed[o])
    return made


@pytest.fixture()
def fed(tmp_path):
    """Three owners with a pinned roster (key holder client_0), keyed honestly for RUN."""
    keys = {o: OwnerKeys(o, str(tmp_path / o)) for o in OWNERS}
    pin_roster({o: tmp_path / o for o in OWNERS}, "client_0")
    return keys, key_run(keys, RUN)


def held_files(keys, run=RUN):
    """Every owner's held context of ``run``, as bytes on disk."""
    folder = {o: setup.run_dir(k.state_dir, run) for o, k in keys.items()}
    return {o: [(f / name).read_bytes() for name in (setup.SECRET_FILE, setup.PUBLIC_FILE, setup.SETUP_FILE)]
            for o, f in folder.items()}


def owner_side(k, run=RUN):
    return backend_spec("tenseal").owner(CFG, SIZE, k, {}, run=run)


def server_side(keys, made, run=RUN):
    return TensealServer(
        CFG, SIZE, public=made.public, run=run, signers={o: k.member().verify_key for o, k in keys.items()}
    )


def play_round(keys, made, state, server_round, run=RUN):
    """One honest round: every owner's signed update kept, client_0 asked to re-encrypt the new global."""
    payloads = {o: owner_side(k, run).protect(np.full(SIZE, 0.1 * server_round), 1.0, RoundContext(server_round, "L",
                                                                                                   o))
                for o, k in keys.items()}
    combined = server_side(keys, made, run).combine(payloads, RoundContext(server_round, "L"))
    state.pending.append(combined.payload.blobs[ROUND_UPDATES])
    asked = owner_side(keys["client_0"], run)
    blob, signature = asked.encrypt_global(asked.open_global(state.arrays(), ZEROS, server_round), server_round)
    assert state.adopt({"client_0": Protected(blobs={wire.ENCRYPTED_GLOBAL: blob, wire.GLOBAL_SIGNATURE: signature})},
                       "client_0", server_round) is None


def test_a_restarted_coordinator_cannot_re_key_the_run_nor_replay_a_context(fed, tmp_path):
    # Before: a restart keyed the federation again (resume=true was refused for this reason), and
    # an owner kept one context at a time, so the coordinator could have any run re-keyed by keying
    # another one in between; the stored ciphertexts were orphaned either way.
    keys, made = fed
    before = held_files(keys)
    from fedveil.client.owner import run_key
    from fedveil.configs.schema import from_dict

    base = {"output_dir": "/runs/a", "model": {"path": "/m"}, "aggregation": {"name": "tenseal"}, "dp": {"name": "off"}}
    assert run_key(from_dict({**base, "resume": True})) == run_key(from_dict(base))  # a restart is the same run
    with pytest.raises(PayloadError, match="already keyed this run"):  # the key holder keys a run once
        setup.generate(CFG, keys["client_0"], RUN, {})
    key_run(keys, OTHER_RUN)  # keying another run in between does not free this one
    with pytest.raises(PayloadError, match="already keyed this run"):
        setup.generate(CFG, keys["client_0"], RUN, {})
    # a second context the key holder really signed for this run (a copy of its state that lost the
    # run's record, or an old backup): every owner refuses it
    twin_dir = tmp_path / "twin"
    shutil.copytree(keys["client_0"].state_dir, twin_dir)
    shutil.rmtree(setup.run_dir(twin_dir, RUN))
    second = setup.generate(CFG, OwnerKeys("client_0", str(twin_dir), keys["client_0"].roster_file), RUN, {})
    for o in OWNERS:
        with pytest.raises(PayloadError, match="re-keying mid-run is refused"):
            setup.install(keys[o], RUN, public=second.public, statement=second.statement, signature=second.signature,
                          sealed=second.sealed[o])
    # the genuine set-up replayed changes nothing (the same context: a no-op, nothing written)
    for o, k in keys.items():
        setup.install(
            k, RUN, public=made.public, statement=made.statement, signature=made.signature, sealed=made.sealed[o]
        )
    assert held_files(keys) == before
    for o, k in keys.items():  # one keying per run and owner, ever
        runs = [(e["event"], e["run"]) for e in setup.keyings(k.state_dir)]
        event = "generate" if o == "client_0" else "install"
        assert runs == [(event, RUN), (event, OTHER_RUN)]


def test_an_owner_uses_a_context_for_its_own_run_and_roster_only(fed, tmp_path):
    # Before: owners loaded whatever context was on disk and signed with the run it named, so a
    # coordinator could run a new session (another output_dir, another roster) under an old key.
    keys, _ = fed
    victim = keys["client_1"]
    with pytest.raises(UserError, match="holds no tenseal context for this run"):
        owner_side(victim, OTHER_RUN)
    # the operator re-pins another roster (another federation: one more owner): the old context is refused
    extra = OwnerKeys("client_9", str(tmp_path / "client_9"))
    old = victim.roster()
    write_roster(victim.roster_file, Roster(old.key_holder, {**old.owners, "client_9": extra.member()}))
    with pytest.raises(PayloadError, match="pinned roster changed"):
        owner_side(victim, RUN)
    # nor does it install a context the key holder keyed for the old roster
    fresh = setup.generate(CFG, keys["client_0"], OTHER_RUN, {})  # the key holder still pins the old roster
    with pytest.raises(PayloadError, match="another roster"):
        setup.install(victim, OTHER_RUN, public=fresh.public, statement=fresh.statement, signature=fresh.signature,
                      sealed=fresh.sealed["client_1"])
    write_roster(victim.roster_file, old)
    owner_side(victim, RUN)  # the pinned roster back: its context again
    secret = setup.run_dir(victim.state_dir, RUN) / setup.SECRET_FILE
    os.chmod(secret, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        owner_side(victim, RUN)


def test_a_resumed_run_opens_its_checkpoint_and_refuses_another_runs(fed):
    # Before: resume=true was refused with tenseal. Now a restarted coordinator restores the
    # checkpointed ciphertexts; owners open them with the context they kept and check every
    # signature as in any round, and a checkpoint of another run is refused on both sides.
    keys, made = fed
    state = EncryptedGlobal(check=server_side(keys, made).check_global)
    play_round(keys, made, state, 1)
    play_round(keys, made, state, 2)
    checkpoint = state.arrays()
    expected = owner_side(keys["client_1"]).open_global(checkpoint, ZEROS, 2)
    np.testing.assert_allclose(expected, 0.3, atol=1e-5)
    # the restart: the server takes up the context the owners hold, then restores the checkpoint
    held = {o: {k: bytes(v) for k, v in setup.rejoin(keys[o], RUN).items()} for o in OWNERS}
    keyed = rejoin(held, {n: o for n, o in enumerate(OWNERS)}, {o: k.member().verify_key for o, k in keys.items()},
                   "client_0", setup=SETUP)
    assert keyed.rejoined and keyed.public == made.public and keyed.run == RUN
    restarted = server_side(keys, made)
    resumed = EncryptedGlobal(check=restarted.check_global).restored(checkpoint)
    for o in OWNERS:  # fresh owner sides from disk, as after a restart
        np.testing.assert_allclose(owner_side(keys[o]).open_global(resumed.arrays(), ZEROS, 2), expected, atol=1e-6)
    # another run's checkpoint (same owners, keyed for OTHER_RUN): the server will not resume from
    # it, and owners refuse it in this run
    other_made = key_run(keys, OTHER_RUN)
    other = EncryptedGlobal(check=server_side(keys, other_made, OTHER_RUN).check_global)
    play_round(keys, other_made, other, 1, OTHER_RUN)
    play_round(keys, other_made, other, 2, OTHER_RUN)
    with pytest.raises(UserError, match="does not belong to the context the owners hold"):
        EncryptedGlobal(check=restarted.check_global).restored(other.arrays())
    with pytest.raises(PayloadError, match="not signed by"):
        owner_side(keys["client_2"]).open_global(other.arrays(), ZEROS, 2)


def test_a_resume_with_owners_holding_different_or_no_contexts_stops_in_one_line(fed):
    # The restarted coordinator (honest) must not key again when owners hold a context, and cannot
    # resume when they do not all hold the same one: it stops instead of orphaning the checkpoint.
    keys, made = fed
    signers = {o: k.member().verify_key for o, k in keys.items()}
    nodes = {n: o for n, o in enumerate(OWNERS)}
    held = {o: {k: bytes(v) for k, v in setup.rejoin(keys[o], RUN).items()} for o in OWNERS}
    for broken in ({**held, "client_2": {}}, {**held, "client_2": {"context": b"f" * 64}}):
        with pytest.raises(UserError, match="do not all hold the same tenseal context"):
            rejoin(broken, nodes, signers, "client_0", setup=SETUP)
    forged = {**held, "client_0": {**held["client_0"], "signature": b"\x01" * 64}}
    with pytest.raises(UserError, match="does not check out"):
        rejoin(forged, nodes, signers, "client_0", setup=SETUP)
    # another owner passing itself off as the key holder: its own signature is not the key holder's
    impostor = {
        **held,
        "client_1": {**held["client_0"], "signature": keys["client_1"].sign(held["client_0"]["statement"])},
    }
    with pytest.raises(UserError, match="does not check out"):
        rejoin(impostor, nodes, signers, "client_1", setup=SETUP)
    with pytest.raises(UserError, match="sent no public tenseal context"):
        rejoin(held, nodes, signers, "client_2", setup=SETUP)
    assert rejoin(held, nodes, signers, "client_0", setup=SETUP).public == made.public


def test_an_update_dropped_in_one_run_is_not_hidden_by_another_run(fed):
    # Before (once owners could hold contexts of several runs): an owner remembered only its very
    # last update, of whichever run, so a coordinator that had it train a round of another run in
    # between could then drop its update from this run's round unnoticed.
    from fedveil.privacy.secagg.tenseal.global_codec import RoundUpdates

    keys, made = fed
    key_run(keys, OTHER_RUN)
    payloads = {o: owner_side(k).protect(np.full(SIZE, 1.0), 1.0, RoundContext(1, "L", o)) for o, k in keys.items()}
    owner_side(keys["client_1"], OTHER_RUN).protect(np.full(SIZE, 2.0), 1.0, RoundContext(1, "L", "client_1"))
    dropped = RoundUpdates(1, {o: (p.blobs["ciphertext"], p.blobs["signature"]) for o, p in payloads.items()
                               if o != "client_1"}).encode()
    with pytest.raises(PayloadError, match="leaves out this owner's own update"):
        owner_side(keys["client_1"]).open_global(EncryptedGlobal(None, [dropped]).arrays(), ZEROS, 1)
