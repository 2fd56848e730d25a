"""Attacks by a malicious coordinator (or one odd owner) on the ``tenseal`` backend that must fail.

The coordinator relays every key set-up message and holds the encrypted global, so it can drop,
replace, add or replay anything it relays. Each test plays one attack on the Flower-free owner and
server helpers (``privacy/secagg/tenseal``: the backend, ``global_codec.EncryptedGlobal``), says in a comment what the
attack achieved before the fix, and checks that it is now refused.
"""

import hashlib
import json
import os
import stat
import struct

import numpy as np
import pytest

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.io import pack, unpack
from fedveil.core.payload import PayloadError, Protected, RoundContext
from fedveil.privacy.secagg import backend_spec, sealing
from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster
from fedveil.privacy.secagg.tenseal import bfv
from fedveil.privacy.secagg.tenseal import keys as setup
from fedveil.privacy.secagg.tenseal.backend import SIGNATURE, TensealOwner, TensealServer, global_statement
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, EncryptedGlobal, RoundUpdates, SignedBase
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.context import context_id, make_context, public_bytes, secret_bytes

pytestmark = pytest.mark.adversary
# BFV (the default) for three owners, weights up to 2 and values within +-6 (the deltas played here);
# CKKS where an attack is its own (a ciphertext at another scale)
CFG = TensealConfig(max_owners=3, max_weight=2.0, value_bound=6.0, global_bound=10.0)
CKKS = TensealConfig(scheme="ckks", max_weight=2.0, value_bound=6.0)
SIZE = 40
RUN = "/runs/a#00000001"
OWNERS = ("client_0", "client_1", "client_2")


def keyed(tmp_path, cfg):
    """Three owners with a pinned roster (key holder client_0), keyed honestly for RUN."""
    keys = {o: OwnerKeys(o, str(tmp_path / o)) for o in OWNERS}
    pin_roster({o: tmp_path / o for o in OWNERS}, "client_0")
    made = setup.generate(cfg, keys["client_0"], RUN, {o: setup.announce(k) for o, k in keys.items()})
    for o, k in keys.items():
        install(k, made, made.sealed[o])
    return keys, made


@pytest.fixture()
def fed(tmp_path):
    return keyed(tmp_path, CFG)


@pytest.fixture()
def fed_ckks(tmp_path):
    return keyed(tmp_path, CKKS)


def install(k, made, box, run=RUN, **over):
    fields = dict(public=made.public, statement=made.statement, signature=made.signature, sealed=box)
    setup.install(k, run, **{**fields, **over})


def owner_side(keys, o, cfg=CFG):
    return backend_spec("tenseal").owner(cfg, SIZE, keys[o], {}, run=RUN)


def server_side(keys, made):
    """The server's side as the federation builds it: the public context, the run and the announced keys."""
    return TensealServer(
        CFG, SIZE, public=made.public, run=RUN, signers={o: k.member().verify_key for o, k in keys.items()}
    )


def signed_updates(keys, server_round, deltas):
    """Each owner's signed round-``server_round`` update of ``deltas[owner]`` (weight 1)."""
    return {o: owner_side(keys, o).protect(np.asarray(d, np.float64), 1.0, RoundContext(server_round, "L", o))
            for o, d in deltas.items()}


def round_updates(keys, made, server_round, deltas):
    """What an honest server keeps of round ``server_round``: every owner's signed update
    (global_codec.RoundUpdates)."""
    combined = server_side(keys, made).combine(signed_updates(keys, server_round, deltas), RoundContext(server_round,
                                                                                                        "L"))
    assert combined.excluded == {}
    return combined.payload.blobs[ROUND_UPDATES]


ZEROS = np.zeros(SIZE, np.float32)


def installed_context(k, run=RUN):
    return (setup.run_dir(k.state_dir, run) / setup.PUBLIC_FILE).read_bytes()


