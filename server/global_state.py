"""The one holder of the global adapter on the server: it advances, checkpoints and restores itself,
says what owners are asked at each hand-over, and writes the final adapter where it can.

- :class:`ClearGlobal` (``plain``, ``crypten``): the adapter vector itself; a round adds the
  revealed mean delta; the server writes the final adapter.
- a backend whose server holds the global only encrypted builds its own holder
  (``BackendSpec.held_global``; ``tenseal``: ciphertexts only), with the same methods (the
  protocol ``privacy/secagg/base.py:GlobalHolder``).

The same arrays go to owners (as the Message's global record) and into checkpoints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from fedveil.core import records, wire
from fedveil.core.payload import Protected
from fedveil.privacy.secagg.base import GlobalHolder
from fedveil.server.grid_poll import Exchange
from fedveil.server.strategy import TrainOutcome


def global_per_node(holder: GlobalHolder, node_owner: dict[int, str], nodes: list[int]) -> dict:
    """The global as ``holder`` sends it to each keyed node of ``nodes`` that needs other than all of it
    (tenseal: an owner that keeps the global it opened gets no signed base; a committee member no sum)."""
    per_node = {n: holder.arrays_for(node_owner[n]) for n in nodes if n in node_owner}
    made: dict[int, Any] = {}  # one record per arrays the holder gave (owners whose needs are equal share it)
    for a in per_node.values():
        if a is not None and id(a) not in made:
            made[id(a)] = records.arrays_record(a)
    return {n: made[id(a)] for n, a in per_node.items() if a is not None}


def opened_by(node_owner: dict[int, str], ex: Exchange) -> dict[str, bool]:
    """Keyed owners sent the global in ``ex``, and whether each replied without error (it opened the global)."""
    ok = {m.metadata.src_node_id for m in ex.replies if m.has_content() and not m.has_error()}
    return {node_owner[n]: n in ok for n in ex.bytes_down if n in node_owner}


class ClearGlobal:
    def __init__(self, vector: np.ndarray) -> None:
        self.vector = np.asarray(vector, np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        return {wire.CLEAR_GLOBAL: self.vector}

    def arrays_for(self, owner: str) -> dict[str, np.ndarray] | None:
        """Every owner gets the same arrays."""
        return None

    def opened(self, after_round: int, replied: dict[str, bool]) -> None:
        """Nothing to track: every owner gets the whole global."""

    def apply(self, outcome: TrainOutcome) -> None:
        if outcome.revealed is not None:
            self.vector = outcome.revealed.applied_to(self.vector)

    def handover(self, server_round: int, accepted: Any, owners: list[str], last: bool) -> dict[str, Any]:
        """Nothing to ask of owners: the server holds the global itself."""
        return {}

    def adopt(self, evaluated: dict[str, Protected], asked: str | None = None,
              after_round: int | None = None) -> Optional[str]:
        return None

    def final_adapter(self, out: Path, save: Callable[[np.ndarray, Path], None]) -> str:
        """The server writes it: ``<out>/final_adapter``."""
        target = out / "final_adapter"
        save(self.vector, target)
        return str(target)

    def restored(self, arrays: dict[str, np.ndarray]) -> "ClearGlobal":
        return ClearGlobal(arrays[wire.CLEAR_GLOBAL])
