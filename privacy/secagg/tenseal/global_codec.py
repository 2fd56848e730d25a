"""The encrypted global adapter as arrays: what the server holds, checkpoints and sends to owners.

``base-ct`` is Enc(global after round ``r``) as last re-encrypted by the owner the server asked,
with that owner's Ed25519 signature over (run, context id, ``r``, ciphertext) in
``base-ct-signature`` and ``{"round": r, "signer": owner id}`` in ``base-ct-claim`` (absent: the
seed-derived initial adapter every owner computes itself, round 0); ``pending-NNN`` are the rounds
not yet folded into it, in round order, each a :class:`RoundUpdates`: every accepted owner's own
ciphertext Enc(n_k delta_k, n_k) with that owner's signature over (run, context id, round, owner,
ciphertext SHA-256). Owners check every signature and add the ciphertexts themselves, so the
server can neither forge, replay nor alter a round's sum (``TensealOwner.open_global``); it
cannot decrypt any of it. The same arrays go into Messages and into checkpoints, so the two
cannot drift apart. :class:`EncryptedGlobal` is the server's holder of them (``BackendSpec.held_global``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from fedveil.core import wire
from fedveil.core.disk import OWNERS_DIR
from fedveil.core.errors import UserError
from fedveil.core.io import FramingError, pack, unpack
from fedveil.core.payload import PayloadError, Protected

BASE = "base-ct"
BASE_SIGNATURE = "base-ct-signature"
BASE_CLAIM = "base-ct-claim"
PENDING = "pending-"
ROUND_UPDATES = "round-updates"  # blob of a combined payload: a RoundUpdates


@dataclass(frozen=True)
class SignedBase:
    """Enc(global after ``round``), signed by owner ``signer`` (empty signature: unsigned)."""

    blob: bytes
    round: int
    signer: str
    signature: bytes


@dataclass(frozen=True)
class RoundUpdates:
    """One round's accepted updates as their owners signed them: owner id -> (ciphertext, signature)."""

    round: int
    signed: dict[str, tuple[bytes, bytes]]

    def encode(self) -> bytes:
        owners = sorted(self.signed)
        head = json.dumps({"round": self.round, "owners": owners}).encode()
        return pack([head, *(part for o in owners for part in self.signed[o])])

    @classmethod
    def decode(cls, blob: bytes) -> "RoundUpdates":
        try:
            head, *parts = unpack(blob)
            claim = json.loads(head)
            owners, at = [str(o) for o in claim["owners"]], int(claim["round"])
        except (FramingError, ValueError, KeyError, TypeError) as exc:
            raise PayloadError(f"a pending round of the encrypted global is unreadable ({exc}): refused") from exc
        if len(parts) != 2 * len(owners) or len(set(owners)) != len(owners) or not owners:
            raise PayloadError(f"pending round {at} lists {len(owners)} owner(s) (or one twice) but holds "
                               f"{len(parts)} parts: malformed; refused")
        return cls(at, {o: (parts[2 * i], parts[2 * i + 1]) for i, o in enumerate(owners)})


def _bytes(b: bytes) -> np.ndarray:
    return np.frombuffer(b, np.uint8).copy()


def to_arrays(base: SignedBase | None, pending: list[bytes]) -> dict[str, np.ndarray]:
    arrays = {}
    if base is not None:
        arrays = {BASE: _bytes(base.blob), BASE_SIGNATURE: _bytes(base.signature),
                  BASE_CLAIM: _bytes(json.dumps({"round": base.round, "signer": base.signer}).encode())}
    arrays.update({f"{PENDING}{i:03d}": _bytes(b) for i, b in enumerate(pending)})
    return arrays


def from_arrays(arrays: dict[str, np.ndarray]) -> tuple[SignedBase | None, list[bytes]]:
    base = None
    if BASE in arrays:
        raw = {k: np.asarray(arrays[k]).tobytes() for k in (BASE, BASE_SIGNATURE, BASE_CLAIM) if k in arrays}
        try:
            claim = json.loads(raw.get(BASE_CLAIM, b"{}"))
            at, signer = int(claim.get("round", -1)), str(claim.get("signer", ""))
        except (ValueError, TypeError, AttributeError):
            at, signer = -1, ""
        base = SignedBase(raw[BASE], at, signer, raw.get(BASE_SIGNATURE, b""))
    pending = [np.asarray(arrays[k]).tobytes() for k in sorted(k for k in arrays if k.startswith(PENDING))]
    return base, pending


