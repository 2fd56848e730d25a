"""Where an owner's epsilon ledger lives: ``<state_dir>/privacy_ledger.json``, one writer at a time,
replaced atomically. The bytes are ``ledger_format.py``'s; the budget is ``epsilon_ledger.py``'s.

- **One writer at a time.** Every read-check-write holds an exclusive ``fcntl.flock`` on
  ``<state_dir>/privacy_ledger.lock`` (:func:`load` holds it shared), so processes and threads on
  one host sharing the state dir serialise and none loses another's step. :func:`save` refuses to
  write a history that does not extend the one on disk, and :func:`check_not_rolled_back` lets a
  writer refuse when the history it loaded is no longer the start of the one on disk (the file was
  deleted, rolled back or rewritten meanwhile). Scope: flock is advisory and per host. It covers
  code that goes through this module on a local file system; not a state dir shared between
  machines over a network file system, nor a program that writes the file without the lock.
  Waiting more than ``LOCK_TIMEOUT_S`` for the lock is an error.
- **Crash-safe writes.** The file is replaced atomically through a temp file of its own in the
  same directory (``.privacy_ledger.json.<random>.tmp``, O_EXCL, mode 0600, fsync, rename, fsync
  of the directory), so a crash leaves the old ledger or the new one. Writers hold the lock, so
  a temp file seen under the lock is a write that was cut off: it is *reported and refused*,
  never used or deleted silently (the fixed name ``.privacy_ledger.json.tmp`` of older versions
  too). Neither is an unreadable ledger reset: losing the history would let the owner spend its
  budget twice.
"""

from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedveil.core.io import atomic_write_bytes, leftover_temps
from fedveil.privacy.dp.accounting import epsilon_of
from fedveil.privacy.dp.ledger_format import (FIX, Ledger, LedgerError, chain, checked_step, close, damaged,
                                              decode, encode, entries)

FILENAME = "privacy_ledger.json"
LOCKNAME = "privacy_ledger.lock"
LOCK_TIMEOUT_S = 120.0


def ledger_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILENAME


def lock_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / LOCKNAME


def load(state_dir: str | Path) -> Ledger | None:
    """The owner's ledger, or None if it has never trained with DP. Damage is an error.

    Reads under a shared lock, so it never sees another process's write half done.
    """
    path = ledger_path(state_dir)
    if not path.parent.is_dir():
        return None
    with locked(path, exclusive=False):
        return read(path)


def save(state_dir: str | Path, ledger: Ledger) -> None:
    """Write ``ledger`` (as version 2, chain recomputed) under the lock.

    Refuses (:class:`LedgerError`) to write a history that does not extend the one on disk (that
    would drop steps another process recorded) or whose stored spend its history does not give.
    """
    path = ledger_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = [checked_step(s, path, "the ledger to save") for s in ledger.history]
    heads = chain(history, ledger.delta, ledger.accountant)
    with locked(path, exclusive=True):
        on_disk = read(path)
        if on_disk is not None:
            n = len(on_disk.history)
            if (on_disk.delta, on_disk.accountant) != (ledger.delta, ledger.accountant) or n > len(history)\
                    or heads[n] != chain(on_disk.history, on_disk.delta, on_disk.accountant)[-1]:
                raise LedgerError(
                    f"{path}: refusing to save a ledger whose history does not extend the one on disk "
                    f"({n} entries); another process recorded steps since it was loaded: load it again")
        if history:
            recomputed = epsilon_of(entries(history), ledger.delta, ledger.accountant)
            if not close(history[-1].epsilon_after, recomputed):
                raise LedgerError(f"{path}: refusing to save: the last entry says epsilon "
                                  f"{history[-1].epsilon_after!r} "
                                  f"but its history gives {recomputed!r}")
        write(path, Ledger(ledger.budget_epsilon, ledger.delta, ledger.accountant, history, dict(ledger.plans)))


def check_not_rolled_back(path: Path, mine: Ledger, on_disk: Ledger | None) -> None:
    """The history this process last saw must still be the start of the one on disk.

    The file only ever grows; if it is gone or shorter or different, it was deleted, rolled back
    to an older copy or rewritten while this process held its copy: refuse rather than build on it.
    """
    if not mine.history:
        return
    n = len(mine.history)
    try:
        ok = on_disk is not None and n <= len(on_disk.history) and\
            chain(mine.history, mine.delta, mine.accountant)[-1] ==\
            chain(on_disk.history[:n], on_disk.delta, on_disk.accountant)[-1]
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        found = "is missing" if on_disk is None else f"holds {len(on_disk.history)} entries that do not start with them"
        raise LedgerError(f"{path} {found}, but this process loaded {n} entries from it: the file was deleted, rolled "
                          f"back or rewritten; {FIX}")


@contextmanager
def locked(path: Path, exclusive: bool) -> Iterator[None]:
    """Hold ``flock`` on the lock file beside ``path`` (exclusive for writers, shared for readers)."""
    lock = lock_path(path.parent)
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise LedgerError(f"{lock}: cannot open the ledger lock ({exc.__class__.__name__}: {exc})") from exc
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LedgerError(f"{lock}: another process has held the privacy ledger lock for over "
                                      f"{LOCK_TIMEOUT_S:g}s; find it (fuser {lock}) before training on") from None
                time.sleep(0.005)
        yield
    finally:
        os.close(fd)  # releases the lock


def read(path: Path) -> Ledger | None:
    """Load and verify the ledger; the caller holds the lock."""
    leftovers = leftover_temps(path)
    if leftovers:
        raise LedgerError(
            f"{leftovers[0]} exists: a ledger write was interrupted. Compare it with {path.name}, "
            "keep the one with the longer valid history as privacy_ledger.json and delete the other; "
            "fedveil will not guess"
        )
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise damaged(path, f"{exc.__class__.__name__}: {exc}") from exc
    return decode(path, text)


def write(path: Path, ledger: Ledger) -> None:
    """Replace the file with ``ledger`` as version 2; the caller holds the exclusive lock."""
    atomic_write_bytes(path, encode(path, ledger), mode=0o600, failpoint="ledger-write")
