"""The aggregator parties' computation for the ``crypten`` backend, free of Flower.

Each of K parties holds one additive share of every owner's update (``shares.py``): an int64
ring element per value (Z_2^64, 16 fractional bits). With CrypTen's MPC among them, and
multiplication triples from a trusted third party (``TTP`` provider: a separate dealer process
that never sees a share, unlike CrypTen's default ``TFP``, which hands party 0 the randomness),
they check every owner's update, then reveal one weighted sum.

What is checked, for a ``bound`` B (``aggregation.norm_bound``; ``b = round(B * 2^16)`` in the ring):

1. every coordinate, all owners at once: ``x_i <= b`` and ``x_i >= -b``, computed as the sign
   bits of ``b - x_i`` and ``x_i + b`` (CrypTen's exact binary conversion, one batched call on
   a ``2 x owners x values`` tensor). Reading ring elements as signed int64, ``b - x`` cannot
   wrap for ``x > b`` and ``x + b`` cannot wrap for ``x < -b`` (both land in ``[-2^63 + b, -1]``),
   and for ``|x| <= b`` both lie in ``[0, 2b]``: the pair is exact for *every* ring element,
   ``-2^63`` included. The per-owner count of violations is compared with 1 in MPC; only the
   yes/no bit is revealed.
2. only for the owners passing 1: ``sum_i x_i^2 <= B^2``. With every ``|x_i| <= b`` this sum
   cannot wrap the ring (``values * B^2 * 2^16 < 2^61`` is required and checked, else the
   parties refuse the request). A larger ``B`` (owner-level DP's noised integers) is checked on
   ``x_i 2^-k`` for the least ``k`` that fits (``shares.norm_scale_bits``; ``B`` up to ~2^30 at
   16,384 values), against ``shares.scaled_norm_limit``: the truncation's slack lets an update
   over ``B`` by at most ``sqrt(values) 2^(k-15)`` integer units pass, never fails one within it.
   The old check (2 alone) ran in Z_2^64 and an update of norm
   2^16 squared to 0: it passed any bound.

An owner failing 1 or 2 is excluded (``over-bound``), whatever its size. Then:

3. if fewer than ``min_owners`` owners remain, nothing is revealed (no sum is even formed): a
   "sum" of one owner is that owner's update;
4. otherwise ``sum_k n_k x_k`` over the accepted owners (``n_k`` are public to the parties) is
   revealed: the only value, besides the per-owner check bits, that leaves the MPC. An integer
   ``n_k`` multiplies each party's share locally (exact in the ring); CrypTen's public multiply,
   kept for other weights, truncates, which can be off by 2^48 ring units for large values.

Counts (``max_weight``), replayed rounds and agreement on which owners are valid are the
parties' business (``party.py``), before this runs. :func:`run_local_parties` runs the same
computation in forked local processes (CrypTen's ``run_multiprocess``) for tests.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from fedveil.privacy.secagg.crypten.compat import import_crypten
# RING_HEADROOM and norm_check_fits live in shares.py (owners plan with them without torch); party.py takes them here
from fedveil.privacy.secagg.crypten.shares import (PRECISION_BITS, RING_HEADROOM, norm_check_fits,  # noqa: F401
                                                   norm_scale_bits, scaled_norm_limit)

MIN_OWNERS_FLOOR = 2  # no party ever reveals the "sum" of a single owner


class CheckOverflow(ValueError):
    """The norm check would not be wrap-free for this bound and length: the parties refuse."""


def check_owners(x, bound: float) -> list[bool]:
    """The checks 1 and 2 above on ``x`` (an MPCTensor, owners x values); one bit per owner revealed."""
    crypten = import_crypten()

    owners, length = x.size()
    shift = norm_scale_bits(bound, length)
    if shift is None:
        raise CheckOverflow(f"norm_bound={bound:g} over {length} values could wrap the fixed-point ring; "
                            "lower aggregation.norm_bound")
    # 1. every coordinate within [-b, b]: sign bits of (b - x) and (x + b), in one batched comparison
    outside = (crypten.stack([-x + float(bound), x + float(bound)]) < 0)  # 1 where violated (scale 1)
    violations = outside.sum(0).sum(1)  # per owner, at most 2 * length: no wrap
    inside = [bool(v) for v in (violations < 1).get_plain_text().round().long().tolist()]
    accepted = list(inside)
    # 2. squared L2 norm, only for the owners whose every coordinate is bounded (so it cannot wrap)
    passing = [k for k in range(owners) if inside[k]]
    if passing:
        sub = x[passing] if len(passing) < owners else x
        if shift:  # a public factor 2^-shift, exact in the fixed point; CrypTen truncates the product
            sub = sub * 2.0**-shift
        limit = scaled_norm_limit(bound, length, shift)
        within = (sub.square().sum(1) <= limit).get_plain_text().round().long().tolist()
        for k, ok in zip(passing, within):
            accepted[k] = bool(ok)
    return accepted


def party_aggregate(local_shares: Sequence[np.ndarray], counts: Sequence[float], bound: Optional[float],
                    min_owners: int = MIN_OWNERS_FLOOR) -> tuple[list[bool], np.ndarray | None, float]:
    """Run on every party inside an initialised CrypTen communicator.

    ``local_shares[k]`` is this party's share of owner k's encoded update. Returns the accepted
    flags (False: ``over-bound``), the revealed ``sum_k n_k x_k`` over accepted owners and
    ``sum_k n_k`` -- or ``(flags, None, 0.0)`` when fewer than ``max(min_owners, 2)`` owners are
    accepted: then nothing is revealed.
    """
    import_crypten()
    from crypten.mpc import MPCTensor  # lazy: after import_crypten's torch shim

    min_owners = max(int(min_owners), MIN_OWNERS_FLOOR)
    if not local_shares:
        return [], None, 0.0
    if bound is None:
        accepted = [True] * len(local_shares)
    else:
        stacked = torch.from_numpy(np.stack([np.asarray(s, np.int64) for s in local_shares]))
        accepted = check_owners(MPCTensor.from_shares(stacked, precision=PRECISION_BITS), bound)
    if sum(accepted) < min_owners:
        return accepted, None, 0.0
    total, weight = None, 0.0
    for s, n, ok in zip(local_shares, counts, accepted):
        if ok:
            share = np.asarray(s, np.int64)
            if float(n).is_integer():
                # an integer weight multiplies each party's int64 share locally: exact in Z_2^64 (numpy
                # wraps like the ring). CrypTen's public multiply truncates afterwards, and its truncation
                # is off by 2^48 ring units with a chance that grows with the value (measured: several of
                # 2,048 values of ~2^21 integer units, owner-level's noised integers, in one sum)
                term = MPCTensor.from_shares(torch.from_numpy(share * np.int64(int(n))), precision=PRECISION_BITS)
            else:
                term = MPCTensor.from_shares(torch.from_numpy(share), precision=PRECISION_BITS) * float(n)
            total = term if total is None else total + term
            weight += float(n)
    return accepted, total.get_plain_text().double().numpy(), weight


def run_local_parties(shares: Sequence[Sequence[np.ndarray]], counts: Sequence[float],
                      bound: Optional[float], parties: int = 3, min_owners: int = MIN_OWNERS_FLOOR):
    """``shares[k][p]``: party p's share of owner k. Runs K local party processes + a TTP."""
    crypten = import_crypten()
    import crypten.mpc as mpc  # lazy: after import_crypten's torch shim

    @mpc.run_multiprocess(world_size=parties)
    def party():
        rank = crypten.comm.get().get_rank()
        return party_aggregate([owner[rank] for owner in shares], counts, bound, min_owners)

    # the TTP provider for these processes only: left set, it made every later crypten.init() in
    # this process wait forever for a dealer that never comes
    previous, crypten.cfg.mpc.provider = crypten.cfg.mpc.provider, "TTP"
    try:
        results = party()
    finally:
        crypten.cfg.mpc.provider = previous
    if not results or any(r is None for r in results):
        raise RuntimeError("an MPC party process failed; see its log above")
    return results
