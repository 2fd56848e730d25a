"""Signed results: which federation made a final adapter, and a check anyone can run.

At the end of a run each owner signs, with its Ed25519 identity key (``secagg/identity.py``: the
key the pinned roster names), one *statement*: the digest of the final adapter's tensors and of its
canonical config (local paths left out: they differ between hosts), the run id, the digest of the
roster it pins and the rounds it trained. The coordinator signs its round chain's head as its own
claim (owners never see the chain, so they cannot check it; both statements say so). A verifier
needs the adapter folder, the owners' bundles and the roster: ``fedveil verify-adapter``.

Why not the OpenSSF ``model-signing`` package: its key signer is ECDSA only (P-256/384/521) while
the roster every owner and verifier already pins holds Ed25519 keys (the SuperNodes' P-384 keys are
registered with the SuperLink, not pinned by owners, so a verifier could not tie one to an owner);
it signs a manifest of every file in a folder (``adapter_config.json`` holds a local path, so the
owners' digests would differ) and carries no run, roster or rounds; and it would add sigstore, tuf
and 13 other packages to the owners' stack. So a small documented format on PyNaCl instead.

Bundle (JSON, one file per signer: ``<run dir>/signatures/<owner id>.json`` beside the server's
``final_adapter/``, and under tenseal ``<owner state dir>/final_adapter/signatures/<owner id>.json``)::

    {"statement": {"type": "fedveil/adapter-statement/v1", "owner": "client_0", "run": "...",
                   "roster_digest": "<64 hex>", "adapter": {"tensors": "<64 hex>", "config": "<64 hex>"},
                   "after_round": 2, "rounds_trained": [1, 2],
                   "round_chain": "the coordinator's claim; not checked by this owner"},
     "verify_key": "<64 hex>", "signature": "<128 hex>"}

The signature is Ed25519 over ``identity.digest(type, canonical JSON of the statement)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from nacl.signing import SigningKey

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import sealing
from fedveil.privacy.secagg.identity import (OwnerKeys, digest, load_roster, load_signed_roster, pinned_roster_key,
                                             signing_key, verify)

STATEMENT_TYPE = "fedveil/adapter-statement/v1"
CLAIM_TYPE = "fedveil/coordinator-claim/v1"
ADAPTER_FOLDER = "final_adapter"  # where a run's final adapter is written (the server's run dir, or an owner's)
SIGNATURES_DIR = "signatures"  # inside the adapter folder or beside it (verify-adapter --signatures: elsewhere)
COORDINATOR = "coordinator"  # the coordinator's claim: signatures/coordinator.json
COORDINATOR_KEY_FILE = "coordinator_ed25519.key"  # the coordinator's own, on no roster
WEIGHTS_FILE = "adapter_model.safetensors"
CONFIG_FILE = "adapter_config.json"
# PEFT writes these per host (a local path) or per save (inference_mode is flipped on save): not the adapter's
LOCAL_CONFIG_KEYS = frozenset({"base_model_name_or_path", "revision", "inference_mode"})
OWNER_NOTE = "the coordinator's claim; not checked by this owner"
CLAIM_NOTE = "the coordinator's own claim: owners cannot check it, and its key is on no roster"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


# --- what is signed -------------------------------------------------------------------------------

def adapter_digest(folder: str | Path) -> dict[str, str]:
    """SHA-256 of a PEFT adapter folder's tensors (name, dtype, shape, bytes; in name order) and of
    its canonical config; :class:`UserError` if either file is missing or malformed."""
    folder = Path(folder)
    try:
        raw = (folder / WEIGHTS_FILE).read_bytes()
        (size,) = struct.unpack("<Q", raw[:8])  # safetensors: u64 header length, JSON header, data
        header = json.loads(raw[8:8 + size])
        data = raw[8 + size:]
        parts = [b"fedveil/adapter-tensors/v1"]
        for name in sorted(k for k in header if k != "__metadata__"):
            start, end = header[name]["data_offsets"]
            parts += [name.encode(), str(header[name]["dtype"]).encode(),
                      json.dumps(list(header[name]["shape"])).encode(), data[start:end]]
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, ValueError, KeyError, TypeError, struct.error) as exc:
        raise UserError(f"{folder} is not a PEFT adapter folder ({WEIGHTS_FILE} and {CONFIG_FILE}): {exc}") from exc
    return {"tensors": digest(*parts).hex(), "config": hashlib.sha256(canonical_config(config)).hexdigest()}


def canonical_config(config: Mapping[str, Any]) -> bytes:
    """The adapter config without what differs between hosts; lists of names sorted (PEFT writes its
    sets, e.g. ``target_modules``, in a process's hash order)."""
    def norm(value):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return sorted(value)
        return value

    kept = {k: norm(v) for k, v in config.items() if k not in LOCAL_CONFIG_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":")).encode()


