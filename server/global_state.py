"""The one holder of the global adapter on the server: it advances, checkpoints and restores itself.

- :class:`ClearGlobal` (``plain``, ``crypten``): the adapter vector itself; a round adds the
  revealed mean delta.
- :class:`EncryptedGlobal` (``tenseal``): ciphertexts only (``privacy/secagg/tenseal/global_codec``):
  Enc(global) as last re-encrypted and signed by the owner the server asked (adopted only if
  its signature checks out), and each round's signed owner updates not yet folded into it.
  Owners compute the global; the server cannot, and never writes a plaintext adapter.

The same arrays go to owners (as the Message's global record) and into checkpoints.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError, Protected
from fedveil.privacy.secagg.tenseal import global_codec
from fedveil.privacy.secagg.tenseal.backend import ROUND_UPDATES
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

    def adopt(self, evaluated: dict[str, Protected], asked: str = "", after_round: int = 0) -> Optional[str]:
        return None

    def restored(self, arrays: dict[str, np.ndarray]) -> "ClearGlobal":
        return ClearGlobal(arrays[wire.CLEAR_GLOBAL])


class EncryptedGlobal:
    encrypted = True

    def __init__(self, base: global_codec.SignedBase | None = None, pending: list[bytes] | None = None,
                 check: Callable[[global_codec.SignedBase], None] | None = None) -> None:
        """``check`` raises :class:`PayloadError` for a re-encrypted global whose signature does not
        check out (the server backend's ``check_global``); None: adopt unchecked (owners still check)."""
        self.base, self.pending, self.check = base, list(pending or []), check

    def arrays(self) -> dict[str, np.ndarray]:
        return global_codec.to_arrays(self.base, self.pending)

    def apply(self, outcome: TrainOutcome) -> None:
        if outcome.combined is not None and outcome.accepted and ROUND_UPDATES in outcome.combined.blobs:
            self.pending.append(outcome.combined.blobs[ROUND_UPDATES])

    def adopt(self, evaluated: dict[str, Protected], asked: str = "", after_round: int = 0) -> Optional[str]:
        """Adopt the re-encrypted global of the owner ``asked`` (no one else's) if its signature, for
        this round, checks out; the rounds it folds in are then settled. Returns why a global the
        asked owner sent was refused (None: adopted, or none sent). Owners check it again."""
        payload = evaluated.get(asked) if asked else None
        blob = payload.blobs.get(wire.ENCRYPTED_GLOBAL) if payload else None
        signature = payload.blobs.get(wire.GLOBAL_SIGNATURE) if payload else None
        if not (isinstance(blob, bytes) and blob and isinstance(signature, bytes) and signature):
            return None
        base = global_codec.SignedBase(blob, after_round, asked, signature)
        try:
            if self.check is not None:
                self.check(base)
        except PayloadError as exc:
            return f"re-encrypted global from {asked} not adopted: {exc}"
        self.base, self.pending = base, []
        return None

    def restored(self, arrays: dict[str, np.ndarray]) -> "EncryptedGlobal":
        """The checkpointed ciphertexts, if their signed base checks out under the federation's
        context and run (owners check everything again before they decrypt)."""
        base, pending = global_codec.from_arrays(arrays)
        if base is not None and self.check is not None:
            try:
                self.check(base)
            except PayloadError as exc:
                raise UserError(f"the checkpoint's encrypted global does not belong to the context the owners hold "
                                f"({exc}); resume the run it came from, or start a new run directory") from exc
        return EncryptedGlobal(base, pending, check=self.check)