def test_keys_are_private_from_creation_and_an_owner_without_a_roster_refuses(tmp_path, fed):
    keys, _ = fed
    for path in (sealing.keys_dir(keys["client_1"].state_dir) / "owner_ed25519.key",
                 sealing.keys_dir(keys["client_1"].state_dir) / "owner_x25519.key",
                 setup.run_dir(keys["client_1"].state_dir, RUN) / setup.SECRET_FILE):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with pytest.raises(UserError, match="no pinned roster"):
        setup.announce(OwnerKeys("client_9", str(tmp_path / "loner")))


def test_a_context_the_server_made_and_sealed_to_an_owner_is_refused(fed):
    # Before: install() opened any box sealed to the owner's X25519 key (public: the server relays
    # it), so the server made its own tenseal context, sealed it to client_1 and got it installed;
    # client_1 then encrypted its updates under the server's key and the server decrypted them.
    keys, made = fed
    victim = keys["client_1"]
    mine = make_context(CFG)
    box = sealing.seal(secret_bytes(mine), setup.announce(victim))
    with pytest.raises(PayloadError, match="not the one the key holder signed"):  # genuine statement, its context
        install(victim, made, box, public=public_bytes(mine))
    claim = {"purpose": setup.PURPOSE, "run": RUN, "context": context_id(public_bytes(mine)), "key_holder": "client_0",
             "sealed": {"client_1": hashlib.sha256(box).hexdigest()}}
    statement = json.dumps(claim, sort_keys=True).encode()
    server_signer = OwnerKeys("server", str(victim.state_dir) + "-server")
    for signature in (b"\x00" * 64, server_signer.sign(statement)):  # unsigned; signed by a key the roster lacks
        with pytest.raises(PayloadError, match="not signed by"):
            install(victim, made, box, public=public_bytes(mine), statement=statement, signature=signature)
    assert installed_context(victim) == made.public  # still the key holder's context


def test_an_unsigned_or_tampered_set_up_is_refused(fed):
    # Before: nothing was signed; any bytes that opened with the owner's key were installed.
    keys, made = fed
    fresh = keys
    other_run = "/runs/b#00000002"
    for signature in (b"", b"\x01" * 64, made.signature[:-1] + bytes([made.signature[-1] ^ 1])):
        with pytest.raises(PayloadError, match="not signed by"):
            install(fresh["client_2"], made, made.sealed["client_2"], run=other_run, signature=signature)
    # a genuine set-up replayed into another run (the server re-running an old key set-up)
    with pytest.raises(PayloadError, match="replayed"):
        install(fresh["client_2"], made, made.sealed["client_2"], run=other_run)


def test_an_extra_or_substituted_x25519_key_in_the_keygen_listing_is_refused(tmp_path):
    # Before: the key holder sealed the secret to every pubkey.* the server listed, so the server
    # listed its own X25519 key (as a new owner, or in place of one) and opened the secret.
    keys = {o: OwnerKeys(o, str(tmp_path / o)) for o in OWNERS}
    pin_roster({o: tmp_path / o for o in OWNERS}, "client_0")
    from nacl.public import PrivateKey

    server_key = PrivateKey.generate()
    honest = {o: setup.announce(k) for o, k in keys.items()}
    with pytest.raises(PayloadError, match="not in the pinned roster"):
        setup.generate(CFG, keys["client_0"], RUN, {**honest, "server": bytes(server_key.public_key)})
    with pytest.raises(PayloadError, match="not the pinned one"):
        setup.generate(CFG, keys["client_0"], RUN, {**honest, "client_2": bytes(server_key.public_key)})
    # listing fewer keys changes nothing: the key holder seals to the pinned roster only
    made = setup.generate(CFG, keys["client_0"], RUN, {"client_1": honest["client_1"]})
    assert sorted(made.sealed) == list(OWNERS)
    for box in made.sealed.values():
        with pytest.raises(PayloadError, match="sealed to someone else"):
            sealing.unseal(box, bytes(server_key), "sealed CKKS secret")
    with pytest.raises(UserError, match="not the key holder"):  # only the pinned key holder makes keys
        setup.generate(CFG, keys["client_1"], "/runs/c#1", honest)


