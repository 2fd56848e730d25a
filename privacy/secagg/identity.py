"""Owners' long-term identities and the pinned roster: who may key the federation and sign a global.

"Sign" in fedveil means Ed25519 (PyNaCl). Each owner keeps one signing key in its state
directory, ``<state_dir>/keys/owner_ed25519.key`` (a 32-byte seed, created mode 0600), next to
its X25519 key (``sealing.keypair``). The *roster* is the set of owners, each with its Ed25519
verify key and X25519 public key, plus the designated key holder; every owner pins the same
roster file, out of band, before a federation keys itself. The coordinator never supplies keys:
it only relays messages that these keys sign or open.

Roster file (JSON, ``<state_dir>/roster.json`` unless the node config names ``roster='path'``)::

    {"version": 1, "key_holder": "client_0",
     "owners": {"client_0": {"ed25519": "<64 hex>", "x25519": "<64 hex>"}, ...}}

Simulation: the runner (``server/prepare.py``), which plays every owner, makes each simulated
owner's keys and writes one roster into each state directory, as a deployment would distribute it.

The *signed roster* (crypten) is the operator's list of owners, owner id -> Ed25519 verify key,
signed with the operator's roster key (Ed25519; its private half stays with the operator). The
aggregator parties pin the roster key and open shares only from owners the signed roster names,
with a bundle signature by that owner's key (``crypten/shares.py``). File (JSON)::

    {"version": 1, "owners": {"client_0": "<64 hex>", ...}, "signature": "<128 hex>"}
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import BadSignatureError, ValueError as NaclValueError
from nacl.signing import SigningKey, VerifyKey

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import sealing

PARTY_KEYS_FILE = "party-keys.json"  # crypten: the aggregator parties' X25519 keys an owner trusts
ROSTER_FILE = "roster.json"
SIGNING_KEY_FILE = "owner_ed25519.key"
SIGNED_ROSTER_FILE = "owner-roster.json"  # crypten: the operator-signed roster the parties load
ROSTER_KEY_FILE = "roster-operator.key"  # the operator's Ed25519 seed: never on a party or an owner
ROSTER_PUB_FILE = "roster-operator.pub"  # its verify key (hex): what parties pin
ROSTER_TAG = b"fedveil/owner-roster/v1"


def signing_key(state_dir: str | Path):
    """This owner's Ed25519 signing key (nacl ``SigningKey``), created once and kept."""
    path = sealing.keys_dir(state_dir) / SIGNING_KEY_FILE
    if not path.exists():
        sealing.write_private(path, bytes(SigningKey.generate()))
    raw = path.read_bytes()
    if len(raw) != 32:
        raise UserError(f"{path} is not a 32-byte Ed25519 key; restore it, or delete it and re-pin the roster")
    return SigningKey(raw)


def verify(verify_key: bytes, message: bytes, signature: bytes, what: str) -> None:
    """:class:`PayloadError` naming ``what`` unless ``signature`` is ``verify_key``'s over ``message``."""
    try:
        VerifyKey(verify_key).verify(message, signature)
    except (BadSignatureError, NaclValueError, TypeError, ValueError) as exc:
        raise PayloadError(f"{what} is not signed by the owner the pinned roster names: refused") from exc


@dataclass(frozen=True)
class Member:
    verify_key: bytes  # Ed25519
    public_key: bytes  # X25519


@dataclass(frozen=True)
class Roster:
    key_holder: str
    owners: dict[str, Member]

    def member(self, owner_id: str, what: str = "owner") -> Member:
        if owner_id not in self.owners:
            raise PayloadError(f"{what} '{owner_id}' is not in the pinned roster ({sorted(self.owners)}): refused")
        return self.owners[owner_id]

    def to_json(self) -> bytes:
        owners = {
            o: {"ed25519": m.verify_key.hex(), "x25519": m.public_key.hex()} for o, m in sorted(self.owners.items())
        }
        return (json.dumps({"version": 1, "key_holder": self.key_holder, "owners": owners}, indent=1) + "\n").encode()