class EncryptedGlobal:
    """The server's holder of the encrypted global (``tenseal``): ciphertexts only. Enc(global) as
    last re-encrypted and signed by the owner the server asked (adopted only if its signature
    checks out), and each round's signed owner updates not yet folded into it. Owners compute the
    global; the server cannot, and never writes a plaintext adapter: each owner writes the final
    adapter into its own state directory."""

    def __init__(self, base: SignedBase | None = None, pending: list[bytes] | None = None,
                 check: Callable[[SignedBase], None] | None = None) -> None:
        """``check`` raises :class:`PayloadError` for a re-encrypted global whose signature does not
        check out (the server backend's ``check_global``); None: adopt unchecked (owners still check)."""
        self.base, self.pending, self.check = base, list(pending or []), check
        self.asked: tuple[str, int] | None = None  # (owner, round) of the last handover
        # owner -> the round of the global it last opened, as its successful replies say (a resumed holder
        # knows none: it sends every owner the base)
        self.kept: dict[str, int] = {}
        self._version, self._round_forms, self._served = None, [], {}  # arrays_for's, per base and pending rounds

    def arrays(self) -> dict[str, np.ndarray]:
        return to_arrays(self.base, self.pending)

    def arrays_for(self, owner: str) -> dict[str, np.ndarray] | None:
        """What ``owner`` is sent where it needs less than :meth:`arrays` (None: all of it): an owner that
        opened the global after a round ``k`` this holder reaches from its base keeps that global
        (``tenseal/kept.py``), so it gets the pending rounds after ``k`` alone, no signed base. The owner
        reads its own kept copy; a wrong ``k`` here makes it refuse, never open another chain. Owners whose
        needs are equal (the same ``k``, the same role in each round) are given the same arrays (one object:
        the server sends one global record to each of them)."""
        k, at = self.kept.get(owner), self.base.round if self.base is not None else 0
        whole = k is None or not at <= k <= at + len(self.pending) or (self.base is None and k == 0)
        start = 0 if whole else k - at
        forms = self._forms()[start:]
        roles = tuple(f.role(owner) for f in forms)
        if whole and all(r == "outside" for r in roles):
            return None
        key = (whole, start, roles)
        if key not in self._served:
            self._served[key] = to_arrays(self.base if whole else None, [f.for_owner(owner) for f in forms])
        return self._served[key]

    def _forms(self) -> list:
        """Each pending round's :class:`committee_round.RoundForms`, parsed again only when the base or a pending
        round changed (:func:`committee_round.settle` replaces the last in place), with the arrays served."""
        from fedveil.privacy.secagg.tenseal import committee_round  # lazy: it imports this module (and the backend)

        version = (id(self.base), tuple(id(b) for b in self.pending))
        if self._version != version:
            self._version, self._served = version, {}
            self._round_forms = [committee_round.RoundForms(b) for b in self.pending]
        return self._round_forms

    def opened(self, after_round: int, replied: dict[str, bool]) -> None:
        """Owners sent the global after ``after_round``: those that replied without error (True) opened it and
        keep it; any other (False: an error, silence) may keep something else, so it gets the base next time."""
        for owner, ok in replied.items():
            if ok:
                self.kept[owner] = after_round
            else:
                self.kept.pop(owner, None)

    def apply(self, outcome) -> None:
        """Keep a round's signed updates (``outcome``: the server's ``TrainOutcome``)."""
        if outcome.combined is not None and outcome.accepted and ROUND_UPDATES in outcome.combined.blobs:
            self.pending.append(outcome.combined.blobs[ROUND_UPDATES])

    def handover(self, server_round: int, accepted, owners: list[str], last: bool) -> dict[str, Any]:
        """One owner (the smallest id of those whose updates round ``server_round`` took, else of those
        keyed) re-encrypts the new global for the server (``TensealOwner.after_evaluate``); in the
        last round every owner writes its final adapter (``TensealOwner.writes_final_adapter``)."""
        asked = min(accepted or owners or [""])
        self.asked = (asked, server_round)
        return {wire.REENCRYPT_BY: asked, wire.FINAL_ADAPTER: last}

    def adopt(self, evaluated: dict[str, Protected], asked: str | None = None,
              after_round: int | None = None) -> Optional[str]:
        """Adopt the re-encrypted global of the owner ``asked`` (default: the one the last
        :meth:`handover` asked, for its round; no one else's) if its signature, for this round,
        checks out; the rounds it folds in are then settled. Returns why a global the asked owner
        sent was refused (None: adopted, or none sent). Owners check it again."""
        if asked is None and after_round is None and self.asked is not None:
            asked, after_round = self.asked
        payload = evaluated.get(asked) if asked else None
        blob = payload.blobs.get(wire.ENCRYPTED_GLOBAL) if payload else None
        signature = payload.blobs.get(wire.GLOBAL_SIGNATURE) if payload else None
        if not (isinstance(blob, bytes) and blob and isinstance(signature, bytes) and signature):
            return None
        base = SignedBase(blob, int(after_round or 0), asked, signature)
        try:
            if self.check is not None:
                self.check(base)
        except PayloadError as exc:
            return f"re-encrypted global from {asked} not adopted: {exc}"
        self.base, self.pending = base, []
        return None

    def final_adapter(self, out: Path, save: Callable[[np.ndarray, Path], None]) -> str:
        """Not the server's to write (it holds no plaintext): where the owners wrote theirs."""
        return f"written by each data owner into its state directory ({OWNERS_DIR}/<id>/final_adapter/)"

    def restored(self, arrays: dict[str, np.ndarray]) -> "EncryptedGlobal":
        """The checkpointed ciphertexts, if their signed base checks out under the federation's
        context and run (owners check everything again before they decrypt)."""
        base, pending = from_arrays(arrays)
        if base is not None and self.check is not None:
            try:
                self.check(base)
            except PayloadError as exc:
                raise UserError(f"the checkpoint's encrypted global does not belong to the context the owners hold "
                                f"({exc}); resume the run it came from, or start a new run directory") from exc
        return EncryptedGlobal(base, pending, check=self.check)
