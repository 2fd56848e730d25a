"""Additive secret sharing of an adapter update for K aggregator parties (CrypTen's ring).

The owner's side of the ``crypten`` backend, free of Flower: encode the update in CrypTen's
fixed-point ring (Z_2^64, 16 fractional bits, rounding: see ``compat``), split it into
K additive shares, and seal each share to its party's X25519 key, bound to (round, client,
party, layout, length) so a share replayed into another round, routed to another party or cut
short is refused.

Seed-compressed shares (``aggregation.shares=seeded``, the default; :func:`seal_shares`): K-1
parties each get a fresh 32-byte seed from the OS CSPRNG, sealed to that party; party p's share
is the ChaCha20 keystream of its seed (:func:`expand_seed`: nonce bound to the run, round, owner,
party, layout or purpose tag, and length, so one seed never yields the same share in another
context). The remaining party gets the full share ``x - sum_p PRG(seed_p) mod 2^64``; which
party that is rotates with the owner's index and the round (:func:`full_party`), so the parties'
load stays even. Each share is a uniformly random ring element (the full one masked by K-1
keystreams), and any K-1 of them are independent of the update, as before: at K=3 an owner
uploads 8 B per value in all (one share) instead of 24. ``shares=full`` sends K full shares
(K-1 uniform from the CSPRNG), the earlier layout. Which form a sealed share has is the owner's
choice, stated in its sealed header: the parties sum whatever K shares they open.

A seed is its party's share: whoever holds it learns that share (and nothing else). The
parties' side is ``mpc.py`` and ``party.py``.

The owner signs the round's sealed shares with its identity key (Ed25519, ``identity.py``): a
:class:`ShareBundle` binds run, round, layout, owner id, the owner's floor ``min_owners`` and each
sealed share's SHA-256, so party p checks its own share against the signature without the others'.
Parties open shares only from owners on the operator-signed roster whose bundle verifies (a
coordinator cannot make owners up), and reveal no sum of fewer owners than any summed owner's
signed floor (under ``dp=owner_level`` at least its t: the coordinator's request cannot lower it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, replace

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from fedveil.core.disk import OWNER_PREFIX
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import identity, sealing

BUNDLE = "bundle"  # the blob holding an owner's signed ShareBundle, next to its "share.P" blobs
BUNDLE_TAG = b"fedveil/crypten-bundle/v2"  # v2: the statement covers min_owners
PRG_TAG = b"fedveil/crypten-seed-prg/v1"
PRECISION_BITS = 16
SCALE = 1 << PRECISION_BITS
SEED_BYTES = 32  # a ChaCha20 key
RING_HEADROOM = 2.0**61  # what a checked sum of squares (or a weighted term) may reach in the ring
# ShareHeader.form: what a sealed share holds. Both spellings are 4 characters, so a header's length
# (and cost.py's price) does not depend on which party got the full share.
FULL, SEED = "full", "seed"
LAYOUTS = ("seeded", "full")  # aggregation.shares
TRUNCATION_SLACK = 2.0 ** (1 - PRECISION_BITS)  # CrypTen's truncation: each value off by at most 2 units of 2^-16
MAX_SIGNED_FLOOR = 2**31 - 1  # a bundle's min_owners beyond this is malformed (it travels as a float64 between parties)


@dataclass(frozen=True)
class ShareHeader:
    """What a sealed share is bound to; the party checks every field before using it."""

    round: int
    client: str  # the owner's id (the on-the-wire spelling stays "client")
    party: int
    layout_digest: str
    length: int
    form: str = FULL  # FULL: the int64 share itself; SEED: the 32-byte seed it expands from

    def encode(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()


def encode_fixed(values: np.ndarray) -> np.ndarray:
    """Real values -> int64 ring elements with 16 fractional bits, rounded to nearest."""
    scaled = np.rint(np.asarray(values, np.float64) * SCALE)
    if np.abs(scaled).max(initial=0) >= 2.0**62:
        raise PayloadError("update values too large for the fixed-point ring (|x| >= 2^46); clip the update")
    return scaled.astype(np.int64)


def _squares_fit(per_value: float, length: int) -> bool:
    """Whether ``sum_i x_i^2`` over ``length`` values each within ``per_value`` stays far from a ring wrap."""
    b = round(float(per_value) * SCALE)
    # per product before truncation (scale 2^32), and the sum after it (scale 2^16, +1 per rounding)
    return float(b) ** 2 < RING_HEADROOM and length * (float(b) ** 2 / SCALE + 1) < RING_HEADROOM


def norm_scale_bits(bound: float, length: int) -> int | None:
    """``k``: the parties check the norm of ``x 2^-k`` (0: of ``x``), the least ``k <= PRECISION_BITS``
    (``2^-k`` exact in the fixed point) whose squares cannot wrap; None if none can, or if the
    coordinate check itself could (``bound * 2^16 >= RING_HEADROOM``). A bound of ``2^14.5`` over
    16,384 values needs ``k = 1``; ``2^30`` needs 16. ``dp=owner_level``'s noised integers need
    the scaled check, as their noise makes the norm large."""
    if not float(bound) * SCALE < RING_HEADROOM:
        return None
    for k in range(PRECISION_BITS + 1):
        if _squares_fit(float(bound) if k == 0 else float(bound) * 2.0**-k + TRUNCATION_SLACK, length):
            return k
    return None


def scaled_norm_limit(bound: float, length: int, k: int) -> float:
    """The limit the parties compare ``sum_i (x_i 2^-k)^2`` with: ``bound^2`` for ``k = 0``; else the
    scaled bound plus the truncation's slack (``||e||_2 <= sqrt(length) 2^-15``), squared, plus one
    unit of ``2^-16`` per squared value's rounding. An update of norm ``<= bound`` always passes; one
    passes only if its norm is within ``bound + sqrt(length) 2^(k-15) + ...`` (1 integer unit at
    16,384 values and ``k = 8``)."""
    if k == 0:
        return float(bound) ** 2
    return (float(bound) * 2.0**-k + math.sqrt(length) * TRUNCATION_SLACK) ** 2 + length * 2.0**-PRECISION_BITS


def norm_check_fits(bound: float, length: int) -> bool:
    """Whether the parties can check ``length`` values against the L2 bound ``bound`` without a ring wrap."""
    return norm_scale_bits(bound, length) is not None


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


def full_party(owner: str, server_round: int, parties: int) -> int:
    """The party that gets ``owner``'s full share in ``server_round`` (the others get seeds): the
    owner's index plus the round, modulo K, so over a cohort ``client_0..client_N`` each party
    gets N/K full shares per round, and each owner's full share moves on every round. An id
    without an index (not ``client_K``) is placed by a hash of it."""
    suffix = owner[len(OWNER_PREFIX):] if owner.startswith(OWNER_PREFIX) else ""
    index = int(suffix) if suffix.isdigit() else int.from_bytes(hashlib.sha256(owner.encode()).digest()[:8], "big")
    return (index + int(server_round)) % parties


def expand_seed(seed: bytes, header: ShareHeader, run: str) -> np.ndarray:
    """The share a seed stands for: ``header.length`` ring elements, the ChaCha20 keystream of
    key ``seed`` read as little-endian int64. The nonce is a digest of ``run`` and the sealed
    header (round, owner, party, layout or purpose tag, length, form), with the block counter
    from 0: the owner and the party compute the same bytes, and a seed presented in any other
    context expands to an unrelated share."""
    if len(seed) != SEED_BYTES:
        raise PayloadError(f"a share seed is {SEED_BYTES} bytes, got {len(seed)}")
    nonce = bytes(4) + identity.digest(PRG_TAG, run.encode(), header.encode())[:12]  # 4 bytes: the block counter
    stream = Cipher(algorithms.ChaCha20(seed, nonce), mode=None).encryptor().update(bytes(8 * header.length))
    return np.frombuffer(stream, dtype="<i8").astype(np.int64)


def new_seed() -> bytes:
    """A fresh seed from the OS CSPRNG (never reused: a seed is its party's share)."""
    return os.urandom(SEED_BYTES)


def seal_shares(ring: np.ndarray, owner: str, server_round: int, layout: str, run: str, party_keys: list[bytes],
                count: float, shares: str = "seeded") -> list[bytes]:
    """``ring`` shared to the K parties of ``party_keys`` (sealed, in party order), bound to this
    round, owner, layout (or a pair's purpose tag) and, for seeds, the run the owner signs for.
    ``shares``: ``seeded`` (a seed to K-1 parties, the full share to :func:`full_party`) or
    ``full`` (a full share to each)."""
    if shares not in LAYOUTS:
        raise PayloadError(f"aggregation.shares must be one of {list(LAYOUTS)}, got {shares!r}")
    ring, parties = np.asarray(ring, np.int64).reshape(-1), len(party_keys)

    def header(p: int, form: str) -> ShareHeader:
        return ShareHeader(server_round, owner, p, layout, ring.size, form)

    if shares == "full":
        return [seal_share(s, header(p, FULL), key, count)
                for p, (s, key) in enumerate(zip(split(ring, parties), party_keys))]
    full = full_party(owner, server_round, parties)
    sealed: list[bytes] = [b""] * parties
    rest = ring.copy()
    for p, key in enumerate(party_keys):
        if p != full:
            seed = new_seed()
            with np.errstate(over="ignore"):
                rest -= expand_seed(seed, header(p, SEED), run)
            sealed[p] = _seal(header(p, SEED), count, seed, key)
    sealed[full] = seal_share(rest, header(full, FULL), party_keys[full], count)
    return sealed


def _seal(header: ShareHeader, count: float, body: bytes, party_public_key: bytes) -> bytes:
    head = header.encode()
    return sealing.seal(len(head).to_bytes(4, "big") + head + np.array([count], np.float64).tobytes() + body,
                        party_public_key)


def seal_share(share: np.ndarray, header: ShareHeader, party_public_key: bytes, count: float = 1.0) -> bytes:
    """Seal one full share (and the owner's example count, which the parties see) to its party."""
    return _seal(header, count, np.ascontiguousarray(share, np.int64).tobytes(), party_public_key)


def open_share(sealed: bytes, party_private_key: bytes, expected: ShareHeader,
               run: str = "") -> tuple[float, np.ndarray]:
    """(count, share) inside ``sealed``, if it is for ``expected`` (its form aside: a full share or
    a seed, the owner's choice); a seed is expanded for ``run`` (the run the owner's bundle
    signs). Anything else is refused."""
    raw = sealing.unseal(sealed, party_private_key, f"share from {expected.client}", f"party {expected.party}'s")
    n = int.from_bytes(raw[:4], "big")
    try:
        header = ShareHeader(**json.loads(raw[4 : 4 + n]))
    except (ValueError, TypeError) as exc:
        raise PayloadError(f"share from {expected.client} has a malformed header") from exc
    if header.form not in (FULL, SEED) or replace(header, form=expected.form) != expected:
        raise PayloadError(f"share header {header} does not match what party {expected.party} expects ({expected})")
    body = raw[4 + n + 8 :]
    count = float(np.frombuffer(raw[4 + n : 4 + n + 8], np.float64)[0]) if len(raw) >= 4 + n + 8 else -1.0
    if header.form == SEED and len(body) != SEED_BYTES:
        raise PayloadError(f"share seed from {expected.client} is {len(body)} bytes, not {SEED_BYTES}")
    if header.form == FULL and len(body) != 8 * expected.length:
        raise PayloadError(
            f"share from {expected.client} holds {len(body) // 8} values, the layout needs {expected.length}"
        )
    if not (np.isfinite(count) and count > 0):
        raise PayloadError(f"share from {expected.client} carries no positive example count")
    if header.form == SEED:
        return count, expand_seed(body, header, run)
    return count, np.frombuffer(body, dtype=np.int64).copy()



@dataclass(frozen=True)
class ShareBundle:
    """What an owner signs over one round's sealed shares (``digests[p]``: SHA-256 of party p's).

    ``min_owners``: the fewest owners whose sum this owner's shares may enter (its accepted
    ``aggregation.min_owners``; under ``dp=owner_level`` that is at least its t, which the owner
    checked). The parties' floor is never below it (``party.py``, step 6)."""

    run: str
    round: int
    layout_digest: str
    owner: str
    digests: tuple[bytes, ...]
    signature: bytes = b""
    min_owners: int = 0

    def statement(self) -> bytes:
        return identity.digest(BUNDLE_TAG, self.run.encode(), str(self.round).encode(), self.layout_digest.encode(),
                               self.owner.encode(), str(self.min_owners).encode(), *self.digests)

    def encode(self) -> bytes:
        return json.dumps({"run": self.run, "round": self.round, "layout_digest": self.layout_digest,
                           "owner": self.owner, "min_owners": self.min_owners,
                           "digests": [d.hex() for d in self.digests], "signature": self.signature.hex()},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, blob: bytes) -> "ShareBundle":
        try:
            d = json.loads(blob)
            floor = d["min_owners"]
            if isinstance(floor, bool) or not isinstance(floor, int) or not 0 <= floor <= MAX_SIGNED_FLOOR:
                raise ValueError(f"min_owners={floor!r}")
            return cls(str(d["run"]), int(d["round"]), str(d["layout_digest"]), str(d["owner"]),
                       tuple(bytes.fromhex(h) for h in d["digests"]), bytes.fromhex(d["signature"]), floor)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PayloadError("share bundle is malformed") from exc


def sign_bundle(sealed: list[bytes], run: str, server_round: int, layout_digest: str, owner: str, sign, *,
                min_owners: int) -> bytes:
    """The encoded bundle over ``sealed`` (party order), signed with ``sign`` (the owner's ``OwnerKeys.sign``);
    ``min_owners``: the owner's floor on the sum (:class:`ShareBundle`)."""
    unsigned = ShareBundle(run, server_round, layout_digest, owner, tuple(hashlib.sha256(b).digest() for b in sealed),
                           min_owners=int(min_owners))
    return ShareBundle(**{**unsigned.__dict__, "signature": sign(unsigned.statement())}).encode()


class NotRostered(PayloadError):
    """The owner a share claims is not on the operator-signed roster."""


def check_bundle(blob: bytes, sealed: bytes, party: int, owner: str, server_round: int, layout_digest: str,
                 roster: dict[str, bytes]) -> ShareBundle:
    """The bundle, if ``sealed`` is party ``party``'s share of ``owner``'s signed bundle for this
    round and layout, and ``owner`` is on ``roster``; else :class:`NotRostered` or
    :class:`PayloadError`. Its run is the one the owner's seeds expand for."""
    if owner not in roster:
        raise NotRostered(f"owner '{owner}' is not on the signed roster")
    bundle = ShareBundle.decode(blob)
    if (bundle.owner, bundle.round, bundle.layout_digest) != (owner, server_round, layout_digest):
        raise PayloadError(f"share bundle of '{bundle.owner}' for round {bundle.round} is presented as "
                           f"'{owner}' in round {server_round}")
    if party >= len(bundle.digests) or bundle.digests[party] != hashlib.sha256(sealed).digest():
        raise PayloadError(f"party {party}'s share is not the one '{owner}' signed")
    identity.verify(roster[owner], bundle.statement(), bundle.signature, f"share bundle of '{owner}'")
    return bundle
