"""The encrypted global adapter as arrays: what the server holds, checkpoints and sends to owners.

``base-ct`` is Enc(global) as last re-encrypted by an owner (absent: the seed-derived initial
adapter every owner computes itself); ``pending-NNN`` are the round aggregates
Enc(sum n_k delta_k, sum n_k) not yet folded into it, in round order. The server cannot decrypt
any of them; owners do (``TensealBackend.open_global``). The same arrays go into Messages and
into checkpoints, so the two cannot drift apart.
"""

from __future__ import annotations

import numpy as np

BASE = "base-ct"
PENDING = "pending-"


def to_arrays(base: bytes | None, pending: list[bytes]) -> dict[str, np.ndarray]:
    arrays = {} if base is None else {BASE: np.frombuffer(base, np.uint8).copy()}
    arrays.update({f"{PENDING}{i:03d}": np.frombuffer(b, np.uint8).copy() for i, b in enumerate(pending)})
    return arrays


def from_arrays(arrays: dict[str, np.ndarray]) -> tuple[bytes | None, list[bytes]]:
    base = np.asarray(arrays[BASE]).tobytes() if BASE in arrays else None
    pending = [np.asarray(arrays[k]).tobytes() for k in sorted(k for k in arrays if k.startswith(PENDING))]
    return base, pending