def test_re_keying_mid_run_is_refused(fed, tmp_path):
    # Before: every install() overwrote the stored context, so the server could re-key an owner
    # between rounds (e.g. with a context it had made; see above) and read what it sent next.
    keys, made = fed
    with pytest.raises(PayloadError, match="re-keying mid-run"):  # the key holder keys a run once
        setup.generate(CFG, keys["client_0"], RUN, {})
    # even a second context the key holder really signed for this run is refused by owners
    # (here: a copy of the key holder's keys that forgot it had keyed this run)
    import shutil

    twin_dir = tmp_path / "twin"
    shutil.copytree(keys["client_0"].state_dir, twin_dir)
    shutil.rmtree(setup.run_dir(twin_dir, RUN))
    second = setup.generate(CFG, OwnerKeys("client_0", str(twin_dir), keys["client_0"].roster_file), RUN, {})
    with pytest.raises(PayloadError, match="re-keying mid-run"):
        install(keys["client_1"], second, second.sealed["client_1"])
    assert installed_context(keys["client_1"]) == made.public
    install(keys["client_1"], made, made.sealed["client_1"])  # the same context again is fine


def _signed_round(keys, made, owner, state, server_round, delta):
    """One round: every owner's signed update kept by the server, then ``owner`` (asked) re-encrypts."""
    asked = owner.keys.owner_id
    state.pending.append(round_updates(keys, made, server_round, {o: delta for o in OWNERS}))
    vector = owner.open_global(state.arrays(), ZEROS, server_round)
    blob, signature = owner.encrypt_global(vector, server_round)
    assert state.adopt({asked: Protected(blobs={wire.ENCRYPTED_GLOBAL: blob, wire.GLOBAL_SIGNATURE: signature})},
                       asked, server_round) is None
    return vector


def test_a_re_encrypted_global_from_an_owner_not_asked_is_not_adopted(fed):
    # Before: adopt() kept the first reply with a global-ct blob, from whichever owner sent it, so
    # any owner (or a node claiming an owner id) could replace the global everyone trains from.
    keys, made = fed
    o1, o2 = owner_side(keys, "client_1"), owner_side(keys, "client_2")
    state = EncryptedGlobal()
    state.pending.append(round_updates(keys, made, 1, {"client_1": np.full(SIZE, 0.5)}))
    rogue_blob, rogue_sig = o2.encrypt_global(np.full(SIZE, 9.0), 1)
    good_blob, good_sig = o1.encrypt_global(np.full(SIZE, 0.5), 1)
    rogue = Protected(blobs={wire.ENCRYPTED_GLOBAL: rogue_blob, wire.GLOBAL_SIGNATURE: rogue_sig})
    state.adopt({"client_2": rogue}, "client_1", 1)  # only the rogue answered: nothing adopted
    assert state.base is None and len(state.pending) == 1
    state.adopt({"client_2": rogue, "client_1": Protected(blobs={wire.ENCRYPTED_GLOBAL: good_blob,
                                                                wire.GLOBAL_SIGNATURE: good_sig})}, "client_1", 1)
    assert state.base == SignedBase(good_blob, 1, "client_1", good_sig) and state.pending == []
    np.testing.assert_allclose(o2.open_global(state.arrays(), np.zeros(SIZE, np.float32), 1), 0.5, atol=1e-5)
    # and a blob without its owner's signature is never adopted
    state.adopt({"client_1": Protected(blobs={wire.ENCRYPTED_GLOBAL: rogue_blob})}, "client_1", 2)
    assert state.base.round == 1


