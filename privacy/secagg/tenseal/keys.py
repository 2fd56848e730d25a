"""Key set-up of ``tenseal``, owner side: the pinned key holder makes and signs the context, every owner
checks and installs it.

Every owner pins the same roster first (``privacy/secagg/identity.py``: owner id -> Ed25519
verify key and X25519 public key, and the key holder's id); an owner without one refuses.

1. :func:`announce`: every owner checks its pinned roster holds its own keys and answers with its
   X25519 public key (informational: nobody seals to a key the server relays);
2. :func:`generate`, on the roster's key holder only: refuses a server listing with any owner or
   key the roster does not pin, makes a fresh tenseal context, seals its secret part to the X25519 key
   of every owner *in the roster*, and signs (Ed25519) a statement binding the run, the pinned
   roster's digest, the public context's id and each sealed box's SHA-256;
3. :func:`install`, on every owner: accepts the context only if that statement is signed by the
   pinned key holder, names this run, this owner's roster and this public context, and lists this
   owner's sealed box, and only if the box opens with this owner's key.

A context is kept per run and never replaced: ``<state_dir>/keys/tenseal/<run digest>/`` holds
``secret.ctx`` (mode 0600 from creation), ``public.ctx`` and ``setup.json`` (the run, the context
id, the roster digest, the key holder's signed statement; written last, it is what makes the run
keyed). Once a run is keyed, the key holder refuses to key it again and every owner refuses another
context for it (no re-keying, also not across a restart); the same context again is a no-op. Rounds
load the context of their own run only (:func:`held_context`), and only while the pinned roster is
the one it was keyed for, so a coordinator can make an owner neither reuse a key for another run or
federation nor swap it mid-run. ``<state_dir>/keys/tenseal_keyings.jsonl`` logs every context this
owner made or installed (one line each; audits and tests count them).

A restarted coordinator (``resume=true``) does not key again: every owner tells it which context
it holds for the run (:func:`rejoin`; the key holder adds the public context and its signed
statement) and the server checks them (:func:`check_rejoin`); its stored ciphertexts stay valid.

The server relays the exchanges (``server/key_setup.py``) and ends up with the public context
only; it can neither substitute a context (it cannot sign as the key holder) nor add a key of its
own (the key holder seals to pinned keys only).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from fedveil.core.errors import UserError
from fedveil.core.io import append_jsonl, atomic_write_bytes, read_jsonl
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity, sealing
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.context import (context_id, load_context, make_context, public_bytes,
                                                    secret_bytes)

PURPOSE = "fedveil/tenseal-setup/v2"  # v2: the statement names the roster digest
CONTEXTS_DIR = "tenseal"  # <state_dir>/keys/tenseal/<run digest>/
SECRET_FILE, PUBLIC_FILE, SETUP_FILE = "secret.ctx", "public.ctx", "setup.json"
KEYINGS_FILE = "tenseal_keyings.jsonl"  # <state_dir>/keys/: one line per context made or installed


@dataclass(frozen=True)
class SetUp:
    """What the key holder hands the relay: the public context, the signed statement, one sealed box per owner."""

    public: bytes
    statement: bytes  # JSON: purpose, run, roster digest, context id, key holder, owner -> SHA-256 of its sealed box
    signature: bytes  # the key holder's Ed25519 signature over ``statement``
    sealed: dict[str, bytes]


def roster_digest(roster: identity.Roster) -> str:
    """SHA-256 of the roster's canonical form: which federation a context was keyed for."""
    return hashlib.sha256(roster.to_json()).hexdigest()


def run_dir(state_dir: str | Path, run: str) -> Path:
    """Where this owner keeps the context of ``run`` (one folder per run, never shared)."""
    return sealing.keys_dir(state_dir) / CONTEXTS_DIR / hashlib.sha256(run.encode()).hexdigest()[:32]


def announce(keys: identity.OwnerKeys) -> bytes:
    """This owner's X25519 public key, after checking its pinned roster (refused without one)."""
    keys.roster()
    return sealing.keypair(keys.state_dir)[1]