def load_roster(path: str | Path) -> Roster:
    """The pinned roster; :class:`UserError` with the fix if it is missing or malformed."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no pinned roster at {path}: tenseal key set-up needs every owner's keys pinned out of band "
                        f"(write the federation's roster.json there, or set node config roster='/path/roster.json')")
    try:
        data = json.loads(path.read_text())
        owners = {
            str(o): Member(bytes.fromhex(m["ed25519"]), bytes.fromhex(m["x25519"])) for o, m in data["owners"].items()
        }
        roster = Roster(str(data["key_holder"]), owners)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(
            f"roster {path} is malformed ({exc}); it needs key_holder and owners: id -> ed25519, x25519 (hex)"
        ) from exc
    if any(len(m.verify_key) != 32 or len(m.public_key) != 32 for m in owners.values()):
        raise UserError(f"roster {path} has a key that is not 32 bytes; re-distribute the federation's roster")
    roster.member(roster.key_holder, "key holder")
    return roster


def write_roster(path: str | Path, roster: Roster) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(Path(path), roster.to_json())


@dataclass(frozen=True)
class OwnerKeys:
    """One owner's key material and pinned roster (files in its state directory)."""

    owner_id: str
    state_dir: str
    roster_path: str | None = None  # None: <state_dir>/roster.json
    party_keys_path: str | None = None  # crypten: the parties' keys it pins; None: <state_dir>/party-keys.json

    @property
    def roster_file(self) -> Path:
        return Path(self.roster_path) if self.roster_path else Path(self.state_dir) / ROSTER_FILE

    @property
    def party_keys_file(self) -> Path | None:
        """The pinned party keys: the named file (which must exist), else the state dir's where it exists."""
        if self.party_keys_path:
            return Path(self.party_keys_path)
        default = Path(self.state_dir) / PARTY_KEYS_FILE
        return default if default.is_file() else None

    def roster(self) -> Roster:
        """The pinned roster, checked to hold this owner with the keys it really has."""
        roster = load_roster(self.roster_file)
        me = roster.member(self.owner_id, "this owner")
        if me != self.member():
            raise UserError(f"this owner's keys in {Path(self.state_dir) / 'keys'} differ from its entry in the pinned "
                            f"roster {self.roster_file}: restore the keys or re-pin the roster")
        return roster

    def member(self) -> Member:
        return Member(bytes(signing_key(self.state_dir).verify_key), sealing.keypair(self.state_dir)[1])

    def sign(self, message: bytes) -> bytes:
        return signing_key(self.state_dir).sign(message).signature


def pin_roster(state_dirs: dict[str, str | Path], key_holder: str) -> Roster:
    """Simulation: make each owner's keys (if missing) and pin one roster in every state directory."""
    roster = Roster(key_holder, {o: OwnerKeys(o, str(d)).member() for o, d in state_dirs.items()})
    roster.member(key_holder, "aggregation.key_holder")
    first, *others = [Path(d) / ROSTER_FILE for d in state_dirs.values()]
    write_roster(first, roster)
    for path in others:  # one file, hard-linked: n copies of an n-owner roster would take O(n^2) disk
        path.parent.mkdir(parents=True, exist_ok=True)
        link = path.with_name(f".{ROSTER_FILE}.link")
        link.unlink(missing_ok=True)
        try:
            os.link(first, link)
        except OSError:  # a file system without hard links: a copy each
            write_roster(path, roster)
            continue
        os.replace(link, path)  # atomically, as write_roster would
    return roster


