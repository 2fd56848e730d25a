"""Owners' per-update checks: every update of a round within one owner's bounds, before any is added.

Owners hold the secret key, so each owner decrypts every signed update of a pending round and
checks it against the public bounds of the run config before summing (``open_global``): BFV, every
digit within the per-owner level ``Q`` (padding digits included: a digit over ``Q`` could use other
owners' headroom, or wrap the sum), the sealed weight within ``max_weight``; CKKS, the weight slot
within ``[0, max_weight]`` and every value within ``weight * value_bound``; both, the update's L2
norm within ``weight * norm_bound`` (train.update_clip_norm) where set. An update out of range
refuses the round, naming its owner (``Refusal("bad-update", owner=...)``): a poisoning owner moves
the mean by at most what an honest owner at its bounds could, ``max_weight * value_bound`` per value
(``norm_bound`` in L2) over the round's total weight.

The round's sum an owner then applies is the sum of the very plaintexts it checked
(:func:`checked_sum`): decrypting Enc(sum) would give the same values (BFV: digits within the
bounds add without wrapping, exactly; CKKS: within its approximation), so the owner neither loads
every ciphertext a second time to add them nor decrypts their sum.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Collection

import numpy as np

from fedveil.core.errors import Refusal
from fedveil.core.payload import PayloadError, Protected, Revealed
from fedveil.privacy.secagg.tenseal import bfv, ckks

if TYPE_CHECKING:
    from fedveil.privacy.secagg.tenseal.backend import TensealOwner


def check_contributions(owners: Collection[str], least: int, server_round: int) -> None:
    """``dp=owner_level``'s floor: refuse a round that sums fewer than ``least`` (the owner's t) signed
    contributions, before any of it is decrypted. Each contribution carries one noise share, so only t of them
    carry the full noise; with fewer, the sum would show each owner's update with less (the coordinator could
    leave all but one out). Under tenseal owners hold the key: this count, of contributions whose signatures
    the owner checked against its pinned roster (or a committee certified), is what enforces t."""
    if len(set(owners)) < least:
        raise Refusal("bad-global", f"pending round {server_round} sums {len(set(owners))} signed contribution(s), "
                                    f"fewer than this owner's t={least} (dp.min_honest_owners): its noise shares are "
                                    "not the full noise; refused before decrypting it", check="contributions")


def check_round(backend: "TensealOwner", payloads: dict[str, Protected], server_round: int) -> None:
    """Refuse the round if any owner's update is out of range (the owner named); else return."""
    for owner in sorted(payloads):
        _checked(backend, owner, payloads[owner], server_round)


def checked_sum(backend: "TensealOwner", payloads: dict[str, Protected], server_round: int) -> Revealed:
    """The round's sum, refused as :func:`check_round` refuses it (and, BFV, over ``max_owners`` updates,
    the most its step is made for); summed from the plaintexts checked, once every update is checked."""
    total, weight = None, 0.0
    for owner in sorted(payloads):  # added as checked, one plaintext held at a time (RoundUpdates are in this order)
        values, w = _checked(backend, owner, payloads[owner], server_round)
        total = values if total is None else total + values
        weight += w
    if backend.cfg.scheme == "bfv" and len(payloads) > backend.cfg.owners:
        raise PayloadError(f"pending round updates do not add up: over aggregation.max_owners={backend.cfg.owners} "
                           "updates in one sum (the BFV step is made for that many)")
    if total is None:
        raise PayloadError(f"pending round {server_round} holds no update: refused")
    if backend.cfg.scheme == "bfv":  # digits summed exactly in int64, scaled once, as bfv.decode scales Dec(sum)
        return Revealed(weighted_sum=total[: backend.size] * backend.cfg.step, total_weight=weight)
    return Revealed(weighted_sum=total, total_weight=weight)


def _checked(backend: "TensealOwner", owner: str, p: Protected, server_round: int) -> tuple[np.ndarray, float]:
    line, values, weight = _opened(backend, p)  # a malformed one raises PayloadError, as the sum would
    if line:
        raise Refusal("bad-update", f"owner {owner}'s update in pending round {server_round}: {line}; the round is "
                                    "refused", owner=owner)
    return values, weight


def problem(backend: "TensealOwner", p: Protected) -> str | None:
    """Why one update is beyond what an owner within the bounds can send, or None."""
    return _opened(backend, p)[0]


def _opened(backend: "TensealOwner", p: Protected) -> tuple[str | None, np.ndarray, float]:
    """(why the update is out of range or None, its plaintext, its weight); the plaintext is BFV's
    digits (int64, padding included) or CKKS's weighted values."""
    cfg = backend.cfg
    vecs, parts = backend._vectors(p, backend._secret)
    if parts is None:
        values, weight = ckks.decode(vecs)
        tol = 2.0 ** (20 - cfg.scale_bits) * max(1.0, cfg.weight_bound * cfg.bound)  # CKKS's approximation, with room
        if not (math.isfinite(weight) and -tol <= weight <= cfg.weight_bound + tol):
            return (f"its weight slot is {weight:.6g}, outside [0, aggregation.max_weight={cfg.weight_bound:g}]",
                    values, weight)
        top = float(np.abs(values).max()) if values.size else 0.0
        if not math.isfinite(top) or top > max(weight, 0.0) * cfg.bound + tol:
            return (f"a value of {top:.6g} is beyond its weight {weight:.6g} x aggregation.value_bound="
                    f"{cfg.bound:g}", values, weight)
        line = _norm_problem(float(np.linalg.norm(values)), weight, cfg.norm_bound, math.sqrt(values.size) * tol)
        return line, values, weight
    if parts.kind != b"u":
        return "it is not an owner's update (BFV header kind)", np.zeros(0, np.int64), 0.0
    n, bits = cfg.poly_modulus_degree, cfg.plain_modulus_bits
    slots = np.concatenate([np.asarray(v.decrypt(), np.int64) for v in vecs])
    digits = bfv.unpack_slots(slots, bfv.radix(n, bits), bfv.plain_modulus(n, bits), 2 * slots.size)
    (weight,) = [bfv.open_weight(backend._weight_key, b) for b in parts.boxes]
    if weight > cfg.weight_bound:
        return f"its sealed weight {weight:g} is over aggregation.max_weight={cfg.weight_bound:g}", digits, weight
    top = int(np.abs(digits).max()) if digits.size else 0
    if top > cfg.levels:
        return (f"a digit of {top} is over the {cfg.levels} levels one owner may send ({top / cfg.levels:.2f}x its "
                f"bound: aggregation.value_bound={cfg.bound:g}, max_weight={cfg.weight_bound:g})", digits, weight)
    norm = float(np.linalg.norm(digits[: backend.size].astype(np.float64))) * cfg.step
    return _norm_problem(norm, weight, cfg.norm_bound, math.sqrt(backend.size or 0) * cfg.step / 2), digits, weight


def _norm_problem(norm: float, weight: float, norm_bound: float | None, slack: float) -> str | None:
    if norm_bound is None or norm <= max(weight, 0.0) * norm_bound + slack:
        return None
    return (f"its L2 norm {norm:.6g} is over its weight {weight:g} x aggregation.norm_bound={norm_bound:g} "
            "(train.update_clip_norm)")
