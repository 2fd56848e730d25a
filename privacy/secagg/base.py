"""The secure-aggregation backend contract, free of Flower.

Every backend computes the same thing, a weighted FedAvg of adapter *deltas*::

    global_{r+1} = global_r + sum_k n_k * delta_k / sum_k n_k

and differs only in who can see what on the way:

1. each client ``protect``s ``(delta_k, n_k)`` into a :class:`Protected` payload;
2. the server ``combine``s the payloads that arrived into one payload (it never needs to read them);
3. whoever holds the key ``reveal``s the combined payload into ``(sum_k n_k delta_k, sum_k n_k)``.

The payload is split into clear ``arrays`` and opaque ``blobs`` so the Flower adapters can carry
it as an ``ArrayRecord`` plus a ``ConfigRecord`` without knowing the backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fedveil.core.errors import UserError


class PayloadError(UserError):
    """A payload that is malformed, truncated, tampered with or built for another setup."""


@dataclass
class Protected:
    """What travels for one client (or, combined, for all of them)."""

    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.arrays.values()) + sum(len(b) for b in self.blobs.values())


@dataclass(frozen=True)
class Revealed:
    """The weighted sum of deltas and the total weight."""

    weighted_sum: np.ndarray
    total_weight: float

    @property
    def mean(self) -> np.ndarray:
        if not self.total_weight > 0:
            raise PayloadError("aggregate has zero total weight: no client contributed examples")
        return (self.weighted_sum / self.total_weight).astype(np.float32)


class Backend(Protocol):
    """One aggregation backend; see the module docstring for the protocol."""

    name: str
    server_can_reveal: bool  # True only where the server may see the aggregate in clear
    server_sees_updates: bool  # True only where the server sees each client's update (plain)

    def protect(self, delta: np.ndarray, weight: float) -> Protected: ...

    def validate(self, payload: Protected) -> None:
        """Raise :class:`PayloadError` unless ``payload`` is well formed for this setup."""

    def combine(self, payloads: list[Protected], **context) -> Protected:
        """``context``: ``clients`` (ids, payload order), ``server_round``, ``layout_digest``."""

    def reveal(self, combined: Protected) -> Revealed: ...
