"""``crypten``'s held-out pair: shared to the parties like an update; they reveal the sum of pairs only.

Without DP each owner splits its pair ``(loss x tokens, tokens)`` into K additive shares in the
parties' fixed-point ring, with example count 1 (so the parties learn no token count: they see
uniformly random shares), seals share p to party p and signs the sealed shares, exactly as an
update (``shares.seal_shares``, seeds and all: at 2 values a seed is longer than the share it
stands for, 16 bytes more per seed, kept for one code path). What binds it apart from an
update is the layout field of every share's sealed header and of the signed bundle (and so of
the seeds' keystreams), :func:`purpose_tag` (``eval-pair:<layout digest>``),
and its length (2): a party refuses a pair presented as an update and an update presented as a
pair (the header does not match), and, as for updates, opens each sealed share once, only from
owners on the signed roster, and reveals nothing for fewer than ``min_owners`` owners.

The coordinator asks the parties under the run id ``<run>/eval`` (its own count of rounds, from
round 0: the starting adapter's evaluation) and receives ``(sum_k loss_k tokens_k, sum_k tokens_k)``
(and how many owners were summed): the federation's held-out loss and total held-out tokens, no
owner's count or loss.
"""

from __future__ import annotations

import numpy as np

from fedveil.core.payload import Combined, Protected, RoundContext
from fedveil.privacy.secagg.crypten.shares import BUNDLE, encode_fixed, seal_shares, sign_bundle

LENGTH = 2  # loss x tokens, tokens


def purpose_tag(layout_digest: str) -> str:
    """What a pair's shares name in the layout field of their header and bundle."""
    return f"eval-pair:{layout_digest}"


def protect(backend, loss: float, tokens: float, ctx: RoundContext) -> Protected:
    """``backend`` (an owner's ``CryptenBackend``, its keys checked): the sealed, signed shares of the pair."""
    ring = encode_fixed(np.array([float(loss) * float(tokens), float(tokens)]))
    tag = purpose_tag(ctx.layout_digest)
    sealed = seal_shares(ring, ctx.owner, ctx.round, tag, backend.run, backend.party_keys, 1.0, backend.cfg.shares)
    blobs = {f"share.{p}": blob for p, blob in enumerate(sealed)}
    blobs[BUNDLE] = sign_bundle([blobs[f"share.{p}"] for p in range(backend.cfg.parties)], backend.run, ctx.round,
                                tag, ctx.owner, backend.keys.sign, min_owners=backend.cfg.min_owners)
    return Protected(blobs=blobs)


def request_meta(backend, owners: list[str], ctx: RoundContext) -> dict:
    """What the coordinator asks every party for the round's pairs (no norm bound, no weight cap: count 1 each)."""
    return {"round": ctx.round, "clients": owners, "layout_digest": purpose_tag(ctx.layout_digest),
            "length": LENGTH, "bound": None, "run": f"{backend.run}/eval", "min_owners": backend.cfg.min_owners,
            "max_weight": None}


def as_pair_sum(combined: Combined) -> Combined:
    """The parties' ``sum_k [l_k t_k, t_k]`` (weight: owners summed) as ``[sum l t]`` of weight ``sum t``."""
    summed = np.asarray(combined.payload.arrays["weighted_sum"], np.float64)
    payload = Protected(arrays={"weighted_sum": summed[:1], "weight": summed[1:2].copy()})
    return Combined(payload, combined.excluded)

