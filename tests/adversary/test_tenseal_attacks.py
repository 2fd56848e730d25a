"""Attacks by a malicious coordinator (or one odd owner) on the ``tenseal`` backend that must fail.

The coordinator relays every key set-up message and holds the encrypted global, so it can drop,
replace, add or replay anything it relays. Each test plays one attack on the Flower-free owner and
server helpers (``privacy/secagg/tenseal``, ``server/global_state``), says in a comment what the
attack achieved before the fix, and checks that it is now refused.
"""

import hashlib
import json
import os
import stat

import numpy as np
import pytest

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.io import pack
from fedveil.core.payload import PayloadError, Protected
from fedveil.privacy.secagg import backend_spec, sealing
from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster
from fedveil.privacy.secagg.tenseal import keys as setup
from fedveil.privacy.secagg.tenseal.ckks import (TensealBackend, TensealConfig, context_id, global_statement, make_context,
                                                 public_bytes, secret_bytes)
from fedveil.privacy.secagg.tenseal.global_codec import SignedBase
from fedveil.server.global_state import EncryptedGlobal

pytestmark = pytest.mark.adversary
CFG = TensealConfig()
SIZE = 40
RUN = "/runs/a#00000001"
OWNERS = ("client_0", "client_1", "client_2")


@pytest.fixture()
def fed(tmp_path):
    """Three owners with a pinned roster (key holder client_0), keyed honestly for RUN."""
    keys = {o: OwnerKeys(o, str(tmp_path / o)) for o in OWNERS}
    pin_roster({o: tmp_path / o for o in OWNERS}, "client_0")
    made = setup.generate(CFG, keys["client_0"], RUN, {o: setup.announce(k) for o, k in keys.items()})
    for o, k in keys.items():
        install(k, made, made.sealed[o])
    return keys, made


def install(k, made, box, run=RUN, **over):
    fields = dict(public=made.public, statement=made.statement, signature=made.signature, sealed=box)
    setup.install(k, run, **{**fields, **over})


def owner_side(keys, o):
    return backend_spec("tenseal").owner(CFG, SIZE, keys[o], {})


def installed_context(k):
    return (sealing.keys_dir(k.state_dir) / "ckks_public.ctx").read_bytes()


def test_keys_are_private_from_creation_and_an_owner_without_a_roster_refuses(tmp_path, fed):
    keys, _ = fed
    for name in ("owner_ed25519.key", "owner_x25519.key", "ckks_secret.ctx"):
        assert stat.S_IMODE(os.stat(sealing.keys_dir(keys["client_1"].state_dir) / name).st_mode) == 0o600
    with pytest.raises(UserError, match="no pinned roster"):
        setup.announce(OwnerKeys("client_9", str(tmp_path / "loner")))


def test_a_context_the_server_made_and_sealed_to_an_owner_is_refused(fed):
    # Before: install() opened any box sealed to the owner's X25519 key (public: the server relays
    # it), so the server made its own CKKS context, sealed it to client_1 and got it installed;
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
    (twin_dir / "keys" / setup.RUN_FILE).unlink()
    second = setup.generate(CFG, OwnerKeys("client_0", str(twin_dir), keys["client_0"].roster_file), RUN, {})
    with pytest.raises(PayloadError, match="re-keying mid-run"):
        install(keys["client_1"], second, second.sealed["client_1"])
    assert installed_context(keys["client_1"]) == made.public
    install(keys["client_1"], made, made.sealed["client_1"])  # the same context again is fine


def _signed_round(owner, server, state, rnd, delta):
    """One round: every owner's update summed by the server, then ``owner`` (asked) re-encrypts."""
    asked = owner.keys.owner_id
    outcome = server.combine({o: owner.protect(delta, 1.0) for o in OWNERS})
    state.pending.append(outcome.payload.blobs["ciphertext"])
    vector = owner.open_global(state.arrays(), np.zeros(SIZE, np.float32), rnd)
    blob, signature = owner.encrypt_global(vector, rnd)
    state.adopt({asked: Protected(blobs={wire.ENCRYPTED_GLOBAL: blob, wire.GLOBAL_SIGNATURE: signature})}, asked, rnd)
    return vector


