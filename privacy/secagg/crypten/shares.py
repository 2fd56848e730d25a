"""Additive secret sharing of an adapter update for K aggregator parties (CrypTen's ring).

The owner's side of the ``crypten`` backend, free of Flower: encode the update in CrypTen's
fixed-point ring (Z_2^64, 16 fractional bits, rounding: see ``compat``), split it into
K additive shares (K-1 drawn uniformly from the OS CSPRNG, the last one completing the sum), and
seal each share to its party's X25519 key, bound to (round, client, party, layout, length) so a
share replayed into another round, routed to another party or cut short is refused.

Any K-1 shares are uniformly random and independent of the update: only all K together
determine it. The parties' side is ``mpc.py`` and ``party.py``.

The owner signs the round's sealed shares with its identity key (Ed25519, ``identity.py``): a
:class:`ShareBundle` binds run, round, layout, owner id and each sealed share's SHA-256, so party
p checks its own share against the signature without the others'. Parties open shares only from
owners on the operator-signed roster whose bundle verifies (a coordinator cannot make owners up).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

import numpy as np

from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity, sealing

BUNDLE = "bundle"  # the blob holding an owner's signed ShareBundle, next to its "share.P" blobs
BUNDLE_TAG = b"fedveil/crypten-bundle/v1"
PRECISION_BITS = 16
SCALE = 1 << PRECISION_BITS


@dataclass(frozen=True)
class ShareHeader:
    """What a sealed share is bound to; the party checks every field before using it."""

    round: int
    client: str  # the owner's id (the on-the-wire spelling stays "client")
    party: int
    layout_digest: str
    length: int

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


def encode_fixed(values: np.ndarray) -> np.ndarray:
    """Real values -> int64 ring elements with 16 fractional bits, rounded to nearest."""
    scaled = np.rint(np.asarray(values, np.float64) * SCALE)
    if np.abs(scaled).max(initial=0) >= 2.0**62:
        raise PayloadError("update values too large for the fixed-point ring (|x| >= 2^46); clip the update")
    return scaled.astype(np.int64)


def decode_fixed(ring: np.ndarray) -> np.ndarray:
    """int64 ring elements -> reals (exact floor division, as the patched CrypTen decoder)."""
    ring = np.asarray(ring, np.int64)
    whole = np.floor_divide(ring, SCALE)
    return whole.astype(np.float64) + (ring - whole * SCALE).astype(np.float64) / SCALE


def split(ring: np.ndarray, parties: int) -> list[np.ndarray]:
    """K additive shares of ``ring`` modulo 2^64 (int64 wrap-around)."""
    if parties < 2:
        raise PayloadError("secret sharing needs at least 2 parties")
    ring = np.asarray(ring, np.int64)
    shares = [np.frombuffer(os.urandom(8 * ring.size), dtype=np.int64).reshape(ring.shape).copy()
              for _ in range(parties - 1)]
    with np.errstate(over="ignore"):
        last = ring.copy()
        for s in shares:
            last -= s
    return [*shares, last]


def reconstruct(shares: list[np.ndarray]) -> np.ndarray:
    with np.errstate(over="ignore"):
        total = np.zeros_like(np.asarray(shares[0], np.int64))
        for s in shares:
            total += np.asarray(s, np.int64)
    return total


def seal_share(share: np.ndarray, header: ShareHeader, party_public_key: bytes, count: float = 1.0) -> bytes:
    """Seal one share (and the owner's example count, which the parties see) to its party."""
    head = header.encode()
    body = np.array([count], np.float64).tobytes() + np.ascontiguousarray(share, np.int64).tobytes()
    return sealing.seal(len(head).to_bytes(4, "big") + head + body, party_public_key)


def open_share(sealed: bytes, party_private_key: bytes, expected: ShareHeader) -> tuple[float, np.ndarray]:
    """(count, share) inside ``sealed``, if it is for ``expected``; anything else is refused."""
    raw = sealing.unseal(sealed, party_private_key, f"share from {expected.client}", f"party {expected.party}'s")
    n = int.from_bytes(raw[:4], "big")
    try:
        header = ShareHeader(**json.loads(raw[4 : 4 + n]))
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"share from {expected.client} has a malformed header") from exc
    if header != expected:
        raise PayloadError(f"share header {header} does not match what party {expected.party} expects ({expected})")
    body = raw[4 + n + 8 :]
    count = float(np.frombuffer(raw[4 + n : 4 + n + 8], np.float64)[0]) if len(raw) >= 4 + n + 8 else -1.0
    if len(body) != 8 * expected.length:
        raise PayloadError(
            f"share from {expected.client} holds {len(body) // 8} values, the layout needs {expected.length}"
        )
    if not (np.isfinite(count) and count > 0):
        raise PayloadError(f"share from {expected.client} carries no positive example count")
    return count, np.frombuffer(body, dtype=np.int64).copy()



@dataclass(frozen=True)
class ShareBundle:
    """What an owner signs over one round's sealed shares (``digests[p]``: SHA-256 of party p's)."""

    run: str
    round: int
    layout_digest: str
    owner: str
    digests: tuple[bytes, ...]
    signature: bytes = b""

    def statement(self) -> bytes:
        return identity.digest(BUNDLE_TAG, self.run.encode(), str(self.round).encode(), self.layout_digest.encode(),
                               self.owner.encode(), *self.digests)

    def encode(self) -> bytes:
        return json.dumps({"run": self.run, "round": self.round, "layout_digest": self.layout_digest,
                           "owner": self.owner, "digests": [d.hex() for d in self.digests],
                           "signature": self.signature.hex()}, sort_keys=True).encode()

    @classmethod
    def decode(cls, blob: bytes) -> "ShareBundle":
        try:
            d = json.loads(blob)
            return cls(str(d["run"]), int(d["round"]), str(d["layout_digest"]), str(d["owner"]),
                       tuple(bytes.fromhex(h) for h in d["digests"]), bytes.fromhex(d["signature"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PayloadError("share bundle is malformed") from exc


def sign_bundle(sealed: list[bytes], run: str, server_round: int, layout_digest: str, owner: str, sign) -> bytes:
    """The encoded bundle over ``sealed`` (party order), signed with ``sign`` (the owner's ``OwnerKeys.sign``)."""
    unsigned = ShareBundle(run, server_round, layout_digest, owner, tuple(hashlib.sha256(b).digest() for b in sealed))
    return ShareBundle(**{**unsigned.__dict__, "signature": sign(unsigned.statement())}).encode()


class NotRostered(PayloadError):
    """The owner a share claims is not on the operator-signed roster."""


def check_bundle(blob: bytes, sealed: bytes, party: int, owner: str, server_round: int, layout_digest: str,
                 roster: dict[str, bytes]) -> None:
    """Nothing if ``sealed`` is party ``party``'s share of ``owner``'s signed bundle for this round
    and layout, and ``owner`` is on ``roster``; else :class:`NotRostered` or :class:`PayloadError`."""
    if owner not in roster:
        raise NotRostered(f"owner '{owner}' is not on the signed roster")
    bundle = ShareBundle.decode(blob)
    if (bundle.owner, bundle.round, bundle.layout_digest) != (owner, server_round, layout_digest):
        raise PayloadError(f"share bundle of '{bundle.owner}' for round {bundle.round} is presented as "
                           f"'{owner}' in round {server_round}")
    if party >= len(bundle.digests) or bundle.digests[party] != hashlib.sha256(sealed).digest():
        raise PayloadError(f"party {party}'s share is not the one '{owner}' signed")
    identity.verify(roster[owner], bundle.statement(), bundle.signature, f"share bundle of '{owner}'")
