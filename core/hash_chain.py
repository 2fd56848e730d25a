"""One hash chain, for every append-only history fedveil keeps: the coordinator's round chain
(``server/round_chain.py``) and each owner's epsilon ledger (``privacy/dp/ledger_format.py``).

Each entry stores the hash of the one before it under ``prev_key``; the first stores a genesis
hash. An entry's own hash is the SHA-256 of its canonical JSON (sorted keys, no spaces, ASCII)
with ``prev_key`` filled in and ``hash_key`` (where the entry stores its own hash) left out.
Editing, removing, inserting or reordering an entry breaks the chain; cutting entries off the
end does not, which only a copy of the head kept elsewhere shows.

The formats on disk depend on these bytes, so nothing here may change them
(``tests/formats/`` holds files written before this module existed).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Optional

ZERO_GENESIS = "0" * 64  # the round chain's genesis


def canonical(obj: Any, *, finite: bool = True) -> bytes:
    """The bytes that are hashed: sorted keys, no spaces, ASCII.

    ``finite=False`` lets NaN and infinity through as JSON's extensions (the round chain always
    did); otherwise they raise ValueError.
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=not finite,
                      ensure_ascii=True).encode("ascii")


def digest(obj: Any, *, finite: bool = True) -> str:
    """SHA-256 hex digest of :func:`canonical`."""
    return hashlib.sha256(canonical(obj, finite=finite)).hexdigest()


def sha256_of(*parts: bytes) -> str:
    """SHA-256 over length-prefixed byte strings (no two part lists give the same input)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big"))
        h.update(p)
    return h.hexdigest()


def genesis(label: dict[str, Any]) -> str:
    """A genesis hash that binds a chain to what it is (so one chain's entries do not verify in another)."""
    return digest(label)


def entry_hash(entry: dict[str, Any], *, hash_key: Optional[str] = None, finite: bool = True) -> str:
    """The hash of ``entry`` as stored, ``prev`` included, its own ``hash_key`` left out."""
    return digest({k: v for k, v in entry.items() if k != hash_key}, finite=finite)


def link(record: dict[str, Any], prev: str, *, prev_key: str, hash_key: Optional[str] = None,
         finite: bool = True) -> dict[str, Any]:
    """``record`` chained to ``prev``: a copy with ``prev_key`` set (and ``hash_key``, if given, set to its hash)."""
    entry = {**record, prev_key: prev}
    if hash_key is not None:
        entry.pop(hash_key, None)
        entry[hash_key] = entry_hash(entry, finite=finite)
    return entry


def heads(records: Iterable[dict[str, Any]], first: str, *, prev_key: str, finite: bool = True) -> list[str]:
    """``[first, h(e1), ..., h(en)]``: the ``prev`` each record should hold, then the chain's head.

    Each record is hashed as if it held the right ``prev`` (whatever it holds), so comparing
    its stored ``prev`` with the result finds the first break.
    """
    out = [first]
    for record in records:
        out.append(entry_hash({**record, prev_key: out[-1]}, finite=finite))
    return out


def check(entry: dict[str, Any], prev: str, *, prev_key: str, hash_key: str, finite: bool = True) -> Optional[str]:
    """Why ``entry`` (which stores its own hash) does not follow ``prev``: ``"hash"`` if its content
    does not give its hash (it was edited), ``"prev"`` if it links elsewhere; None if it follows."""
    if entry.get(hash_key) != entry_hash(entry, hash_key=hash_key, finite=finite):
        return "hash"
    if entry.get(prev_key) != prev:
        return "prev"
    return None
