"""What the server holds of the global adapter between rounds, per kind of backend.

- :class:`ClearGlobal` (``plain``): the adapter vector itself.
- :class:`SealedGlobal` (``tenseal``): ciphertexts only. ``base`` is Enc(global) as last
  re-encrypted by an owner; ``pending`` are the round aggregates Enc(sum n_k delta_k, sum n_k)
  not yet folded into it. Owners compute ``global = Dec(base) + sum_i Dec(S_i) / Dec(N_i)``; the
  server cannot, and never writes a plaintext adapter.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, Message

from fedveil.core import wire
from fedveil.privacy.secagg.base import Protected


class ClearGlobal:
    sealed = False

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = np.asarray(vector, np.float32)

    def record(self) -> ArrayRecord:
        return wire.vector_record(self.vector)

    def after_train(self, new_arrays: ArrayRecord | None, combined: Protected | None) -> None:
        if new_arrays is not None:
            self.vector = wire.record_vector(new_arrays)

    def after_evaluate(self, replies: list[Message]) -> None:
        pass

    def checkpoint(self) -> dict[str, np.ndarray]:
        return {"adapter": self.vector}

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> "ClearGlobal":
        return cls(arrays["adapter"])


class SealedGlobal:
    sealed = True

    def __init__(self, base: bytes | None = None, pending: list[bytes] | None = None) -> None:
        self.base, self.pending = base, list(pending or [])

    def record(self) -> ArrayRecord:
        return wire.sealed_record(self.base, self.pending)

    def after_train(self, new_arrays: ArrayRecord | None, combined: Protected | None) -> None:
        if combined is not None:
            self.pending.append(combined.blobs["ciphertext"])

    def after_evaluate(self, replies: list[Message]) -> None:
        """Adopt an owner's re-encrypted global; the aggregates it folds in are then settled."""
        for msg in replies:
            if msg.has_content() and wire.BLOBS in msg.content:
                blob = msg.content.config_records[wire.BLOBS].get(wire.REENCRYPTED)
                if isinstance(blob, bytes) and blob:
                    self.base, self.pending = blob, []
                    return

    def checkpoint(self) -> dict[str, np.ndarray]:
        arrays = {} if self.base is None else {"base-ct": np.frombuffer(self.base, np.uint8)}
        arrays.update({f"pending-{i:03d}": np.frombuffer(b, np.uint8) for i, b in enumerate(self.pending)})
        return arrays

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> "SealedGlobal":
        base = arrays["base-ct"].tobytes() if "base-ct" in arrays else None
        return cls(base, [arrays[k].tobytes() for k in sorted(arrays) if k.startswith("pending-")])