def roster_keys_digest(owners: Mapping[str, bytes]) -> str:
    """Digest of a roster's owner ids and Ed25519 keys: the same for the pinned roster (``roster.json``)
    and the operator-signed one (``owner-roster.json``) that name the same keys. (Not tenseal's
    ``keys.roster_digest``, which also binds the X25519 keys and the key holder a context was made for.)"""
    body = json.dumps({o: bytes(k).hex() for o, k in sorted(owners.items())}, sort_keys=True)
    return digest(b"fedveil/roster/v1", body.encode()).hex()


def load_roster_keys(path: str | Path, roster_key: str | Path | None = None) -> dict[str, bytes]:
    """Owner id -> Ed25519 verify key from a pinned roster or an operator-signed roster file; with
    ``roster_key`` (the operator's verify key, hex or a file) the file must be the roster that key signed."""
    path = Path(path)
    if roster_key is not None:
        return load_signed_roster(path, pinned_roster_key(roster_key))
    try:
        data = json.loads(path.read_text())
        owners = data["owners"]
        if "signature" in data:  # owner-roster.json: id -> hex (its operator signature: load_signed_roster)
            return {str(o): bytes.fromhex(k) for o, k in owners.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"roster {path} cannot be read ({exc}); give the federation's roster.json or "
                        f"owner-roster.json") from exc
    return {o: m.verify_key for o, m in load_roster(path).owners.items()}


def _signed_bytes(statement: Mapping[str, Any]) -> bytes:
    return digest(str(statement.get("type", "")).encode(), json.dumps(statement, sort_keys=True).encode())


def _bundle(statement: dict, key) -> bytes:
    body = {"statement": statement, "verify_key": bytes(key.verify_key).hex(),
            "signature": key.sign(_signed_bytes(statement)).signature.hex()}
    return (json.dumps(body, sort_keys=True, indent=1) + "\n").encode()


# --- signing --------------------------------------------------------------------------------------

def sign_adapter(keys: OwnerKeys, adapter_dir: str | Path, run: str, rounds_trained: list[int],
                 after_round: int = 0) -> bytes:
    """This owner's bundle for the adapter in ``adapter_dir`` (the global it holds), under its pinned
    roster (:class:`UserError` if it pins none, or one without its keys). Every field is public or
    a function of the global the owner received: the bundle may leave through the release gate.
    ``after_round``: the round whose global this is (the evaluate's), so an earlier global signed
    when asked cannot pass for the final one."""
    owners = {o: m.verify_key for o, m in keys.roster().owners.items()}
    statement = {"type": STATEMENT_TYPE, "owner": keys.owner_id, "run": run,
                 "roster_digest": roster_keys_digest(owners), "adapter": adapter_digest(adapter_dir),
                 "after_round": int(after_round), "rounds_trained": sorted(int(r) for r in rounds_trained),
                 "round_chain": OWNER_NOTE}
    return _bundle(statement, signing_key(keys.state_dir))


def coordinator_key_file() -> Path:
    """The coordinator host's own Ed25519 key: ``$FEDVEIL_COORDINATOR_KEY``, else
    ``$XDG_CONFIG_HOME/fedveil/`` (``~/.config``). Kept out of the run directory: a run's outputs hold
    no key, and one key across runs makes the claims of one coordinator recognisable as such."""
    named = os.environ.get("FEDVEIL_COORDINATOR_KEY")
    if named:
        return Path(named)
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "fedveil" / COORDINATOR_KEY_FILE


def sign_chain_head(run: str, head: str | None, rounds: int, key_file: str | Path | None = None) -> bytes:
    """The coordinator's claim over its round chain's head, with its own key (:func:`coordinator_key_file`)."""
    path = Path(key_file) if key_file else coordinator_key_file()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        sealing.write_private(path, bytes(SigningKey.generate()))
    statement = {"type": CLAIM_TYPE, "run": run, "round_chain_head": head, "rounds": int(rounds), "note": CLAIM_NOTE}
    return _bundle(statement, SigningKey(path.read_bytes()))


def write_bundle(folder: str | Path, name: str, bundle: bytes) -> Path:
    """``<folder>/signatures/<name>.json``, atomically; a name that is not a plain id is refused."""
    if not _SAFE_NAME.fullmatch(name):
        raise PayloadError(f"signer name {name!r} is not a plain id: not written")
    target = Path(folder) / SIGNATURES_DIR / f"{name}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, bundle)
    return target


