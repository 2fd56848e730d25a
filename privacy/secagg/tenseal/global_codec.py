"""The encrypted global adapter as arrays: what the server holds, checkpoints and sends to owners.

``base-ct`` is Enc(global after round ``r``) as last re-encrypted by the owner the server asked,
with that owner's Ed25519 signature over (context id, ``r``, ciphertext) in ``base-ct-signature`` and
``{"round": r, "signer": owner id}`` in ``base-ct-claim`` (absent: the seed-derived initial adapter
every owner computes itself, round 0); ``pending-NNN`` are the round aggregates
Enc(sum n_k delta_k, sum n_k) not yet folded into it, in round order. The server cannot decrypt
any of them; owners do, after checking the signature (``TensealBackend.open_global``). The same
arrays go into Messages and into checkpoints, so the two cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

BASE = "base-ct"
BASE_SIGNATURE = "base-ct-signature"
BASE_CLAIM = "base-ct-claim"
PENDING = "pending-"


@dataclass(frozen=True)
class SignedBase:
    """Enc(global after ``round``), signed by owner ``signer`` (empty signature: unsigned)."""

    blob: bytes
    round: int
    signer: str
    signature: bytes


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
