"""Names on disk that more than one module builds, defined once.

The owner's state directory in a run's output (simulation, the runner, the planner's preparation,
crypten's launcher) is ``<out>/clients/client_K``: it holds the owner's ε ledger, keys and final
adapter, so the spelling never changes (renaming it would orphan spent budgets).
"""

from __future__ import annotations

from pathlib import Path

OWNERS_DIR = "clients"  # historical name, kept: existing runs hold ε ledgers under it
OWNER_PREFIX = "client_"  # owner ids as signed statements and rosters hold them


def owner_id(k: int) -> str:
    """The id of the ``k``-th simulated owner (``client_K``)."""
    return f"{OWNER_PREFIX}{int(k)}"


def owner_state_dir(out: str | Path, owner: str | int) -> Path:
    """An owner's state directory in the run output ``out``; ``owner`` is its id or its index."""
    return Path(out) / OWNERS_DIR / (owner_id(owner) if isinstance(owner, int) else str(owner))
