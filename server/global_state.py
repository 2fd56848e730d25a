"""The one holder of the global adapter on the server: it advances, checkpoints and restores itself.

- :class:`ClearGlobal` (``plain``, ``crypten``): the adapter vector itself; a round adds the
  revealed mean delta.
- a backend whose server holds the global only encrypted builds its own holder
  (``BackendSpec.held_global``; ``tenseal``: ciphertexts only), with the same methods.

The same arrays go to owners (as the Message's global record) and into checkpoints.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from fedveil.core import wire
from fedveil.core.payload import Protected
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
