"""The round chain: one JSON line per round, each carrying the previous line's hash (tamper-evident).

(An owner's epsilon ledger is another thing: ``privacy/dp/epsilon_ledger.py``. The file keeps its
historical name, ``round_ledger.jsonl``, and ``fedveil verify-chain`` (alias ``verify-ledger``) checks
it. Both chain their
entries with ``core/hash_chain.py``; here the genesis is 64 zeros and NaN/infinity hash as JSON's
extensions, as they always did.)

``<out>/round_ledger.jsonl``, appended by the coordinator after every round: round, config hash,
adapter layout digest, participating owners, a digest of what was aggregated (ciphertexts or the
revealed aggregate), the epsilon each owner reported, the hash of the resulting global state
where the server has one, ``prev_hash`` and the entry's own ``hash`` (SHA-256 of the canonical JSON
of everything else).

What it proves: that the file is the unbroken sequence the writer produced — editing an entry,
deleting one from the middle or reordering entries breaks the chain, and ``fedveil verify-chain``
says where. Deleting the newest entries is visible only against a head hash kept elsewhere
(``summary.json`` records it as ``ledger_head``, the key existing runs hold; pass it with ``--head``).
What it does not prove: that the coordinator told the truth when it wrote an entry. It is evidence a
coordinator commits to, not consensus; owners who keep the head hashes they were shown can hold it
to them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedveil.core import hash_chain
from fedveil.core.hash_chain import sha256_of  # noqa: F401  (federation hashes payloads with it)
from fedveil.core.io import append_jsonl, keep_jsonl, read_jsonl

FILENAME = "round_ledger.jsonl"
GENESIS = hash_chain.ZERO_GENESIS
# Where an entry keeps the links; NaN and infinity hash as they always did (JSON's extensions).
_CHAIN = {"prev_key": "prev_hash", "hash_key": "hash", "finite": False}


def entry_hash(entry: dict[str, Any]) -> str:
    return hash_chain.entry_hash(entry, hash_key="hash", finite=False)


def append(path: Path, fields: dict[str, Any]) -> dict[str, Any]:
    """Append one entry chained to the last; returns it (with ``hash``)."""
    entries = read_jsonl(path)
    entry = hash_chain.link({**fields, "index": len(entries)}, entries[-1]["hash"] if entries else GENESIS, **_CHAIN)
    append_jsonl(path, entry)
    return entry


def payload_digest(combined) -> str | None:
    """SHA-256 over what the backend aggregated (clear arrays or ciphertext bytes), in name order: an
    entry's ``aggregated_digest``."""
    if combined is None:
        return None
    parts = [combined.arrays[k].tobytes() for k in sorted(combined.arrays)]
    parts += [combined.blobs[k] for k in sorted(combined.blobs)]
    return sha256_of(*parts)


def head(path: Path) -> str | None:
    """The hash of the last entry (None for an empty or missing chain)."""
    entries = read_jsonl(path)
    return entries[-1]["hash"] if entries else None


def drop_after(path: Path, last_round: int) -> None:
    """On resume: cut the entries of rounds after ``last_round`` (written, but the run died before
    their checkpoint, so they are run again). Only the end of the chain goes: what remains verifies,
    and the re-run rounds are chained to it."""
    keep_jsonl(path, lambda entry: entry["round"] <= last_round)


def verify(path: Path, head: str | None = None) -> tuple[bool, str]:
    """(ok, one line saying so or naming the first break)."""
    if not path.is_file():
        return False, f"{path}: no such round chain"
    prev = GENESIS
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return False, f"{path}:{i}: not valid JSON (damaged or truncated)"
        broken = hash_chain.check(entry, prev, **_CHAIN)
        if broken == "hash":
            return False, f"{path}:{i}: entry hash does not match its content (the entry was edited)"
        if broken == "prev":
            return False, (f"{path}:{i}: prev_hash does not match line {i - 1} "
                           "(an entry was deleted, inserted or reordered)")
        if entry.get("index") != i - 1:
            return False, (f"{path}:{i}: index {entry.get('index')} where {i - 1} belongs "
                           "(entries were reordered or removed)")
        prev = entry["hash"]
    if head is not None and prev != head:
        return False, (f"{path}: the last entry's hash {prev[:16]}... is not the expected head {head[:16]}... "
                       "(entries were removed from the end, or another run's chain)")
    return True, f"{path}: {len(lines)} entries, chain intact, head {prev}"
