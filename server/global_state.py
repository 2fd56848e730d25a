"""The one holder of the global adapter on the server: it advances, checkpoints and restores itself.

- :class:`ClearGlobal` (``plain``, ``crypten``): the adapter vector itself; a round adds the
  revealed mean delta.
- :class:`EncryptedGlobal` (``tenseal``): ciphertexts only (``privacy/secagg/tenseal/global_codec``):
  Enc(global) as last re-encrypted and signed by the owner the server asked, and the round
  aggregates not yet folded into it.
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

    def adopt(self, evaluated: dict[str, Protected], asked: str = "", after_round: int = 0) -> None:
        pass

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> "ClearGlobal":
        return cls(arrays[wire.CLEAR_GLOBAL])


class EncryptedGlobal:
    encrypted = True

    def __init__(self, base: global_codec.SignedBase | None = None, pending: list[bytes] | None = None) -> None:
        self.base, self.pending = base, list(pending or [])

    def arrays(self) -> dict[str, np.ndarray]:
        return global_codec.to_arrays(self.base, self.pending)

    def apply(self, outcome: TrainOutcome) -> None:
        if outcome.combined is not None and outcome.accepted:
            self.pending.append(outcome.combined.blobs["ciphertext"])

    def adopt(self, evaluated: dict[str, Protected], asked: str = "", after_round: int = 0) -> None:
        """Adopt the re-encrypted global of the owner ``asked`` (no one else's), with its signature;
        the aggregates it folds in are then settled. Owners check the signature when they open it."""
        payload = evaluated.get(asked) if asked else None
        blob = payload.blobs.get(wire.ENCRYPTED_GLOBAL) if payload else None
        signature = payload.blobs.get(wire.GLOBAL_SIGNATURE) if payload else None
        if isinstance(blob, bytes) and blob and isinstance(signature, bytes) and signature:
            self.base, self.pending = global_codec.SignedBase(blob, after_round, asked, signature), []

    @classmethod
    def restore(cls, arrays: dict[str, np.ndarray]) -> "EncryptedGlobal":
        return cls(*global_codec.from_arrays(arrays))
