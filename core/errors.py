"""The exception types for a user's mistake and for an owner's refusal.

A :class:`UserError` carries a single line that names the problem and the fix. Entry points
print it without a traceback and exit with status 2; anything else is a bug and keeps its
traceback.

A :class:`Refusal` is what an owner may tell the coordinator when it declines an instruction: a
code from the closed set :data:`REFUSAL_CODES` and public parameters only (a policy rule's name,
an owner id, a config key). Its one-line text (``str(refusal)``) may hold the owner's data and
stays on the owner's console; the owner's release gate sends the code and the public parameters.
"""

from __future__ import annotations

# The closed set of refusal codes an owner may release, each with what its parameters may name.
REFUSAL_CODES = {
    "policy": "the owner's policy forbids the config (rule: the policy key)",
    "budget": "the owner's epsilon budget does not cover the round",
    "config": "the run config is invalid for this owner (key: the config key)",
    "layout": "the adapter layout digest differs from the owner's model",
    "bad-global": "the global adapter failed the owner's input checks (check: which)",
    "bad-update": "an update in the round failed the owner's checks (owner: its id)",
    "keys": "key material is missing, unsigned, or not the pinned one",
    "roster": "an owner or party is not on the pinned, signed roster (owner: its id)",
    "replay": "a message for a round already answered",
    "limit": "a per-round or per-run limit of the owner's policy is reached (limit: the policy key)",
    "data": "the owner's data failed a check at load (details stay on the owner's console)",
    "unavailable": "the owner's worker is not reachable",
    "internal": "any other failure (details stay on the owner's console)",
}


class UserError(ValueError):
    """Bad input: a config value, a model path, a data file. ``str(err)`` is one line."""


class Refusal(UserError):
    """An owner declines an instruction: ``code`` (in :data:`REFUSAL_CODES`) and ``public``
    parameters may leave the owner; the line (``str()``) is for its own console only."""

    def __init__(self, code: str, line: str, **public: str | int | float) -> None:
        if code not in REFUSAL_CODES:
            raise ValueError(f"refusal code {code!r} is not one of {sorted(REFUSAL_CODES)}")
        super().__init__(line)
        self.code, self.public = code, dict(public)
