"""Key set-up of ``tenseal``, owner side: the pinned key holder makes and signs the context, every owner checks and installs it.

Every owner pins the same roster first (``privacy/secagg/identity.py``: owner id -> Ed25519
verify key and X25519 public key, and the key holder's id); an owner without one refuses.

1. :func:`announce`: every owner checks its pinned roster holds its own keys and answers with its
   X25519 public key (informational: nobody seals to a key the server relays);
2. :func:`generate`, on the roster's key holder only: refuses a server listing with any owner or
   key the roster does not pin, makes a fresh CKKS context, seals its secret part to the X25519 key
   of every owner *in the roster*, and signs (Ed25519) a statement binding the run, the public
   context's id and each sealed box's SHA-256;
3. :func:`install`, on every owner: accepts the context only if that statement is signed by the
   pinned key holder, names this run and this public context, and lists this owner's sealed box,
   and only if the box opens with this owner's key; once a context is installed for a run, another
   one for the same run is refused (no re-keying mid-run). Stored in ``<state_dir>/keys/``
   (``ckks_secret.ctx`` mode 0600, ``ckks_public.ctx``, ``ckks_run.json``).

The server relays the three exchanges (``server/key_setup.py``) and ends up with the public
context only; it can neither substitute a context (it cannot sign as the key holder) nor add a key
of its own (the key holder seals to pinned keys only).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity, sealing
from fedveil.privacy.secagg.tenseal.ckks import (TensealConfig, context_id, load_context, make_context, public_bytes,
                                                 secret_bytes)

PURPOSE = "fedveil/tenseal-setup/v1"
RUN_FILE = "ckks_run.json"


@dataclass(frozen=True)
class SetUp:
    """What the key holder hands the relay: the public context, the signed statement, one sealed box per owner."""

    public: bytes
    statement: bytes  # JSON: purpose, run, context id, key holder, owner -> SHA-256 of its sealed box
    signature: bytes  # the key holder's Ed25519 signature over ``statement``
    sealed: dict[str, bytes]


def announce(keys: identity.OwnerKeys) -> bytes:
    """This owner's X25519 public key, after checking its pinned roster (refused without one)."""
    keys.roster()
    return sealing.keypair(keys.state_dir)[1]


def generate(cfg: TensealConfig, keys: identity.OwnerKeys, run: str, listed: dict[str, bytes]) -> SetUp:
    """The key holder's set-up: ``listed`` is what the server relays (owner id -> X25519 key); only
    pinned keys are used, and a listing with anything else is refused."""
    roster = keys.roster()
    if roster.key_holder != keys.owner_id:
        raise UserError(f"this owner is not the key holder in its pinned roster ({roster.key_holder} is): "
                        f"refusing to make keys; set aggregation.key_holder='{roster.key_holder}'")
    for owner, key in sorted(listed.items()):
        if roster.member(owner, "the server listed owner").public_key != bytes(key):
            raise PayloadError(f"the server listed an X25519 key for '{owner}' that is not the pinned one: "
                               "refusing to seal the CKKS secret to it")
    ctx = make_context(cfg)
    public, secret = public_bytes(ctx), secret_bytes(ctx)
    cid = context_id(public)
    _record_run(keys.state_dir, run, cid)  # the key holder keys a run once
    sealed = {owner: sealing.seal(secret, m.public_key) for owner, m in sorted(roster.owners.items())}
    statement = json.dumps({"purpose": PURPOSE, "run": run, "context": cid, "key_holder": keys.owner_id,
                            "sealed": {o: hashlib.sha256(b).hexdigest() for o, b in sealed.items()}},
                           sort_keys=True).encode()
    return SetUp(public, statement, keys.sign(statement), sealed)


def install(keys: identity.OwnerKeys, run: str, *, public: bytes, statement: bytes, signature: bytes,
            sealed: bytes) -> None:
    """Check the key holder's signed statement, open this owner's sealed box, store the context."""
    roster = keys.roster()
    identity.verify(roster.member(roster.key_holder, "key holder").verify_key, statement, signature,
                    f"the CKKS context (key holder {roster.key_holder})")
    try:
        claim = json.loads(statement)
        assert claim["purpose"] == PURPOSE and claim["key_holder"] == roster.key_holder
        box_digest = claim["sealed"][keys.owner_id]
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise PayloadError("the CKKS set-up statement does not name this owner's sealed box: refused") from exc
    if claim["run"] != run:
        raise PayloadError(f"the CKKS context was made for run {claim['run']!r}, not this run {run!r}: a replayed "
                           "set-up; refused")
    if claim["context"] != context_id(public):
        raise PayloadError("the public CKKS context is not the one the key holder signed: refused")
    if hashlib.sha256(sealed).hexdigest() != box_digest:
        raise PayloadError("this owner's sealed box is not the one the key holder signed: refused")
    secret = sealing.unseal(sealed, sealing.keypair(keys.state_dir)[0], "sealed CKKS secret")
    if not load_context(secret).is_private():
        raise PayloadError("the sealed CKKS context holds no secret key; ask the key holder to re-key")
    _record_run(keys.state_dir, run, claim["context"])
    d = sealing.keys_dir(keys.state_dir)
    sealing.write_private(d / "ckks_secret.ctx", secret)
    atomic_write_bytes(d / "ckks_public.ctx", public)


def _record_run(state_dir: str | Path, run: str, cid: str) -> None:
    """Remember the context of ``run``; another context for the same run is refused (no re-keying mid-run)."""
    path = sealing.keys_dir(state_dir) / RUN_FILE
    if path.exists():
        try:
            held = json.loads(path.read_text())
        except ValueError as exc:
            raise UserError(f"{path} is unreadable ({exc}); delete it only if no run is under way") from exc
        if held.get("run") == run and held.get("context") != cid:
            raise PayloadError(f"this owner already holds CKKS context {str(held.get('context'))[:12]} for this run: "
                               "re-keying mid-run is refused (a new key set-up needs a new run / output_dir)")
    atomic_write_bytes(path, json.dumps({"run": run, "context": cid}).encode())


def load_contexts(state_dir: str | Path) -> tuple[bytes, bytes, str]:
    """(public, secret) CKKS context bytes and the run they were made for; an owner without them
    cannot take part."""
    d = Path(state_dir) / "keys"
    try:
        public, secret = (d / "ckks_public.ctx").read_bytes(), (d / "ckks_secret.ctx").read_bytes()
        held = json.loads((d / RUN_FILE).read_text())
    except FileNotFoundError as exc:
        raise UserError(f"no CKKS context in {d}: this owner missed the key set-up; restart the run to re-key") from exc
    except ValueError as exc:
        raise UserError(f"{d / RUN_FILE} is unreadable ({exc}); restart the run to re-key") from exc
    if held.get("context") != context_id(public):
        raise UserError(f"{d} holds a CKKS context of another run than {d / RUN_FILE} names; restart the run to re-key")
    return public, secret, str(held.get("run", ""))


def run_of(statement: bytes) -> str:
    """The run a set-up statement names (the server's copy: it checks signatures of this run)."""
    try:
        return str(json.loads(statement)["run"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError("the key holder's set-up statement names no run; the key set-up failed") from exc