def test_a_stale_signed_global_is_refused(fed):
    # Before: owners accepted whatever base the server sent, so it could replay round 1's global
    # in round 3 (undoing round 2 for everyone, or showing owners different rounds).
    keys, made = fed
    owner = owner_side(keys, "client_2")
    state = EncryptedGlobal()
    _signed_round(keys, made, owner, state, 1, np.full(SIZE, 0.1))
    old = EncryptedGlobal(state.base, list(state.pending))
    _signed_round(keys, made, owner, state, 2, np.full(SIZE, 0.2))
    zeros = np.zeros(SIZE, np.float32)
    np.testing.assert_allclose(
        owner.open_global(state.arrays(), zeros, 2), 0.3, atol=1e-5
    )  # honest: round 3 trains from 2
    with pytest.raises(PayloadError, match="stale or replayed"):
        owner.open_global(old.arrays(), zeros, 2)
    relabelled = EncryptedGlobal(SignedBase(old.base.blob, 2, old.base.signer, old.base.signature))
    with pytest.raises(PayloadError, match="not signed by"):  # the round is under the signature
        owner.open_global(relabelled.arrays(), zeros, 2)
    with pytest.raises(PayloadError, match="stale or replayed"):  # nor can the base run ahead of the round
        owner.open_global(state.arrays(), zeros, 1)


def test_a_global_the_server_encrypted_itself_is_refused(fed):
    # Before: the server holds the public context, which encrypts; it sent Enc(any adapter it
    # liked) as base-ct and every owner decrypted, trained from and saved that adapter.
    keys, made = fed
    owner = owner_side(keys, "client_0")
    blob = _server_encrypted(made, 7.0)
    zeros = np.zeros(SIZE, np.float32)
    with pytest.raises(PayloadError, match="no owner's signature"):
        owner.open_global(EncryptedGlobal(SignedBase(blob, 1, "", b"")).arrays(), zeros, 1)
    with pytest.raises(PayloadError, match="not signed by"):
        owner.open_global(EncryptedGlobal(SignedBase(blob, 1, "client_1", b"\x02" * 64)).arrays(), zeros, 1)
    with pytest.raises(PayloadError, match="not in the pinned roster"):
        forger = OwnerKeys("server", keys["client_0"].state_dir + "-server")
        signature = forger.sign(global_statement(RUN, owner.context_id, 1, blob))
        owner.open_global(EncryptedGlobal(SignedBase(blob, 1, "server", signature)).arrays(), zeros, 1)


def _wrong_scale(owner, delta):
    """What a malicious owner with the shared secret context can send: the same context, scale 2^30."""
    import tenseal as ts

    values = np.concatenate([delta, [1.0]]).tolist()
    return owner.payload_of(pack([ts.ckks_vector(owner._secret, values, scale=2.0**30).serialize()]))


def test_a_wrong_scale_ciphertext_is_excluded_and_the_sum_is_the_others(fed_ckks):
    # Before: a ciphertext at scale 2^30 passed validate() (context id, SHA-256 and length were
    # right), then combine() raised "ValueError: scale mismatch" outside the per-owner try and the
    # whole run stopped: one owner could end the federation.
    keys, made = fed_ckks
    owner = owner_side(keys, "client_0", CKKS)
    server = TensealServer(CKKS, SIZE, public=made.public)
    bad = _wrong_scale(owner, np.full(SIZE, 100.0))
    with pytest.raises(PayloadError, match="scale 2\\^30.0"):
        server.validate(bad)
    payloads = {"client_0": owner.protect(np.full(SIZE, 1.0), 2.0), "client_2": bad,
                "client_1": owner.protect(np.full(SIZE, 4.0), 1.0)}
    combined = server.combine(payloads)  # even unvalidated, it is left out, never fatal
    assert set(combined.excluded) == {"client_2"} and "scale" in combined.excluded["client_2"]
    revealed = owner.reveal(combined.payload)
    assert revealed.total_weight == pytest.approx(3.0, abs=1e-4)
    np.testing.assert_allclose(revealed.weighted_sum, 6.0, atol=1e-4)
    assert server.combine({"client_2": bad}).excluded.keys() == {"client_2"}  # alone: nothing summed, no crash


