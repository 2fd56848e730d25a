"""The owner's own record of one run: the rounds it trained and the evaluates it answered.

The owner's policy limits are counted here, by what the owner actually did, not by what the
coordinator's config says: ``max_rounds`` by the rounds this owner trained in the run, and
``max_evaluates_per_round`` by the evaluate messages it answered per round. A round number past
the run's plan (``rounds``) is refused. Every answer depends only on the coordinator's messages,
never on the owner's data, so a refusal here is a code with a policy key.

Stored as ``<state dir>/runs/<digest of the run key>.json``, written atomically (a crash leaves
the old or the new record, never half of one); it stays with the owner.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

from fedveil.core.errors import Refusal
from fedveil.core.io import atomic_write_bytes

RUNS_DIR = "runs"


class RunRecord:
    """Rounds trained and evaluates answered by one owner in one run (``run_key``)."""

    def __init__(self, state_dir: str | Path, run_key: str) -> None:
        digest = hashlib.sha256(run_key.encode()).hexdigest()[:32]
        self.path = Path(state_dir) / RUNS_DIR / f"{digest}.json"
        self.trained: set[int] = set()
        self.evaluates: dict[int, int] = {}
        if self.path.exists():
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                self.trained = {int(r) for r in raw["trained"]}
                self.evaluates = {int(r): int(n) for r, n in raw["evaluates"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                # refusing is the safe side: a reset record would hand out the limits again
                raise Refusal("internal", f"the owner's run record {self.path} is damaged ({exc}); "
                              "restore it or remove it knowingly") from exc

    def check_round(self, server_round: int, planned: int) -> None:
        """Refuse a round number outside ``0..planned`` (the run's ``rounds``)."""
        if not 0 <= server_round <= planned:
            raise Refusal("limit", f"round {server_round} is past the plan of {planned} rounds "
                          "(rounds past the plan are refused)", limit="rounds")

    def check_train(self, server_round: int, max_rounds: Optional[int]) -> None:
        """Refuse a round that would make this owner train more than ``max_rounds`` rounds in the run."""
        if server_round < 1:  # round 0 is the starting adapter's evaluation; training starts at round 1
            raise Refusal("limit", f"round {server_round} is not a training round", limit="rounds")
        if max_rounds is not None and len(self.trained | {server_round}) > max_rounds:
            raise Refusal("limit", f"owner policy max_rounds={max_rounds}: this owner has trained "
                          f"{len(self.trained)} rounds of this run already", limit="max_rounds")

    def note_trained(self, server_round: int) -> None:
        self.trained.add(server_round)
        self._save()

    def take_evaluate(self, server_round: int, cap: int) -> None:
        """Count one evaluate of ``server_round`` (on disk before it runs); refuse past ``cap``."""
        done = self.evaluates.get(server_round, 0)
        if done >= cap:
            raise Refusal("limit", f"owner policy max_evaluates_per_round={cap}: round {server_round} was "
                          f"evaluated {done} times already", limit="max_evaluates_per_round")
        self.evaluates[server_round] = done + 1
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"trained": sorted(self.trained), "evaluates": {str(r): n for r, n in sorted(self.evaluates.items())}}
        atomic_write_bytes(self.path, (json.dumps(body, sort_keys=True) + "\n").encode())