def generate(cfg: TensealConfig, keys: identity.OwnerKeys, run: str, listed: dict[str, bytes]) -> SetUp:
    """The key holder's set-up: ``listed`` is what the server relays (owner id -> X25519 key); only
    pinned keys are used, and a listing with anything else is refused. A run it keyed before is
    refused (no re-keying, also not after a restart)."""
    roster = keys.roster()
    if roster.key_holder != keys.owner_id:
        raise UserError(f"this owner is not the key holder in its pinned roster ({roster.key_holder} is): "
                        f"refusing to make keys; set aggregation.key_holder='{roster.key_holder}'")
    held = _held_record(keys.state_dir, run)
    if held is not None:
        raise PayloadError(
            f"this owner already keyed this run (tenseal context {held['context'][:12]}): re-keying mid-run "
            "is refused (a restarted run resumes with resume=true; a new key set-up needs a new run / "
            "output_dir)"
        )
    for owner, key in sorted(listed.items()):
        if roster.member(owner, "the server listed owner").public_key != bytes(key):
            raise PayloadError(f"the server listed an X25519 key for '{owner}' that is not the pinned one: "
                               "refusing to seal the tenseal secret to it")
    ctx = make_context(cfg)
    public, secret = public_bytes(ctx), secret_bytes(ctx)
    sealed = {owner: sealing.seal(secret, m.public_key) for owner, m in sorted(roster.owners.items())}
    statement = json.dumps(
        {
            "purpose": PURPOSE,
            "run": run,
            "roster": roster_digest(roster),
            "context": context_id(public),
            "key_holder": keys.owner_id,
            "sealed": {o: hashlib.sha256(b).hexdigest() for o, b in sealed.items()},
        },
        sort_keys=True,
    ).encode()
    made = SetUp(public, statement, keys.sign(statement), sealed)
    _store(keys.state_dir, run, roster, made, secret, "generate")  # before any box leaves: the run is keyed once
    return made


def install(keys: identity.OwnerKeys, run: str, *, public: bytes, statement: bytes, signature: bytes,
            sealed: bytes) -> None:
    """Check the key holder's signed statement, open this owner's sealed box, store the context;
    the context this owner already holds for ``run`` again is a no-op, any other one is refused."""
    roster = keys.roster()
    claim = _checked_statement(roster, run, public, statement, signature)
    if hashlib.sha256(sealed).hexdigest() != claim["sealed"].get(keys.owner_id):
        raise PayloadError("this owner's sealed box is not the one the key holder signed: refused")
    held = _held_record(keys.state_dir, run)
    if held is not None:
        if held["context"] != claim["context"]:
            raise PayloadError(f"this owner already holds tenseal context {held['context'][:12]} for this run: "
                               "re-keying mid-run is refused (a new key set-up needs a new run / output_dir)")
        return
    secret = sealing.unseal(sealed, sealing.keypair(keys.state_dir)[0], "sealed tenseal secret")
    if not load_context(secret).is_private():
        raise PayloadError("the sealed tenseal context holds no secret key; ask the key holder to re-key")
    _store(keys.state_dir, run, roster, SetUp(public, statement, signature, {}), secret, "install")


def _checked_statement(roster: identity.Roster, run: str, public: bytes, statement: bytes, signature: bytes) -> dict:
    """The key holder's statement, if signed by the pinned key holder for this run, roster and context."""
    identity.verify(roster.member(roster.key_holder, "key holder").verify_key, statement, signature,
                    f"the tenseal context (key holder {roster.key_holder})")
    try:
        claim = json.loads(statement)
        assert claim["purpose"] == PURPOSE and claim["key_holder"] == roster.key_holder
        assert isinstance(claim["sealed"], dict) and isinstance(claim["run"], str)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise PayloadError("the tenseal set-up statement is malformed or of another version: refused") from exc
    if claim["run"] != run:
        raise PayloadError(f"the tenseal context was made for run {claim['run']!r}, not this run {run!r}: a replayed "
                           "set-up; refused")
    if claim.get("roster") != roster_digest(roster):
        raise PayloadError("the tenseal context was keyed for another roster than the one this owner pins (another "
                           "federation): refused")
    if claim.get("context") != context_id(public):
        raise PayloadError("the public tenseal context is not the one the key holder signed: refused")
    return claim


