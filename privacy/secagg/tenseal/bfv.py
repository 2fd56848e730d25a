"""BFV encoding of ``tenseal`` (the default scheme): fixed-point digits, two per batched slot.

Why: CKKS holds N/2 values per ciphertext (~32 bytes per value at N=4096); BFV batching holds N
slots of integers mod a plain modulus ``t``, and with ``t`` of 46 bits each slot carries two
signed digits of radix ``R = isqrt(t)`` (~2^23): 2N values per ciphertext, ~8 bytes per value on
the same 128-bit parameter set (N=4096, moduli [60, 49]).

The encoding of one owner's update (exact to the step, stated):

- the owner clamps its weight ``w`` to ``[0, max_weight]`` and every delta value to
  ``[-value_bound, value_bound]`` (after ``train.update_clip_norm``'s L2 clip), then sends
  ``q_i = round(w * delta_i / step)``, with ``step = max_weight * value_bound / Q`` and
  ``Q = ((R - 1) // 2) // max_owners`` levels per owner: ``|q_i| <= Q``;
- the sum of up to ``max_owners`` owners has ``|sum q_i| <= max_owners * Q <= (R - 1) / 2``: no
  digit can overflow, so the decrypted sum is exact; each owner's rounding error is at most
  ``step / 2`` per value, so the mean is within ``owners * step / (2 * total weight)``;
- a digit of the decrypted sum beyond ``owners * Q`` (an owner that did not clamp) is refused.

The weight rides beside the ciphertexts, sealed (libsodium secret box) under a key derived from
the shared secret context: the server sees no count, owners (who share the secret key and can
decrypt every single update anyway) see each owner's. The global adapter an owner re-encrypts is
never summed, so it uses all of each digit, at a step of public values only (``global_bound / ((R -
1) // 2)``, ``config.TensealConfig.global_step``): a step derived from the global would tell the
server max|global| each round.

Security: ring degree N and the total coefficient modulus must be within the 128-bit bound of the
HomomorphicEncryption.org standard (``config.MAX_COEFF_BITS_128``, what SEAL enforces); the sum of
``max_owners`` fresh ciphertexts must stay within the noise budget: a fresh ciphertext leaves
``data prime bits - plain bits - 7`` bits (measured with SEAL's ``invariant_noise_budget``: 7 bits
at the defaults), and noise grows at most linearly with the owners added, so ``max_owners`` may be
at most ``2^(data bits - plain bits - FRESH_NOISE_BITS)`` with one bit to spare.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from fedveil.core.errors import UserError
from fedveil.core.io import pack
from fedveil.core.payload import PayloadError

FRESH_NOISE_BITS = 8  # SEAL BFV at N=4096: a fresh ciphertext's noise takes ~7 bits of the budget; one spare
MIN_LEVELS = 1 << 10  # fewer fixed-point levels per owner than this is refused as too coarse
HEADER = struct.Struct("<4scd")  # magic, kind (u: update, g: global, s: sum), step
MAGIC = b"BFV1"
COUNT_BOX = 24 + 16 + 8  # libsodium secret box: nonce + MAC + float64 weight


@lru_cache(maxsize=None)
def plain_modulus(n: int, bits: int) -> int:
    """SEAL's batching prime of ``bits`` bits (``t = 1 mod 2N``)."""
    from tenseal import sealapi  # lazy: SEAL loads only where tenseal is used; configs import us

    return int(sealapi.PlainModulus.Batching(n, bits).value())


# The 128-bit parameter sets tried for a cohort, cheapest first (N, coefficient moduli, the largest t tried):
# at N=4096 t stays within the measured 46 bits; N=8192 (twice the bytes per value) only where 4096 cannot hold
# the cohort, t below 60 bits (a 60-bit t would be one of the 60-bit moduli: SEAL refuses it).
PARAMETER_SETS = ((4096, (60, 49), 46), (8192, (60, 60, 60), 59))


def problem(n: int, coeff_bits: list[int], plain_bits: int, max_owners: int) -> str | None:
    """Why ``max_owners`` updates cannot be summed exactly on these parameters (the line's fix named), or None."""
    if not 20 <= plain_bits <= 60:
        return f"aggregation.plain_modulus_bits must be in [20, 60], got {plain_bits}"
    data_bits = sum(coeff_bits[:-1])
    headroom = data_bits - plain_bits - FRESH_NOISE_BITS
    if max_owners > 2 ** max(headroom, 0):
        return (f"aggregation.max_owners={max_owners}: the sum of that many BFV ciphertexts could exceed the noise "
                f"budget (at most {2 ** max(headroom, 0)} owners with plain_modulus_bits={plain_bits} and {data_bits} "
                "data modulus bits); lower aggregation.plain_modulus_bits (or set aggregation.plain_modulus_bits=null: "
                "chosen for the cohort)")
    levels = per_owner_levels(n, plain_bits, max_owners)
    if levels < MIN_LEVELS:
        return (f"aggregation.max_owners={max_owners} leaves {levels} fixed-point levels per owner (minimum "
                f"{MIN_LEVELS}): too coarse; raise aggregation.plain_modulus_bits (or set "
                "aggregation.plain_modulus_bits=null: chosen for the cohort)")
    return None


