"""The secure-aggregation backend contract, free of Flower.

Every backend computes the same weighted FedAvg of adapter deltas (see ``core/payload.py``) and
differs only in who can see what on the way:

1. each owner ``protect``s ``(delta_k, n_k)`` for one :class:`RoundContext` into a ``Protected`` payload;
2. the server ``validate``s each payload and ``combine``s those that arrived into a ``Combined``
   (it never needs to read them), which names any owner the backend itself left out;
3. whoever holds the key ``reveal``s the combined payload into ``(sum_k n_k delta_k, sum_k n_k)``.

A backend also says how owners read the global adapter the server sends (``open_global``) and
what owners need each round besides it (``round_config``). The registry (``__init__.py``) says,
per backend, how each side is built, whether the server holds the global only encrypted, whether
owners key the federation first and whether a run can resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from fedveil.core import wire
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext


class ServerSide(Protocol):
    name: str
    server_can_reveal: bool  # True only where the server may see the aggregate in clear
    server_sees_updates: bool  # True only where the server sees each owner's update (plain)

    def validate(self, payload: Protected) -> None:
        """Raise :class:`PayloadError` unless ``payload`` is well formed for this setup."""

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext) -> Combined: ...

    def reveal(self, combined: Protected) -> Revealed: ...

    def round_config(self) -> dict[str, str]:
        """Per-round values owners need (crypten: the parties' public keys)."""


class OwnerSide(Protocol):
    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext) -> Protected: ...

    def open_global(self, arrays: dict[str, np.ndarray], initial: np.ndarray, after_round: int) -> np.ndarray:
        """The global adapter after round ``after_round`` (0: the starting adapter) from the server's arrays."""


def clear_global(arrays: dict[str, np.ndarray], initial: np.ndarray | None = None,
                 after_round: int | None = None) -> np.ndarray:
    """The global adapter where the server holds it in clear (and is trusted with it)."""
    if wire.CLEAR_GLOBAL not in arrays:
        raise PayloadError("the global adapter is missing from the server's message")
    return np.asarray(arrays[wire.CLEAR_GLOBAL], np.float32)


def clear_global_bytes(values: int) -> int:
    """Bytes one owner downloads per round of a global the server holds in clear: the fp32 adapter in
    the train and in the evaluate message."""
    return 2 * 4 * values


@dataclass
class Cost:
    """Bytes per round (exact payloads) and the backend's added seconds per round (rough): what a
    backend's ``BackendSpec.cost`` returns (seconds 0) and the planner completes (seconds from
    calibration.json).

    ``update_up``: what one owner uploads for its update (the backend's ``protect`` payload).
    ``global_down``: what one owner downloads of the global adapter per round (train + evaluate
    messages), in steady state; ``global_down_first``: in round 1 (tenseal: the evaluate message
    carries every accepted owner's signed update of the round, so it grows with the owners).
    ``reencrypt_up``: tenseal, what the one owner asked each round uploads besides (Enc(global) and
    its signature). ``party_in`` / ``party_out``: crypten, per party per round (every owner's share
    in, the float64 aggregate out; the parties' own MPC traffic is not counted). Flower's config and
    metric records add a few KB per message to all of these; they are not counted.

    A new payload every owner sends each round is one more field (default 0, so backends that do not
    send it need no change), added to :attr:`per_owner`; ``as_dict`` picks it up.
    """

    backend: str
    values: int
    owners: int
    update_up: int
    global_down: int
    global_down_first: int
    reencrypt_up: int = 0
    party_in: int = 0
    party_out: int = 0
    parties: int = 0
    seconds: float = 0.0  # rough: protect + aggregate + reveal, from calibration.json; training excluded

    @property
    def per_owner(self) -> int:
        """Update up + global down for one owner in a steady-state round (what the byte limit checks)."""
        return self.update_up + self.global_down

    @property
    def per_round(self) -> int:
        """All of a steady-state round: every owner's update and global, the re-encryption, the parties'."""
        return self.owners * self.per_owner + self.reencrypt_up + self.parties * (self.party_in + self.party_out)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_owner": self.per_owner, "per_round": self.per_round}


def server_sees_counts(backend: Any, dp_on: bool) -> bool:
    """May the coordinator see an owner's counts (examples, held-out tokens)? The one rule, called by
    the owner (what it sends as weight) and the server (what it records): only where it sees each
    update anyway (``backend.server_sees_updates``: plain) and without DP (there a count is data)."""
    return bool(backend.server_sees_updates) and not dp_on


__all__ = ["Combined", "Cost", "OwnerSide", "PayloadError", "Protected", "Revealed", "RoundContext", "ServerSide",
           "clear_global", "clear_global_bytes", "server_sees_counts"]