# --- verifying ------------------------------------------------------------------------------------

@dataclass
class Verdict:
    """What ``verify-adapter`` found: the owners whose statements hold, what fails (each named), the claim."""

    valid: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    claim: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


def read_bundle(raw: bytes) -> tuple[dict, bytes, bytes]:
    data = json.loads(raw)
    return dict(data["statement"]), bytes.fromhex(data["verify_key"]), bytes.fromhex(data["signature"])


def verify_adapter(adapter_dir: str | Path, roster: Mapping[str, bytes], bundles: Mapping[str, bytes],
                   min_owners: int | None = None, run: str | None = None) -> Verdict:
    """Check every owner bundle against the adapter in ``adapter_dir`` and the roster: signed by the
    key the roster names for its owner, for the same run (``run``; None: the one most statements
    name), under this roster, over this adapter. Passes when no bundle fails and every rostered
    owner signed (``min_owners``: at least that many owners that trained)."""
    verdict, expected = Verdict(), adapter_digest(adapter_dir)
    digest_of_roster = roster_keys_digest(roster)
    statements = {}
    for name, raw in sorted(bundles.items()):
        try:
            statement, key, signature = read_bundle(raw)
            verify(key, _signed_bytes(statement), signature, f"{name}'s statement")
        except (ValueError, KeyError, TypeError, PayloadError) as exc:
            verdict.failures.append(f"{name}: not a valid signed bundle ({exc})")
            continue
        if name == COORDINATOR or statement.get("type") == CLAIM_TYPE:
            verdict.claim = (f"coordinator claims round chain head {statement.get('round_chain_head')} after "
                             f"{statement.get('rounds')} rounds ({CLAIM_NOTE})")
            continue
        owner = str(statement.get("owner"))
        if statement.get("type") != STATEMENT_TYPE:
            verdict.failures.append(f"{name}: not an adapter statement (type {statement.get('type')!r})")
        elif owner not in roster or roster[owner] != key:
            verdict.failures.append(f"{name}: signed by key {key.hex()[:16]}..., which the roster does not name for "
                                    f"{owner!r}: a key not on the roster")
        else:
            statements[owner] = statement
    runs = [s.get("run") for s in statements.values()]
    run = run if run is not None else max(set(runs), key=runs.count, default=None)
    rounds = [s.get("after_round") for s in statements.values()]
    last = max(set(rounds), key=rounds.count, default=None)
    for owner, s in sorted(statements.items()):
        if s.get("run") != run:
            verdict.failures.append(f"{owner}: its statement is for another run ({s.get('run')!r}, not {run!r})")
        elif s.get("after_round") != last:
            verdict.failures.append(f"{owner}: signed the global after round {s.get('after_round')}, the others "
                                    f"after round {last}")
        elif s.get("roster_digest") != digest_of_roster:
            verdict.failures.append(f"{owner}: signed under another roster than the one given")
        elif s.get("adapter") != expected:
            what = "tensors" if (s.get("adapter") or {}).get("tensors") != expected["tensors"] else "config"
            verdict.failures.append(f"{owner}: signed another adapter: the {what} in {adapter_dir} differ from what "
                                    f"it signed (a changed byte, or another run's adapter)")
        else:
            verdict.valid.append(owner)
            if s.get("rounds_trained"):
                verdict.trained.append(owner)
    if min_owners is None:
        missing = sorted(set(roster) - set(verdict.valid))
        if missing and not verdict.failures:
            verdict.failures.append(f"no valid statement from rostered owner(s) {missing} (or pass --min-owners N)")
    elif len(verdict.trained) < min_owners:
        verdict.failures.append(f"{len(verdict.trained)} owners that trained signed this adapter; --min-owners "
                                f"{min_owners} asked")
    return verdict


def signatures_of(adapter_dir: str | Path) -> Path:
    """Where an adapter's bundles are: inside it (an owner's own), else beside it (the server's run dir)."""
    inside = Path(adapter_dir) / SIGNATURES_DIR
    return inside if inside.is_dir() else Path(adapter_dir).parent / SIGNATURES_DIR


def load_bundles(folder: str | Path) -> dict[str, bytes]:
    """Every ``*.json`` bundle in ``folder`` (signer name -> bytes); :class:`UserError` if there is none."""
    folder = Path(folder)
    found = {p.stem: p.read_bytes() for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    if not found:
        raise UserError(f"no signed bundles in {folder}: a run writes them into <run dir>/{SIGNATURES_DIR}/ (and "
                        f"an owner's into its final_adapter/{SIGNATURES_DIR}/); point --signatures at them")
    return found