def check(n: int, coeff_bits: list[int], plain_bits: int, max_owners: int) -> None:
    """Refuse (one line naming the limit and the fix) parameters that could overflow or decrypt wrongly."""
    line = problem(n, coeff_bits, plain_bits, max_owners)
    if line:
        raise UserError(line)


def choose(max_owners: int, n: int | None = None, coeff_bits: list[int] | None = None) -> tuple[int, list[int], int]:
    """``(N, coefficient moduli, plain modulus bits)`` for a cohort of ``max_owners``: the cheapest 128-bit set
    (``PARAMETER_SETS``, or the user's N and moduli) with the largest ``t`` that sums the cohort exactly (the
    finest step). Refused, naming the limit, where none holds the cohort."""
    sets = [(ring, list(coeff), top) for ring, coeff, top in PARAMETER_SETS]
    if n is not None or coeff_bits is not None:  # the user's ring or moduli: t up to that ring's cap
        base = next((s for s in sets if n is None or s[0] == n), (n, [60, 49], 59))
        sets = [(base[0], list(coeff_bits or base[1]), base[2])]
    for ring, coeff, top in sets:
        top = min(top, sum(coeff[:-1]) - FRESH_NOISE_BITS)
        for bits in range(top, 19, -1):
            if problem(ring, coeff, bits, max_owners) is None:
                return ring, coeff, bits
    ring, coeff, top = sets[-1]
    limit = per_owner_levels(ring, top, 1) // MIN_LEVELS
    raise UserError(f"aggregation.max_owners={max_owners}: no 128-bit BFV parameter set sums that many updates exactly "
                    f"(at most {limit:,} owners, at N={ring} and coefficient moduli {coeff}); lower clients_per_round, "
                    "or set aggregation.scheme=ckks")


def radix(n: int, plain_bits: int) -> int:
    """Radix of the two digits of a slot: ``R^2 <= t``, so a slot's centred value never wraps."""
    return math.isqrt(plain_modulus(n, plain_bits))


