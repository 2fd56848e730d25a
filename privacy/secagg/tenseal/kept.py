"""An owner's kept global: the global adapter it last opened, in its own run folder.

The coordinator holds Enc(global) only to hand it to owners that lack it; an owner that opened the
global after round ``k`` already has it. So after each successful ``TensealOwner.open_global`` the
owner writes the vector here (atomically, bound to the run, the tenseal context id and the round),
and a later message may leave out the signed base when its pending rounds start at ``k + 1``
(``global_codec.EncryptedGlobal.arrays_for``). The file is the owner's own computation from material
it checked, so it is trusted like the rest of its state; the coordinator's word never stands in for
it: a base-less message whose pending rounds do not start right after the round this file holds (a
missing file, a stale one, another run's or context's) is refused with ``bad-global``
(``check=kept-global``), and the next message with the base works as before.

What is kept is what Dec(Enc(global)) would give (:func:`as_reencrypted`): under BFV the global
re-encrypted for the server is fixed point at a public step, so an owner that starts from its kept
copy computes, bit for bit, what it would from the signed base. Under CKKS the base carries the
scheme's noise and the kept copy does not: the two agree to CKKS's precision, not bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedveil.core.errors import Refusal
from fedveil.core.io import FramingError, atomic_write_bytes, pack, unpack
from fedveil.privacy.secagg.tenseal import bfv

KEPT_FILE = "kept-global.bin"  # in the owner's run folder (keys.run_dir)


@dataclass(frozen=True)
class Kept:
    """The global after ``round`` as this owner opened it."""

    round: int
    vector: np.ndarray


def as_reencrypted(vector: np.ndarray, cfg) -> np.ndarray:
    """What an owner decrypts from ``vector`` re-encrypted as the global (``bfv.encrypt`` with kind ``g``,
    then ``bfv.decode`` and ``Revealed.mean``); CKKS: ``vector`` itself (its encryption adds noise)."""
    vector = np.asarray(vector, np.float32)
    if cfg.scheme != "bfv":
        return vector
    limit = (bfv.radix(cfg.poly_modulus_degree, cfg.plain_modulus_bits) - 1) // 2
    digits = bfv.quantize(vector, cfg.global_step, limit)
    return ((digits * cfg.global_step) / 1.0).astype(np.float32)


def keep(folder: Path, run: str, cid: str, after_round: int, vector: np.ndarray) -> None:
    """Write the global after ``after_round`` (as :func:`as_reencrypted` leaves it) into ``folder``."""
    vector = np.ascontiguousarray(vector, np.float32)
    head = json.dumps({"run": run, "context": cid, "round": after_round, "size": int(vector.size)}).encode()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write_bytes(folder / KEPT_FILE, pack([head, vector.tobytes()]), mode=0o600)


def kept(folder: Path, run: str, cid: str, size: int | None) -> Kept | None:
    """The kept global of ``run`` under context ``cid``; None where there is none (or another run's,
    another context's, another layout's, or an unreadable file: the owner then needs the base)."""
    path = folder / KEPT_FILE
    if not path.is_file():
        return None
    try:
        head, raw = unpack(path.read_bytes())
        claim = json.loads(head)
        at, n = int(claim["round"]), int(claim["size"])
    except (FramingError, ValueError, KeyError, TypeError):
        return None
    if claim.get("run") != run or claim.get("context") != cid or len(raw) != 4 * n or (size is not None and n != size):
        return None
    return Kept(at, np.frombuffer(raw, np.float32).copy())


def start_of(held: Kept | None, reached: int, after_round: int) -> np.ndarray:
    """The kept vector a base-less message's pending rounds build on: they start after round ``reached``
    (the message opens the global after ``after_round``); refused unless this owner keeps exactly that round."""
    if held is None or held.round != reached:
        have = "keeps no global of this run" if held is None else f"keeps the global after round {held.round}"
        raise Refusal("bad-global", f"the encrypted global comes without its signed base, its pending rounds building "
                                    f"on round {reached} (to reach round {after_round}), but this owner {have}: "
                                    "stale or replayed; refused (the next message with the base works)",
                      check="kept-global")
    return held.vector