def test_the_strategy_excludes_a_wrong_scale_owner_and_the_round_goes_on(fed_ckks):
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from fedveil.core import records
    from fedveil.core.layout import AdapterLayout
    from fedveil.server.strategy import SecureAggregation

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    keys, made = fed_ckks
    owner = owner_side(keys, "client_0", CKKS)
    layout = AdapterLayout.of({"w.lora_A": np.zeros((SIZE // 2, 2), np.float32)})
    strategy = SecureAggregation(FedAvg(), TensealServer(CKKS, SIZE, public=made.public), layout)

    def reply(node, payload):
        instruction = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type="train")
        meta = {wire.LAYOUT_DIGEST: layout.digest, wire.OWNER_ID: f"client_{node}"}
        return Message(records.reply({wire.NUM_EXAMPLES: 1}, meta, payload), reply_to=instruction)

    outcome = strategy.aggregate_train(1, [reply(0, owner.protect(np.full(SIZE, 1.0), 1.0)),
                                           reply(2, _wrong_scale(owner, np.full(SIZE, 100.0))),
                                           reply(1, owner.protect(np.full(SIZE, 3.0), 1.0))])
    assert sorted(outcome.accepted) == ["client_0", "client_1"] and "scale" in outcome.excluded["client_2"]
    np.testing.assert_allclose(owner.reveal(outcome.combined).mean, 2.0, atol=1e-5)


def test_a_wrong_step_or_out_of_range_bfv_update_is_excluded_or_refused(fed):
    # The BFV twin of a wrong scale: an owner (it holds the secret context) encodes at another step,
    # which would add up to garbage; it is left out of the sum, never fatal. One that skips the
    # clamp, so that the sum could overflow a digit, is refused at decryption by every owner.
    from fedveil.privacy.secagg.tenseal import bfv

    keys, made = fed
    owner, server = owner_side(keys, "client_0"), server_side(keys, made)
    coarse = TensealOwner(TensealConfig(max_owners=3, max_weight=4.0, value_bound=6.0), SIZE, public=made.public,
                          secret=secret_bytes(owner._secret))
    payloads = {"client_0": owner.protect(np.full(SIZE, 1.0), 2.0), "client_2": coarse.protect(np.full(SIZE, 5.0), 1.0),
                "client_1": owner.protect(np.full(SIZE, 4.0), 1.0)}
    combined = server.combine(payloads)
    assert set(combined.excluded) == {"client_2"} and "encodes at step" in combined.excluded["client_2"]
    revealed = owner.reveal(combined.payload)
    assert revealed.total_weight == 3.0
    np.testing.assert_allclose(revealed.weighted_sum, 6.0, atol=1e-4)
    import tenseal as ts

    slots = bfv.pack_slots(np.full(SIZE, 2 * CFG.levels, np.int64), bfv.radix(4096, CFG.plain_modulus_bits))
    unclamped = pack([bfv.header(b"u", CFG.step), ts.bfv_vector(owner._secret, slots.tolist()).serialize(),
                      bfv.seal_weight(owner._weight_key, 1.0)])
    summed = server.combine({"client_0": payloads["client_0"], "client_2": owner.payload_of(unclamped)})
    with pytest.raises(PayloadError, match="encoded out of range"):
        owner.reveal(summed.payload)


# --- what the server holds between rounds: owners' signed updates and signed globals ---------------

def _server_encrypted(made, value):
    """Enc(value) as a global (BFV: header, digits at step 1) made by the server itself with the
    public context (which encrypts)."""
    import tenseal as ts

    from fedveil.privacy.secagg.tenseal import bfv

    slots = bfv.pack_slots(np.full(SIZE, int(value), np.int64), bfv.radix(4096, CFG.plain_modulus_bits))
    return pack([bfv.header(b"g", 1.0), ts.bfv_vector(ts.context_from(made.public), slots.tolist()).serialize()])


def test_a_round_sum_the_server_forged_is_refused(fed):
    # Before: the pending round sums were the server's alone (unsigned): it encrypted Enc(7) with
    # the public context, sent it as round 1's sum, and every owner trained from global + 7.
    keys, made = fed
    owner = owner_side(keys, "client_0")
    forged = _server_encrypted(made, 7.0)
    with pytest.raises(PayloadError, match="unreadable"):  # a bare ciphertext is no round of signed updates
        owner.open_global(EncryptedGlobal(None, [forged]).arrays(), ZEROS, 1)
    server_signer = OwnerKeys("server", keys["client_0"].state_dir + "-server")
    claims = {"client_1": b"\x03" * 64,  # a pinned owner's name, no valid signature
              "server": server_signer.sign(b"anything")}  # a key the roster lacks
    for who, signature in claims.items():
        bundle = RoundUpdates(1, {who: (forged, signature)}).encode()
        with pytest.raises(PayloadError, match="not signed by|not in the pinned roster"):
            owner.open_global(EncryptedGlobal(None, [bundle]).arrays(), ZEROS, 1)
    # the honest round opens: every owner adds the signed updates itself
    honest = round_updates(keys, made, 1, {o: np.full(SIZE, i + 1.0) for i, o in enumerate(OWNERS)})
    np.testing.assert_allclose(owner.open_global(EncryptedGlobal(None, [honest]).arrays(), ZEROS, 1), 2.0, atol=1e-5)


def test_a_round_replayed_from_an_earlier_round_is_refused(fed):
    # Before: after round 2 the server could send round 1's signed base plus round 1's sum again
    # (1 + 1 pending = round 2, so the count check passed) and move every owner's global by round
    # 1's update a second time instead of round 2's.
    keys, made = fed
    owner = owner_side(keys, "client_1")
    state = EncryptedGlobal()
    _signed_round(keys, made, owner, state, 1, np.full(SIZE, 0.1))
    round1 = round_updates(keys, made, 1, {o: np.full(SIZE, 0.1) for o in OWNERS})
    round2 = round_updates(keys, made, 2, {o: np.full(SIZE, 0.2) for o in OWNERS})
    np.testing.assert_allclose(owner.open_global(EncryptedGlobal(state.base, [round2]).arrays(), ZEROS, 2), 0.3,
                               atol=1e-5)
    with pytest.raises(PayloadError, match="stale or replayed"):
        owner.open_global(EncryptedGlobal(state.base, [round1]).arrays(), ZEROS, 2)
    with pytest.raises(PayloadError, match="stale or replayed"):  # no base: round 1 twice
        owner.open_global(EncryptedGlobal(None, [round1, round1]).arrays(), ZEROS, 2)
    relabelled = RoundUpdates(2, RoundUpdates.decode(round1).signed).encode()  # the round is under each signature
    with pytest.raises(PayloadError, match="not signed by"):
        owner.open_global(EncryptedGlobal(state.base, [relabelled]).arrays(), ZEROS, 2)
    # a round of another run (same owners, same context) is refused too: the run is signed
    other_run = {o: TensealOwner(CFG, SIZE, public=made.public, secret=owner_side(keys, o)._secret.serialize(),
                                 keys=keys[o], run="/runs/other#1").protect(np.full(SIZE, 5.0), 1.0,
                                                                             RoundContext(2, "L", o))
                 for o in OWNERS}
    foreign = RoundUpdates(2, {o: (p.blobs["ciphertext"], p.blobs[SIGNATURE]) for o, p in other_run.items()}).encode()
    with pytest.raises(PayloadError, match="not signed by"):
        owner.open_global(EncryptedGlobal(state.base, [foreign]).arrays(), ZEROS, 2)


def test_a_re_encrypted_global_not_signed_by_the_designated_owner_is_not_adopted(fed):
    # Before: the server stored whatever global-ct the asked owner's reply carried without checking
    # its signature, so a node answering as the designated owner (or a damaged reply) replaced the
    # global, and every owner then refused to open it: the run stopped.
    keys, made = fed
    server = server_side(keys, made)
    o1, o2 = owner_side(keys, "client_1"), owner_side(keys, "client_2")
    state = EncryptedGlobal(check=server.check_global)
    state.pending.append(round_updates(keys, made, 1, {o: np.full(SIZE, 0.5) for o in OWNERS}))

    def reply(blob, signature):
        return {"client_1": Protected(blobs={wire.ENCRYPTED_GLOBAL: blob, wire.GLOBAL_SIGNATURE: signature})}

    blob, by_client_2 = o2.encrypt_global(np.full(SIZE, 9.0), 1)  # signed by client_2, sent as client_1's
    refused = state.adopt(reply(blob, by_client_2), "client_1", 1)
    assert "not signed by" in refused and state.base is None and len(state.pending) == 1
    earlier_blob, earlier = o1.encrypt_global(np.full(SIZE, 0.25), 0)  # the designated owner's, for another round
    assert "not signed by" in state.adopt(reply(earlier_blob, earlier), "client_1", 1) and state.base is None
    with pytest.raises(PayloadError, match="not signed by"):  # owners refuse it too, whatever the server does
        o1.open_global(EncryptedGlobal(SignedBase(blob, 1, "client_1", by_client_2)).arrays(), ZEROS, 1)
    np.testing.assert_allclose(o1.open_global(state.arrays(), ZEROS, 1), 0.5, atol=1e-5)  # the round stays pending
    good_blob, good = o1.encrypt_global(np.full(SIZE, 0.5), 1)
    assert state.adopt(reply(good_blob, good), "client_1", 1) is None and state.base.signer == "client_1"
    np.testing.assert_allclose(o2.open_global(state.arrays(), ZEROS, 1), 0.5, atol=1e-5)


def test_a_dropped_or_replaced_owner_update_is_refused(fed):
    # Before: the server summed the updates itself, so it could leave client_1's update out of the
    # round (client_1 trained, but its work vanished without its knowing) or swap client_2's for
    # one it encrypted itself; owners decrypted whatever sum it sent.
    keys, made = fed
    server = server_side(keys, made)
    payloads = signed_updates(keys, 1, {o: np.full(SIZE, i + 1.0) for i, o in enumerate(OWNERS)})
    signed = {o: (p.blobs["ciphertext"], p.blobs[SIGNATURE]) for o, p in payloads.items()}
    dropped = RoundUpdates(1, {o: v for o, v in signed.items() if o != "client_1"}).encode()
    with pytest.raises(PayloadError, match="leaves out this owner's own update"):
        owner_side(keys, "client_1").open_global(EncryptedGlobal(None, [dropped]).arrays(), ZEROS, 1)
    # another owner cannot tell a drop from a dropout; it opens the round of the two that remain
    np.testing.assert_allclose(owner_side(keys, "client_0").open_global(EncryptedGlobal(None, [dropped]).arrays(),
                                                                         ZEROS, 1), 2.0, atol=1e-5)
    replaced = RoundUpdates(1, {**signed, "client_2": (_server_encrypted(made, 50.0), signed["client_2"][1])}).encode()
    for o in OWNERS:
        with pytest.raises(PayloadError, match="client_2's update in pending round 1 is not signed by"):
            owner_side(keys, o).open_global(EncryptedGlobal(None, [replaced]).arrays(), ZEROS, 1)
    # the honest server excludes, never adds, an update replaced in transit or replayed from round 1
    swapped = Protected(blobs={**payloads["client_2"].blobs, SIGNATURE: payloads["client_0"].blobs[SIGNATURE]})
    combined = server.combine({**payloads, "client_2": swapped}, RoundContext(1, "L"))
    assert set(combined.excluded) == {"client_2"} and "not signed by" in combined.excluded["client_2"]
    assert sorted(RoundUpdates.decode(combined.payload.blobs[ROUND_UPDATES]).signed) == ["client_0", "client_1"]
    replayed = server.combine(payloads, RoundContext(2, "L"))
    assert set(replayed.excluded) == set(OWNERS) and replayed.payload.blobs == {}


def test_a_wrong_size_or_foreign_context_update_is_excluded_and_the_round_goes_on(fed):
    # A payload at wrong scale (above), size or context is left out of the round, never fatal; and
    # a signed but odd ciphertext a malicious server slips into a round is refused by owners, not a crash.
    keys, made = fed
    server = server_side(keys, made)
    good = signed_updates(keys, 1, {"client_0": np.full(SIZE, 1.0)})["client_0"]
    short = TensealOwner(
        CFG,
        SIZE - 2,
        public=made.public,
        secret=owner_side(keys, "client_1")._secret.serialize(),
        keys=keys["client_1"],
        run=RUN,
    ).protect(np.ones(SIZE - 2), 1.0, RoundContext(1, "L", "client_1"))
    other = make_context(CFG)
    foreign = TensealOwner(CFG, SIZE, public=public_bytes(other), secret=secret_bytes(other), keys=keys["client_2"],
                           run=RUN).protect(np.ones(SIZE), 1.0, RoundContext(1, "L", "client_2"))
    for bad, reason in ((short, "holds 19 slots"), (foreign, "another BFV context")):
        with pytest.raises(PayloadError, match=reason):
            server.validate(bad)
    combined = server.combine({"client_0": good, "client_1": short, "client_2": foreign}, RoundContext(1, "L"))
    assert "holds 19 slots" in combined.excluded["client_1"] and "another BFV context" in combined.excluded["client_2"]
    np.testing.assert_allclose(owner_side(keys, "client_0").open_global(
        EncryptedGlobal(None, [combined.payload.blobs[ROUND_UPDATES]]).arrays(), ZEROS, 1), 1.0, atol=1e-5)
    odd = RoundUpdates(1, {"client_0": (good.blobs["ciphertext"], good.blobs[SIGNATURE]),
                           "client_1": (short.blobs["ciphertext"], short.blobs[SIGNATURE])}).encode()
    with pytest.raises(PayloadError, match="holds 19 slots"):
        owner_side(keys, "client_0").open_global(EncryptedGlobal(None, [odd]).arrays(), ZEROS, 1)


def test_the_coordinator_learns_no_owners_count_nor_that_it_was_clamped(fed, capsys):
    # An owner's weight is its example count when DP is off. The coordinator, holding the public
    # context only, must not read it, nor tell a large (clamped) owner from a small one: the weight
    # travels in a secret box keyed from the shared secret context, and the clamping notice goes to
    # the owner's own console only.
    keys, made = fed
    delta = np.full(SIZE, 0.5)
    small = owner_side(keys, "client_0").protect(delta, 1.0, RoundContext(1, "L", "client_0"))
    capsys.readouterr()
    large = owner_side(keys, "client_1").protect(delta, 1000.0, RoundContext(1, "L", "client_1"))
    notice = capsys.readouterr().out
    assert "counts as aggregation.max_weight=2" in notice  # told at home...
    for p in (small, large):
        sent = b"".join(p.blobs.values())
        assert b"max_weight" not in sent and b"1000" not in sent  # ...and not in what the coordinator gets
        for w in (2.0, 1000.0):  # (1.0 is in every SEAL ciphertext: its scale field)
            assert struct.pack("<d", w) not in sent
    assert {k: len(v) for k, v in small.blobs.items()} == {k: len(v) for k, v in large.blobs.items()}
    box = unpack(large.blobs["ciphertext"])[-1]  # the sealed weight, last in the payload
    with pytest.raises(PayloadError, match="does not open"):
        bfv.open_weight(bfv.count_key(made.public), box)  # what the coordinator could derive a key from
    secret = (setup.run_dir(keys["client_1"].state_dir, RUN) / setup.SECRET_FILE).read_bytes()
    assert bfv.open_weight(bfv.count_key(secret), box) == 2.0  # owners read it: clamped to max_weight