def per_owner_levels(n: int, plain_bits: int, max_owners: int) -> int:
    """``Q``: the largest ``|q|`` an owner may send so that ``max_owners`` of them cannot overflow a digit."""
    return ((radix(n, plain_bits) - 1) // 2) // max_owners


def values_per_ciphertext(n: int) -> int:
    return 2 * n


def ciphertexts(size: int, n: int) -> list[int]:
    """Slots used by each ciphertext of a ``size``-value vector."""
    slots = -(-size // 2)
    return [min(n, slots - i) for i in range(0, slots, n)]


def quantize(values: np.ndarray, step: float, limit: int) -> np.ndarray:
    """``round(values / step)`` clamped to ``[-limit, limit]`` (int64); NaN or infinite values are refused."""
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        raise UserError(
            "the vector to encrypt holds NaN or infinite values (training diverged?): refusing to encode it"
        )
    return np.clip(np.rint(values / step), -limit, limit).astype(np.int64)


def pack_slots(q: np.ndarray, r: int) -> np.ndarray:
    """Two signed digits per slot: ``q[2i] + r * q[2i+1]`` (pads one zero to an even length)."""
    if q.size % 2:
        q = np.concatenate([q, [0]])
    return q[0::2] + r * q[1::2]


def unpack_slots(slots: np.ndarray, r: int, t: int, size: int) -> np.ndarray:
    """Digits of centred slot values (``slots`` as SEAL decodes them, any representative mod ``t``)."""
    s = (np.asarray(slots, np.int64) + t // 2) % t - t // 2
    low = (s + r // 2) % r - r // 2
    high = (s - low) // r
    out = np.empty(2 * s.size, np.int64)
    out[0::2], out[1::2] = low, high
    return out[:size]


def header(kind: bytes, step: float) -> bytes:
    return HEADER.pack(MAGIC, kind, step)


def read_header(raw: bytes) -> tuple[bytes, float]:
    try:
        magic, kind, step = HEADER.unpack(raw)
    except struct.error as exc:
        raise PayloadError("BFV payload header is unreadable: not built by protect()") from exc
    if magic != MAGIC or kind not in (b"u", b"g", b"s") or not (math.isfinite(step) and step > 0):
        raise PayloadError("BFV payload header is not fedveil's (magic, kind or step): refused")
    return kind, step


def count_key(secret: bytes) -> bytes:
    """The key owners seal their weights with: HKDF-SHA256 of the shared secret context."""
    from cryptography.hazmat.primitives import hashes  # lazy: ~0.4 s; configs import this module
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # lazy: ~0.4 s; configs import this module

    return HKDF(hashes.SHA256(), 32, salt=None, info=b"fedveil/tenseal-bfv-weight/v1").derive(secret)


def seal_weight(key: bytes, weight: float) -> bytes:
    return bytes(SecretBox(key).encrypt(struct.pack("<d", weight)))


def open_weight(key: bytes, box: bytes) -> float:
    try:
        (weight,) = struct.unpack("<d", SecretBox(key).decrypt(box))
    except (CryptoError, struct.error, ValueError) as exc:
        raise PayloadError("an owner's sealed weight does not open with the federation's key: refused") from exc
    if not (math.isfinite(weight) and weight >= 0):
        raise PayloadError(f"an owner's sealed weight is {weight}: refused")
    return weight


@dataclass(frozen=True)
class Parts:
    """A BFV payload's header and frames: ``kind`` (u, g, s), ``step``, how many ciphertexts, the sealed weights."""

    kind: bytes
    step: float
    ciphertexts: int
    boxes: list[bytes]


def encrypt(secret_ctx, values: np.ndarray, cfg, kind: bytes = b"u", weight_key: bytes | None = None,
            weight: float = 0.0) -> bytes:
    """BFV blob: header (kind, step), the ciphertexts of the packed digits, and (updates) the sealed weight.

    ``values``: an update's ``w * delta`` already clamped (``config.clamp``), or (``kind=b"g"``) the
    global adapter, which is never summed: the whole digit, at a step of public values only (never
    max|global|). ``cfg`` is the ``config.TensealConfig``."""
    import tenseal as ts  # lazy: SEAL loads only where tenseal is used; configs import us

    if secret_ctx is None:
        raise UserError("this party holds no BFV secret context and cannot encrypt for the federation")
    n = cfg.poly_modulus_degree
    r = radix(n, cfg.plain_modulus_bits)
    values = np.asarray(values, np.float64)
    if kind == b"u":
        step, limit = cfg.step, cfg.levels
    else:
        limit, step = (r - 1) // 2, cfg.global_step
        if values.size and float(np.abs(values).max()) > cfg.global_limit:
            raise UserError(f"the global adapter holds values beyond aggregation.global_bound="
                            f"{cfg.global_limit:g}, the public bound its encoding is made for: raise "
                            "aggregation.global_bound")
    slots = pack_slots(quantize(values, step, limit), r)
    parts = [header(kind, step)]
    parts += [ts.bfv_vector(secret_ctx, slots[i : i + n].tolist()).serialize() for i in range(0, slots.size, n)]
    if kind == b"u":
        parts.append(seal_weight(weight_key, weight))
    return pack(parts)


def read_parts(chunks: list[bytes], size: int | None, cfg) -> Parts:
    """The header and frames of a BFV payload's ``chunks``, checked against the layout and the step."""
    if size is None:
        raise UserError("a BFV backend needs the adapter size (the layout) to read ciphertexts")
    if not chunks:
        raise PayloadError("BFV payload is empty: not built by protect()")
    kind, step = read_header(chunks[0])
    count = len(ciphertexts(size, cfg.poly_modulus_degree))
    boxes = chunks[1 + count :]
    if len(chunks) < 1 + count or (kind == b"g") != (not boxes) or (kind == b"u" and len(boxes) != 1)\
            or any(len(b) != COUNT_BOX for b in boxes):
        raise PayloadError(f"BFV payload holds {len(chunks) - 1} parts, not {count} ciphertexts and its sealed "
                           "weights: not built by protect()")
    if kind != b"g" and step != cfg.step:
        raise PayloadError(f"ciphertext encodes at step {step:.6g}, the federation's is {cfg.step:.6g} "
                           "(max_weight, value_bound, max_owners or plain modulus differ): refused")
    return Parts(kind, step, count, boxes)


def decode(vecs: list, parts: Parts, cfg, size: int | None, weight_key: bytes) -> tuple[np.ndarray, float]:
    """``(weighted sum, total weight)`` of decrypted BFV vectors; a sum beyond what owners within the
    bounds can send (an owner that did not clamp) is refused."""
    n, bits = cfg.poly_modulus_degree, cfg.plain_modulus_bits
    slots = np.concatenate([np.asarray(v.decrypt(), np.int64) for v in vecs])
    digits = unpack_slots(slots, radix(n, bits), plain_modulus(n, bits), size)
    if parts.kind == b"g":
        return digits * parts.step, 1.0
    weights = [open_weight(weight_key, b) for b in parts.boxes]
    limit = len(weights) * cfg.levels
    if any(w > cfg.weight_bound for w in weights) or (digits.size and int(np.abs(digits).max()) > limit):
        raise PayloadError(f"the decrypted sum of {len(weights)} update(s) is beyond what owners within the bound "
                           f"(value_bound {cfg.bound:g}, max_weight {cfg.weight_bound:g}) can send: an "
                           "owner encoded out of range; refused")
    return digits * parts.step, float(sum(weights))


def slots_needed(size: int | None) -> int:
    """Slots a payload holds for an adapter of ``size`` values (two per slot)."""
    return -(-(size or 0) // 2)
