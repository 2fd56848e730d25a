"""What a secure-aggregation backend moves, and what a round binds it to (free of Flower).

Every backend computes the same thing, a weighted FedAvg of adapter *deltas*::

    global_{r+1} = global_r + sum_k n_k * delta_k / sum_k n_k

Owners ``protect`` ``(delta_k, n_k)`` into a :class:`Protected` payload; the server ``combine``s
the payloads into one :class:`Combined`; whoever holds the key ``reveal``s it into a
:class:`Revealed`, whose :meth:`Revealed.applied_to` is the one place "global + mean" is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fedveil.core import wire
from fedveil.core.errors import UserError


class PayloadError(UserError):
    """A payload that is malformed, truncated, tampered with or built for another setup."""


UPDATE, EVAL_PAIR = "update", "eval-pair"  # what a payload is: an adapter update, or a round's held-out pair


@dataclass(frozen=True)
class RoundContext:
    """What one round's payloads are bound to: the round, the adapter layout, (owner side) the owner,
    and the ``purpose``: an adapter update, or the owner's held-out pair ``(loss x tokens, tokens)``
    (:data:`EVAL_PAIR`), which each backend binds apart so neither can pass for the other."""

    round: int
    layout_digest: str
    owner: str = ""
    purpose: str = UPDATE

    @property
    def is_eval_pair(self) -> bool:
        return self.purpose == EVAL_PAIR

    def for_eval_pair(self) -> "RoundContext":
        return RoundContext(self.round, self.layout_digest, self.owner, EVAL_PAIR)


@dataclass
class Protected:
    """What travels for one owner (or, combined, for all): clear ``arrays`` and opaque ``blobs``.

    The split lets the Flower adapters carry it as an ``ArrayRecord`` plus a ``ConfigRecord``
    without knowing the backend.
    """

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) + sum(len(b) for b in self.blobs.values())


@dataclass
class Combined:
    """A backend's combination of the owners' payloads, and the owners it left out (with why)."""

    payload: Protected
    excluded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Revealed:
    """The weighted sum of deltas and the total weight."""

    weighted_sum: np.ndarray
    total_weight: float

    @property
    def mean(self) -> np.ndarray:
        if not self.total_weight > 0:
            raise PayloadError("aggregate has zero total weight: no owner contributed examples")
        return (self.weighted_sum / self.total_weight).astype(np.float32)

    def applied_to(self, global_vector: np.ndarray) -> np.ndarray:
        """The next global adapter: ``global + mean delta`` (float32)."""
        return (np.asarray(global_vector, np.float32) + self.mean).astype(np.float32)


def with_eval_pair(pair: Protected) -> Protected:
    """A held-out pair's keys as they travel in an evaluate reply (``wire.EVAL_PAIR_PREFIX``)."""
    return Protected(arrays={wire.EVAL_PAIR_PREFIX + k: v for k, v in pair.arrays.items()},
                     blobs={wire.EVAL_PAIR_PREFIX + k: v for k, v in pair.blobs.items()})


def eval_pair_of(reply: Protected | None) -> Protected | None:
    """The held-out pair inside an evaluate reply's payload, or None if it carries none."""
    if reply is None:
        return None
    n = len(wire.EVAL_PAIR_PREFIX)
    arrays = {k[n:]: v for k, v in reply.arrays.items() if k.startswith(wire.EVAL_PAIR_PREFIX)}
    blobs = {k[n:]: v for k, v in reply.blobs.items() if k.startswith(wire.EVAL_PAIR_PREFIX)}
    return Protected(arrays, blobs) if arrays or blobs else None


def without_eval_pair(reply: Protected | None) -> Protected | None:
    """``reply`` less any held-out pair (the release gate's cut under DP); None if nothing else is left."""
    if reply is None:
        return None
    arrays = {k: v for k, v in reply.arrays.items() if not k.startswith(wire.EVAL_PAIR_PREFIX)}
    blobs = {k: v for k, v in reply.blobs.items() if not k.startswith(wire.EVAL_PAIR_PREFIX)}
    if len(arrays) + len(blobs) == len(reply.arrays) + len(reply.blobs):
        return reply
    return Protected(arrays, blobs) if arrays or blobs else None


def update_of(reply: Protected) -> Protected:
    """A train reply's update alone: with ``eval_in_train`` the previous round's held-out pair and the
    answer to the holder's hand-over (``wire.HANDED_BACK``) ride in the same reply."""
    rest = without_eval_pair(reply) or Protected()
    return Protected(rest.arrays, {k: v for k, v in rest.blobs.items() if k not in wire.HANDED_BACK})
