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

from fedveil.core.errors import UserError


class PayloadError(UserError):
    """A payload that is malformed, truncated, tampered with or built for another setup."""


@dataclass(frozen=True)
class RoundContext:
    """What one round's payloads are bound to: the round, the adapter layout and (owner side) the owner."""

    round: int
    layout_digest: str
    owner: str = ""


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
