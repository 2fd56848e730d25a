"""Additive secret sharing of an adapter update for K aggregator parties (CrypTen's ring).

The owner's side of the ``crypten`` backend, free of Flower: encode the update in CrypTen's
fixed-point ring (Z_2^64, 16 fractional bits, rounding: see ``compat``), split it into
K additive shares (K-1 drawn uniformly from the OS CSPRNG, the last one completing the sum), and
seal each share to its party's X25519 key, bound to (round, client, party, layout, length) so a
share replayed into another round, routed to another party or cut short is refused.

Any K-1 shares are uniformly random and independent of the update: only all K together
determine it. The parties' side is ``mpc.py`` and ``party.py``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import sealing

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
        raise PayloadError(f"share from {expected.client} holds {len(body) // 8} values, the layout needs {expected.length}")
    if not (np.isfinite(count) and count > 0):
        raise PayloadError(f"share from {expected.client} carries no positive example count")
    return count, np.frombuffer(body, dtype=np.int64).copy()

