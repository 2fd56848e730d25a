"""The one holder of the global adapter on the server: it advances, checkpoints and restores itself.

- :class:`ClearGlobal` (``plain``, ``crypten``): the adapter vector itself; a round adds the
  revealed mean delta.
- :class:`EncryptedGlobal` (``tenseal``): ciphertexts only (``privacy/secagg/tenseal/global_codec``):
  Enc(global) as last re-encrypted by an owner, and the round aggregates not yet folded into it.
  Owners compute the global; the server cannot, and never writes a plaintext adapter.

The same arrays go to owners (as the Message's global record) and into checkpoints.
"""

from __future__ import annotations

import numpy as np

from fedveil.core import wire
from fedveil.core.payload import Protected
from fedveil.privacy.secagg.tenseal import global_codec
from fedveil.server.strategy import TrainOutcome


class ClearGlobal:
    encrypted = False

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = np.asarray(vector, np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {wire.CLEAR_GLOBAL: self.vector}

    def apply(self, outcome: TrainOutcome) -> None:
        if outcome.revealed is not None:
            self.vector = outcome.revealed.applied_to(self.vector)

    def adopt(self, evaluated: dict[str, Protected]) -> None:
        pass

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> "ClearGlobal":
        return cls(arrays[wire.CLEAR_GLOBAL])


class EncryptedGlobal:
    encrypted = True

    def __init__(self, base: bytes | None = None, pending: list[bytes] | None = None) -> None:
        self.base, self.pending = base, list(pending or [])

    def arrays(self) -> dict[str, np.ndarray]:
        return global_codec.to_arrays(self.base, self.pending)

    def apply(self, outcome: TrainOutcome) -> None:
        if outcome.combined is not None and outcome.accepted:
            self.pending.append(outcome.combined.blobs["ciphertext"])

    def adopt(self, evaluated: dict[str, Protected]) -> None:
        """Adopt an owner's re-encrypted global; the aggregates it folds in are then settled."""
        for payload in evaluated.values():
            blob = payload.blobs.get(wire.ENCRYPTED_GLOBAL)
            if isinstance(blob, bytes) and blob:
                self.base, self.pending = blob, []
                return

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> "EncryptedGlobal":
        return cls(*global_codec.from_arrays(arrays))