def test_a_re_encrypted_global_from_an_owner_not_asked_is_not_adopted(fed):
    # Before: adopt() kept the first reply with a global-ct blob, from whichever owner sent it, so
    # any owner (or a node claiming an owner id) could replace the global everyone trains from.
    keys, made = fed
    o1, o2 = owner_side(keys, "client_1"), owner_side(keys, "client_2")
    server = TensealBackend(CFG, SIZE, public=made.public)
    state = EncryptedGlobal()
    state.pending.append(server.combine({"client_1": o1.protect(np.full(SIZE, 0.5), 1.0)}).payload.blobs["ciphertext"])
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
    owner, server = owner_side(keys, "client_2"), TensealBackend(CFG, SIZE, public=made.public)
    state = EncryptedGlobal()
    _signed_round(owner, server, state, 1, np.full(SIZE, 0.1))
    old = EncryptedGlobal(state.base, list(state.pending))
    _signed_round(owner, server, state, 2, np.full(SIZE, 0.2))
    zeros = np.zeros(SIZE, np.float32)
    np.testing.assert_allclose(owner.open_global(state.arrays(), zeros, 2), 0.3, atol=1e-5)  # honest: round 3 trains from 2
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
    import tenseal as ts

    keys, made = fed
    owner = owner_side(keys, "client_0")
    public_ctx = ts.context_from(made.public)
    values = np.full(SIZE + 1, 7.0)
    values[-1] = 1.0
    blob = pack([ts.ckks_vector(public_ctx, values.tolist()).serialize()])
    zeros = np.zeros(SIZE, np.float32)
    with pytest.raises(PayloadError, match="no owner's signature"):
        owner.open_global(EncryptedGlobal(SignedBase(blob, 1, "", b"")).arrays(), zeros, 1)
    with pytest.raises(PayloadError, match="not signed by"):
        owner.open_global(EncryptedGlobal(SignedBase(blob, 1, "client_1", b"\x02" * 64)).arrays(), zeros, 1)
    with pytest.raises(PayloadError, match="not in the pinned roster"):
        forger = OwnerKeys("server", keys["client_0"].state_dir + "-server")
        signature = forger.sign(global_statement(owner.context_id, 1, blob))
        owner.open_global(EncryptedGlobal(SignedBase(blob, 1, "server", signature)).arrays(), zeros, 1)


def _wrong_scale(owner, delta):
    """What a malicious owner with the shared secret context can send: the same context, scale 2^30."""
    import tenseal as ts

    values = np.concatenate([delta, [1.0]]).tolist()
    return owner.payload_of(pack([ts.ckks_vector(owner._secret, values, scale=2.0**30).serialize()]))


def test_a_wrong_scale_ciphertext_is_excluded_and_the_sum_is_the_others(fed):
    # Before: a ciphertext at scale 2^30 passed validate() (context id, SHA-256 and length were
    # right), then combine() raised "ValueError: scale mismatch" outside the per-owner try and the
    # whole run stopped: one owner could end the federation.
    keys, made = fed
    owner = owner_side(keys, "client_0")
    server = TensealBackend(CFG, SIZE, public=made.public)
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


def test_the_strategy_excludes_a_wrong_scale_owner_and_the_round_goes_on(fed):
    from flwr.app import ConfigRecord, Message, RecordDict
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from fedveil.core import records
    from fedveil.core.layout import AdapterLayout
    from fedveil.server.strategy import SecureAggregation

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    keys, made = fed
    owner = owner_side(keys, "client_0")
    layout = AdapterLayout.of({"w.lora_A": np.zeros((SIZE // 2, 2), np.float32)})
    strategy = SecureAggregation(FedAvg(), TensealBackend(CFG, SIZE, public=made.public), layout)

    def reply(node, payload):
        instruction = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type="train")
        meta = {wire.LAYOUT_DIGEST: layout.digest, wire.OWNER_ID: f"client_{node}"}
        return Message(records.reply({wire.NUM_EXAMPLES: 1}, meta, payload), reply_to=instruction)

    outcome = strategy.aggregate_train(1, [reply(0, owner.protect(np.full(SIZE, 1.0), 1.0)),
                                           reply(2, _wrong_scale(owner, np.full(SIZE, 100.0))),
                                           reply(1, owner.protect(np.full(SIZE, 3.0), 1.0))])
    assert sorted(outcome.accepted) == ["client_0", "client_1"] and "scale" in outcome.excluded["client_2"]
    np.testing.assert_allclose(owner.reveal(outcome.combined).mean, 2.0, atol=1e-5)