def _store(state_dir: str | Path, run: str, roster: identity.Roster, made: SetUp, secret: bytes, event: str) -> None:
    """Write the run's context; ``setup.json`` last (the commit point: a crash before it leaves the run unkeyed)."""
    folder = run_dir(state_dir, run)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    cid = context_id(made.public)
    sealing.write_private(folder / SECRET_FILE, secret)
    atomic_write_bytes(folder / PUBLIC_FILE, made.public)
    record = {"run": run, "context": cid, "roster": roster_digest(roster), "statement": made.statement.hex(),
              "signature": made.signature.hex()}
    atomic_write_bytes(folder / SETUP_FILE, json.dumps(record, sort_keys=True).encode())
    append_jsonl(sealing.keys_dir(state_dir) / KEYINGS_FILE, {"event": event, "run": run, "context": cid})


def _held_record(state_dir: str | Path, run: str) -> dict | None:
    path = run_dir(state_dir, run) / SETUP_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        assert record["run"] == run and isinstance(record["context"], str)
    except (ValueError, KeyError, TypeError, AssertionError) as exc:
        raise UserError(f"{path} is unreadable or names another run ({exc}); restore it from a backup (this run cannot "
                        "go on without it; a new run re-keys)") from exc
    return record


def held_context(keys: identity.OwnerKeys, run: str) -> tuple[bytes, bytes]:
    """(public, secret) context bytes this owner holds for ``run``; refused for a run it never keyed,
    after its pinned roster changed, or if the files do not match the record or are not private."""
    record = _held_record(keys.state_dir, run)
    folder = run_dir(keys.state_dir, run)
    if record is None:
        raise UserError(f"this owner holds no tenseal context for this run ({run}): it missed the key set-up, or is "
                        "asked to use a key of another run; start a new run to key the federation")
    if record.get("roster") != roster_digest(keys.roster()):
        raise PayloadError("the pinned roster changed since this run was keyed: its tenseal context belongs to the old "
                           "federation; refused (start a new run to key the new roster)")
    try:
        public, secret = (folder / PUBLIC_FILE).read_bytes(), (folder / SECRET_FILE).read_bytes()
        mode = stat.S_IMODE(os.stat(folder / SECRET_FILE).st_mode)
    except FileNotFoundError as exc:
        raise UserError(f"{exc.filename} is missing: restore it from a backup (a new run re-keys)") from exc
    if mode & 0o077:
        raise UserError(f"{folder / SECRET_FILE} is readable by others (mode {mode:o}): chmod 600 it")
    if context_id(public) != record["context"]:
        raise UserError(f"{folder / PUBLIC_FILE} is not the context {folder / SETUP_FILE} names: restore it from a "
                        "backup (a new run re-keys)")
    return public, secret


def rejoin(keys: identity.OwnerKeys, run: str) -> dict[str, bytes]:
    """What this owner tells a (restarted) coordinator of the context it holds for ``run``: {} if none;
    else the context id, and, from the key holder, the public context and its signed statement."""
    record = _held_record(keys.state_dir, run)
    if record is None:
        return {}
    told = {"context": record["context"].encode()}
    if keys.roster().key_holder == keys.owner_id:
        public, _ = held_context(keys, run)
        told.update(public=public, statement=bytes.fromhex(record["statement"]),
                    signature=bytes.fromhex(record["signature"]))
    return told


def check_rejoin(public: bytes, statement: bytes, signature: bytes, verify_key: bytes) -> tuple[str, str]:
    """Server, on resume: (run, context id) the key holder's held set-up names, if signed by ``verify_key``
    (the key holder's announced key) for this public context (the server's own check; owners never
    take a context from the server)."""
    identity.verify(verify_key, statement, signature, "the key holder's held tenseal set-up")
    try:
        claim = json.loads(statement)
        run, cid = str(claim["run"]), str(claim["context"])
    except (ValueError, KeyError, TypeError) as exc:
        raise PayloadError("the key holder's held tenseal set-up statement is malformed") from exc
    if cid != context_id(public):
        raise PayloadError("the key holder's public tenseal context is not the one its statement names")
    return run, cid


def keyings(state_dir: str | Path) -> list[dict]:
    """Every context this owner made or installed, oldest first."""
    return read_jsonl(sealing.keys_dir(state_dir) / KEYINGS_FILE)


def run_of(statement: bytes) -> str:
    """The run a set-up statement names (the server's copy: it checks signatures of this run)."""
    try:
        return str(json.loads(statement)["run"])
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError("the key holder's set-up statement names no run; the key set-up failed") from exc