def digest(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed parts: what a signature covers, unambiguously."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.digest()


# --- the operator-signed roster (crypten's parties) ----------------------------------------------

def roster_signing_key(path: str | Path):
    """The operator's Ed25519 roster key (nacl ``SigningKey``) at ``path``, created once (mode 0600)."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sealing.write_private(path, bytes(SigningKey.generate()))
    raw = path.read_bytes()
    if len(raw) != 32:
        raise UserError(f"{path} is not a 32-byte Ed25519 roster key; restore it, or delete it and re-sign the roster")
    return SigningKey(raw)


def _roster_statement(owners: dict[str, bytes]) -> bytes:
    return digest(ROSTER_TAG, json.dumps({o: k.hex() for o, k in sorted(owners.items())}, sort_keys=True).encode())


def sign_roster(owners: dict[str, bytes], key) -> bytes:
    """The signed roster file's bytes: ``owners`` (id -> Ed25519 verify key) signed with the roster key."""
    if any(len(k) != 32 for k in owners.values()):
        raise UserError("every owner's Ed25519 verify key must be 32 bytes")
    body = {"version": 1, "owners": {o: k.hex() for o, k in sorted(owners.items())},
            "signature": key.sign(_roster_statement(owners)).signature.hex()}
    return (json.dumps(body, indent=1) + "\n").encode()


def pinned_roster_key(value: str | Path) -> bytes:
    """The pinned roster verify key: 64 hex characters, or a file holding them."""
    text = str(value).strip()
    if len(text) != 64 or not all(c in "0123456789abcdefABCDEF" for c in text):
        try:
            text = Path(text).read_text().strip()
        except OSError as exc:
            raise UserError(f"roster key {value} is neither 64 hex characters nor a readable file of them") from exc
    try:
        key = bytes.fromhex(text)
    except ValueError as exc:
        raise UserError(f"roster key {value} is not hex; pin the operator's roster-operator.pub") from exc
    if len(key) != 32:
        raise UserError(f"roster key {value} is not a 32-byte Ed25519 key; pin the operator's roster-operator.pub")
    return key


def load_signed_roster(path: str | Path, pinned_key: bytes) -> dict[str, bytes]:
    """Owner id -> Ed25519 verify key from the signed roster at ``path``, if the pinned key signed it.

    :class:`UserError` with the fix if the file is missing or malformed, or signed by another key
    (or changed since it was signed)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        owners = {str(o): bytes.fromhex(k) for o, k in data["owners"].items()}
        signature = bytes.fromhex(data["signature"])
    except OSError as exc:
        raise UserError(f"no signed roster at {path}: the operator signs it (deploy/keys.py roster) and "
                        f"gives it to every party") from exc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"signed roster {path} is malformed ({exc}); it needs owners: id -> ed25519 hex, "
                        f"and signature") from exc
    try:
        verify(pinned_key, _roster_statement(owners), signature, f"signed roster {path}")
    except PayloadError as exc:
        raise UserError(
            f"signed roster {path} is not signed by the pinned roster key {pinned_key.hex()[:16]}... "
            f"(or was changed since): refused; have the operator re-sign it (deploy/keys.py roster)"
        ) from exc
    if any(len(k) != 32 for k in owners.values()):
        raise UserError(f"signed roster {path} has a key that is not 32 bytes; have the operator re-sign it")
    return owners


def write_signed_roster(
    directory: str | Path, owners: dict[str, bytes], key_file: str | Path | None = None
) -> tuple[Path, bytes]:
    """Sign ``owners`` with the roster key (``key_file``, default ``directory/roster-operator.key``,
    made if missing); write ``directory/owner-roster.json`` and ``roster-operator.pub``. Returns
    (the roster's path, the roster verify key)."""
    directory = Path(directory)
    key = roster_signing_key(key_file or directory / ROSTER_KEY_FILE)
    atomic_write_bytes(directory / SIGNED_ROSTER_FILE, sign_roster(owners, key))
    atomic_write_bytes(directory / ROSTER_PUB_FILE, (bytes(key.verify_key).hex() + "\n").encode())
    return directory / SIGNED_ROSTER_FILE, bytes(key.verify_key)
