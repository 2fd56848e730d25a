"""A data owner's epsilon ledger: every DP step it ever released, the epsilon they cost, and who
may set the budget.

(The coordinator's hash chain of rounds is another thing: ``server/round_chain.py``.)

``<state_dir>/privacy_ledger.json`` lives with the owner and is never sent anywhere. The rule it
keeps: the privacy an owner has spent is never under-counted. What that rests on:

- **Spend is recorded before the update it pays for leaves the owner** (``reserve``): a crash
  after training over-counts, never under-counts.
- **One writer at a time.** Every read-check-write holds an exclusive ``fcntl.flock`` on
  ``<state_dir>/privacy_ledger.lock`` (``load`` holds it shared). ``reserve`` re-reads the ledger
  from disk *inside* the lock, recomputes epsilon over that history plus the new step, refuses or
  appends and saves, all under the same lock; the caller's in-memory copy only contributes its
  budget and its new ``plans`` (entries already on disk win). So processes and threads on one
  host sharing the state dir serialise: none loses another's step and together they never pass
  the budget. ``reserve`` also refuses if the history the caller loaded is no longer the start of
  the one on disk (the file was deleted, rolled back or rewritten meanwhile), and ``save``
  refuses to write a history that does not extend the one on disk. Scope: flock is advisory
  and per host. It covers code that goes through this module on a local file system; not a
  state dir shared between machines over a network file system, nor a program that writes the
  file without the lock. Waiting more than ``LOCK_TIMEOUT_S`` for the lock is an error.
- **Crash-safe writes.** The file is replaced atomically through a temp file of its own in the
  same directory (``.privacy_ledger.json.<random>.tmp``, O_EXCL, mode 0600, fsync, rename, fsync
  of the directory), so a crash leaves the old ledger or the new one. Writers hold the lock, so
  a temp file seen under the lock is a write that was cut off: it is *reported and refused*,
  never used or deleted silently (the fixed name ``.privacy_ledger.json.tmp`` of older versions
  too). Neither is an unreadable ledger reset: losing the history would let the owner spend its
  budget twice.
- **A history that cannot be shortened or edited in place without detection.** Each history
  entry stores ``prev``, the SHA-256 of the previous entry's canonical JSON (sorted keys, no
  spaces; the first entry's ``prev`` is a genesis hash over ``delta`` and ``accountant``); the
  file also stores ``head`` (the hash of the last entry), ``entry_count``, ``steps_total`` and
  ``spent_epsilon``. ``load`` re-derives all of them, recomputes epsilon with the ledger's
  accountant, and raises :class:`LedgerError` (one line naming the file; the fix is to restore
  it from a backup, never to reset it) when: the file is not JSON or not a JSON object; a field
  is missing, unknown, of the wrong type, not finite or out of range; an entry was edited,
  removed, inserted or reordered (the chain breaks); entries were cut off the end (head, count
  and spend no longer match); the stored spend differs from the recomputed one (relative
  tolerance 1e-6: the same accountant on the same numbers); the history is empty but the
  spend is not; the version is unknown. Version-1 files (no chain) are still read, with the same
  type and spend checks; their chain is computed on load and they are written as version 2 on
  the next save.

What is *not* detected from the file alone: whoever can write the file can replace it with a
shorter or different history that is consistent in itself (recompute the chain, head, count and
spend with this code), and it loads as valid. The chain makes damage and careless edits evident;
only a copy of ``head`` kept elsewhere (a backup, another machine, or a process that still holds
the ledger it loaded) shows that a consistent rewrite lost history. The budget is not protected
either: it is the owner's to set.

Budget policy:

- The budget is the owner's. A new ledger takes the owner's cap (``max-epsilon`` in its node
  config) or else the experiment's ``dp.target_epsilon``. An existing ledger keeps its budget:
  the server's config can lower what one run aims for, never raise the budget. Only the owner,
  through its own cap, changes it. ``reserve`` checks against the budget of the ledger it is
  handed (as ``open_ledger`` set it) and stores that budget.
- ``delta`` and the accountant are fixed when the ledger is created (epsilon is only comparable
  across rounds at one delta); if another process created the ledger first, its values win.
- A run's noise multiplier is planned once, on the owner's first round of that run, so that the
  ledger's history plus all the run's planned steps stays within the run's target; it is stored
  in the ledger and reused on every later round of the run (also after a restart).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import operator
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from fedveil.core.errors import UserError
from fedveil.core.io import atomic_write_bytes, leftover_temps
from fedveil.privacy.dp.accounting import ACCOUNTANTS, PLAN_TOLERANCE, Entry, epsilon_of, plan_noise
from fedveil.privacy.dp.sgd import SampleLevelDPConfig, owner_delta

FILENAME = "privacy_ledger.json"
LOCKNAME = "privacy_ledger.lock"
VERSION = 2
READABLE_VERSIONS = (1, 2)
LOCK_TIMEOUT_S = 120.0
EPSILON_RTOL = 1e-6  # stored vs recomputed spend: the same accountant on the same history

_FIX = "restore it from a backup; it is never reset, because that would forget the privacy already spent"


class LedgerError(UserError):
    """The ledger is damaged or inconsistent; the owner must look at it before training on."""


class BudgetExceeded(UserError):
    """The round would take the owner past its epsilon budget; it is refused."""


@dataclass
class Step:
    """One round's DP-SGD release."""

    run: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_after: float = 0.0  # filled in by reserve()
    time: float = field(default_factory=time.time)
    prev: str = ""  # hash of the previous entry (or the genesis hash); filled in by reserve()/load()


@dataclass
class Ledger:
    budget_epsilon: float
    delta: float
    accountant: str
    history: list[Step] = field(default_factory=list)
    plans: dict[str, float] = field(default_factory=dict)  # run -> noise multiplier planned for it

    @property
    def entries(self) -> list[Entry]:
        """The history for an accountant; consecutive equal (sigma, q) merge, as Opacus does."""
        return _entries(self.history)

    @property
    def spent_epsilon(self) -> float:
        return self.history[-1].epsilon_after if self.history else 0.0


def ledger_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / FILENAME


def lock_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / LOCKNAME


# ---------------------------------------------------------------------------------------------
# public API


def load(state_dir: str | Path) -> Ledger | None:
    """The owner's ledger, or None if it has never trained with DP. Damage is an error.

    Reads under a shared lock, so it never sees another process's write half done.
    """
    path = ledger_path(state_dir)
    if not path.parent.is_dir():
        return None
    with _locked(path, exclusive=False):
        return _read(path)


def save(state_dir: str | Path, ledger: Ledger) -> None:
    """Write ``ledger`` (as version 2, chain recomputed) under the lock.

    Refuses (:class:`LedgerError`) to write a history that does not extend the one on disk (that
    would drop steps another process recorded) or whose stored spend its history does not give.
    """
    path = ledger_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    history = [_checked_step(s, path, "the ledger to save") for s in ledger.history]
    heads = _chain(history, ledger.delta, ledger.accountant)
    with _locked(path, exclusive=True):
        on_disk = _read(path)
        if on_disk is not None:
            n = len(on_disk.history)
            if (on_disk.delta, on_disk.accountant) != (ledger.delta, ledger.accountant) or n > len(history) \
                    or heads[n] != _chain(on_disk.history, on_disk.delta, on_disk.accountant)[-1]:
                raise LedgerError(
                    f"{path}: refusing to save a ledger whose history does not extend the one on disk "
                    f"({n} entries); another process recorded steps since it was loaded: load it again")
        if history:
            recomputed = epsilon_of(_entries(history), ledger.delta, ledger.accountant)
            if not _close(history[-1].epsilon_after, recomputed):
                raise LedgerError(f"{path}: refusing to save: the last entry says epsilon {history[-1].epsilon_after!r} "
                                  f"but its history gives {recomputed!r}")
        _write(path, Ledger(ledger.budget_epsilon, ledger.delta, ledger.accountant, history, dict(ledger.plans)))


def reserve(state_dir: str | Path, ledger: Ledger, step: Step) -> float:
    """Record ``step`` if it fits the budget and return the epsilon spent after it.

    Under the exclusive lock: re-read the ledger from disk (``ledger`` may be stale), keep the
    caller's budget and its new ``plans`` entries, recompute epsilon over the history on disk
    plus ``step``, refuse if over budget, else append ``step`` and save. On success ``ledger``
    is updated to what was written (history, plans, and delta/accountant if another process
    created the ledger first).

    Raises :class:`BudgetExceeded` (and records nothing) if it does not fit.
    """
    path = ledger_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    step = _checked_step(step, path, "the step to reserve")
    with _locked(path, exclusive=True):
        on_disk = _read(path)
        _check_not_rolled_back(path, ledger, on_disk)
        if on_disk is None:
            on_disk = Ledger(ledger.budget_epsilon, ledger.delta, ledger.accountant)
        plans = dict(on_disk.plans)
        for run, sigma in ledger.plans.items():
            plans.setdefault(run, float(sigma))
        budget = float(ledger.budget_epsilon)
        if not (math.isfinite(budget) and budget >= 0):
            raise LedgerError(f"{path}: the budget {ledger.budget_epsilon!r} is not a finite epsilon >= 0; nothing was recorded")
        history = [*on_disk.history, step]
        after = epsilon_of(_entries(history), on_disk.delta, on_disk.accountant)
        if not (math.isfinite(after) and after <= budget):
            raise BudgetExceeded(
                f"privacy budget: this round would bring epsilon to {after:.3f} > budget {budget:g} "
                f"(spent {on_disk.spent_epsilon:.3f}, delta={on_disk.delta:g}); the owner refuses it"
            )
        step.epsilon_after = after
        step.prev = _chain(on_disk.history, on_disk.delta, on_disk.accountant)[-1]
        written = Ledger(budget, on_disk.delta, on_disk.accountant, history, plans)
        _write(path, written)
    ledger.delta, ledger.accountant = written.delta, written.accountant
    ledger.history, ledger.plans = list(written.history), dict(written.plans)
    return after


def _check_not_rolled_back(path: Path, mine: Ledger, on_disk: Ledger | None) -> None:
    """The history this process last saw must still be the start of the one on disk.

    The file only ever grows; if it is gone or shorter or different, it was deleted, rolled back
    to an older copy or rewritten while this process held its copy: refuse rather than build on it.
    """
    if not mine.history:
        return
    n = len(mine.history)
    try:
        ok = on_disk is not None and n <= len(on_disk.history) and \
            _chain(mine.history, mine.delta, mine.accountant)[-1] == \
            _chain(on_disk.history[:n], on_disk.delta, on_disk.accountant)[-1]
    except (TypeError, ValueError, AttributeError):
        ok = False
    if not ok:
        found = "is missing" if on_disk is None else f"holds {len(on_disk.history)} entries that do not start with them"
        raise LedgerError(f"{path} {found}, but this process loaded {n} entries from it: the file was deleted, rolled "
                          f"back or rewritten; {_FIX}")


# ---------------------------------------------------------------------------------------------
# locking, reading, writing


@contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[None]:
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


def _read(path: Path) -> Ledger | None:
    """Load and verify the ledger; the caller holds the lock."""
    leftovers = leftover_temps(path)
    if leftovers:
        raise LedgerError(
            f"{leftovers[0]} exists: a ledger write was interrupted. Compare it with {path.name}, keep the one with the "
            "longer valid history as privacy_ledger.json and delete the other; fedveil will not guess"
        )
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _damaged(path, f"{exc.__class__.__name__}: {exc}") from exc
    return _parse(path, raw)


def _parse(path: Path, raw: Any) -> Ledger:
    if not isinstance(raw, dict):
        raise _damaged(path, f"it holds a JSON {_kind(raw)}, not a ledger object")
    version = raw.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise LedgerError(f"{path}: ledger version {version!r} is not one this fedveil reads {list(READABLE_VERSIONS)}; "
                          "use the fedveil that wrote it (never reset it)")
    fields = {"version": int, "budget_epsilon": float, "delta": float, "accountant": str, "spent_epsilon": float,
              "plans": dict, "history": list}
    if version >= 2:
        fields.update({"entry_count": int, "steps_total": int, "head": str})
    _check_fields(path, "the ledger", raw, fields)
    budget, delta, spent = float(raw["budget_epsilon"]), float(raw["delta"]), float(raw["spent_epsilon"])
    accountant = raw["accountant"]
    if accountant not in ACCOUNTANTS:
        raise _damaged(path, f"accountant {accountant!r} is not one of {list(ACCOUNTANTS)}")
    if not 0.0 < delta < 1.0 or budget < 0.0 or spent < 0.0:
        raise _damaged(path, f"budget_epsilon={budget!r}, delta={delta!r}, spent_epsilon={spent!r} are out of range")
    plans: dict[str, float] = {}
    for run, sigma in raw["plans"].items():
        if not _is_number(sigma) or not sigma > 0:
            raise _damaged(path, f"plans[{run!r}] = {sigma!r} is not a positive number")
        plans[run] = float(sigma)
    history = [_step_from_json(path, i, s, version) for i, s in enumerate(raw["history"])]
    heads = _chain(history, delta, accountant)
    where = "history entry {} ({}, round {})"
    for i, s in enumerate(history):
        if version >= 2 and raw["history"][i]["prev"] != heads[i]:
            raise _damaged(path, where.format(i + 1, s.run, s.round) + " does not link to the entry before it: "
                           "an entry was edited, removed, inserted or reordered")
        s.prev = heads[i]
    if version >= 2:
        if raw["entry_count"] != len(history):
            raise _damaged(path, f"entry_count is {raw['entry_count']} but the history holds {len(history)} entries")
        if raw["steps_total"] != sum(s.steps for s in history):
            raise _damaged(path, f"steps_total is {raw['steps_total']} but the history sums to "
                           f"{sum(s.steps for s in history)}")
        if raw["head"] != heads[-1]:
            raise _damaged(path, "the chain head does not match the last history entry: the history was cut short "
                           "or its last entry edited")
    if not history:
        if spent != 0.0:
            raise _damaged(path, f"the history is empty but spent_epsilon is {spent!r}")
    else:
        recomputed = epsilon_of(_entries(history), delta, accountant)
        if not _close(spent, recomputed) or not _close(history[-1].epsilon_after, recomputed):
            raise _damaged(path, f"recorded epsilon {spent!r} (last entry {history[-1].epsilon_after!r}) does not match "
                           f"its history ({recomputed!r}): the file was edited")
    return Ledger(budget_epsilon=budget, delta=delta, accountant=accountant, history=history, plans=plans)


def _write(path: Path, ledger: Ledger) -> None:
    """Write ``ledger`` as version 2 (chain, head, count, spend); the caller holds the exclusive lock."""
    if not (_is_number(ledger.budget_epsilon) and ledger.budget_epsilon >= 0 and _is_number(ledger.delta)
            and 0 < ledger.delta < 1 and ledger.accountant in ACCOUNTANTS):
        raise LedgerError(f"{path}: refusing to write budget={ledger.budget_epsilon!r}, delta={ledger.delta!r}, "
                          f"accountant={ledger.accountant!r}; nothing was recorded")
    heads = _chain(ledger.history, ledger.delta, ledger.accountant)
    history = []
    for s, prev in zip(ledger.history, heads):
        s.prev = prev
        history.append(_record(s))
    data = {"version": VERSION, "budget_epsilon": float(ledger.budget_epsilon), "delta": float(ledger.delta),
            "accountant": ledger.accountant, "spent_epsilon": float(ledger.spent_epsilon),
            "entry_count": len(history), "steps_total": sum(s.steps for s in ledger.history), "head": heads[-1],
            "plans": {str(k): float(v) for k, v in ledger.plans.items()}, "history": history}
    atomic_write_bytes(path, (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8"), mode=0o600,
                       failpoint="ledger-write")


# ---------------------------------------------------------------------------------------------
# the hash chain and field checks

_STEP_FIELDS = {"run": str, "round": int, "noise_multiplier": float, "sample_rate": float, "steps": int,
                "epsilon_after": float, "time": float}


def _record(s: Step) -> dict[str, Any]:
    """A history entry as it is stored and hashed."""
    return {"run": s.run, "round": s.round, "noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate,
            "steps": s.steps, "epsilon_after": s.epsilon_after, "time": s.time, "prev": s.prev}


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return hashlib.sha256(blob.encode("ascii")).hexdigest()


def _chain(history: list[Step], delta: float, accountant: str) -> list[str]:
    """``prev`` of every entry, then the head: ``[genesis, h(e1), ..., h(en)]`` (``len(history) + 1``)."""
    heads = [_digest({"fedveil": "epsilon-ledger", "delta": float(delta), "accountant": accountant})]
    for s in history:
        heads.append(_digest({**_record(s), "prev": heads[-1]}))
    return heads


def _entries(history: list[Step]) -> list[Entry]:
    merged: list[Entry] = []
    for s in history:
        if merged and merged[-1][:2] == (s.noise_multiplier, s.sample_rate):
            merged[-1] = (s.noise_multiplier, s.sample_rate, merged[-1][2] + s.steps)
        else:
            merged.append((s.noise_multiplier, s.sample_rate, s.steps))
    return merged


def _step_from_json(path: Path, i: int, raw: Any, version: int) -> Step:
    if not isinstance(raw, dict):
        raise _damaged(path, f"history entry {i + 1} is a JSON {_kind(raw)}, not an object")
    fields: dict[str, type] = dict(_STEP_FIELDS)
    if version >= 2:
        fields["prev"] = str
    _check_fields(path, f"history entry {i + 1}", raw, fields)
    step = Step(**{k: (float(raw[k]) if t is float else raw[k]) for k, t in _STEP_FIELDS.items()})
    problem = _step_problem(step)
    if problem:
        raise _damaged(path, f"history entry {i + 1}: {problem}")
    return step


def _checked_step(step: Step, path: Path, what: str) -> Step:
    """``step`` with its numbers normalised to int/float, or LedgerError if it could not be stored."""
    try:
        for name, kind in _STEP_FIELDS.items():
            value = getattr(step, name)
            if isinstance(value, bool):
                raise TypeError(f"{name}={value!r} is not {kind.__name__}")
            if kind is float and _is_number(value):
                setattr(step, name, float(value))
            elif kind is int:
                setattr(step, name, operator.index(value))
            elif kind is str and isinstance(value, str):
                setattr(step, name, str(value))
            else:
                raise TypeError(f"{name}={value!r} is not a finite {kind.__name__}")
        problem = _step_problem(step, stored=False)
    except (TypeError, AttributeError) as exc:
        problem = str(exc)
    if problem:
        raise LedgerError(f"{path}: {what} is invalid ({problem}); nothing was recorded")
    return step


def _step_problem(s: Step, stored: bool = True) -> str:
    # A new step may carry no noise (epsilon is then infinite and the budget refuses it); a stored one may not.
    if not (s.noise_multiplier > 0 if stored else s.noise_multiplier >= 0):
        return f"noise_multiplier {s.noise_multiplier!r} is not positive"
    if not 0 < s.sample_rate <= 1:
        return f"sample_rate {s.sample_rate!r} is not in (0, 1]"
    if s.steps < 0 or s.round < 0:
        return f"steps {s.steps!r} / round {s.round!r} is negative"
    if s.epsilon_after < 0:
        return f"epsilon_after {s.epsilon_after!r} is negative"
    return ""


def _check_fields(path: Path, what: str, raw: dict, fields: dict[str, type]) -> None:
    missing = sorted(set(fields) - set(raw))
    extra = sorted(set(raw) - set(fields))
    if missing or extra:
        raise _damaged(path, f"{what} has missing fields {missing} / unknown fields {extra}")
    for name, kind in fields.items():
        value = raw[name]
        ok = _is_number(value) if kind is float else (type(value) is kind)
        if not ok:
            raise _damaged(path, f"{what}: {name} = {_short(value)} is a JSON {_kind(value)}, not {_WANTED[kind]}")
        if kind is dict and not all(isinstance(k, str) for k in value):
            raise _damaged(path, f"{what}: {name} has non-string keys")
    if "head" in fields and not _is_hex_digest(raw["head"]):
        raise _damaged(path, f"{what}: head {_short(raw['head'])} is not a SHA-256 hex digest")
    if "prev" in fields and not _is_hex_digest(raw["prev"]):
        raise _damaged(path, f"{what}: prev {_short(raw['prev'])} is not a SHA-256 hex digest")


_WANTED = {float: "a finite number", int: "an integer", str: "a string", dict: "an object", list: "a list"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _close(stored: float, recomputed: float) -> bool:
    return math.isclose(stored, recomputed, rel_tol=EPSILON_RTOL, abs_tol=1e-9)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a ledger may hold")


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _damaged(path: Path, problem: str) -> LedgerError:
    return LedgerError(f"{path} is damaged or was edited: {' '.join(problem.split())}; {_FIX}")


def open_ledger(state_dir: str | Path, cfg: SampleLevelDPConfig, num_examples: int,
                owner_cap: Optional[float] = None) -> Ledger:
    """Load the owner's ledger (or start one) with the budget policy above applied."""
    ledger = load(state_dir)
    if ledger is None:
        budget = owner_cap if owner_cap is not None else cfg.target_epsilon
        return Ledger(budget_epsilon=float(budget), delta=owner_delta(cfg, num_examples), accountant=cfg.accountant)
    if owner_cap is not None:
        ledger.budget_epsilon = float(owner_cap)
    return ledger


def hint_is_the_plan(hint: Optional[float], target: float, ledger: Ledger, sample_rate: float, steps: int,
                     max_noise: float) -> bool:
    """Whether the coordinator's ``dp.noise_hint`` is what :func:`plan_noise` would give this owner:
    its ``steps`` keep epsilon (after the owner's own history) within ``target``, and 0.1 % less noise
    would not (plan_noise's tolerance). Less noise than the plan fails the first check, more the second,
    so a hint can neither weaken the owner's DP nor waste its utility; anything else is planned anew."""
    if not hint or not 0 < hint <= max_noise:
        return False
    spent = ledger.entries

    def eps(sigma: float) -> float:
        return epsilon_of([*spent, (sigma, sample_rate, steps)], ledger.delta, ledger.accountant)

    return eps(hint) <= target < eps(hint * (1 - PLAN_TOLERANCE))


def run_noise(ledger: Ledger, run_key: str, cfg: SampleLevelDPConfig, sample_rate: float, planned_steps: int,
              round_: Optional[int] = None, steps_left: Optional[int] = None) -> float:
    """The run's noise multiplier: explicit, already planned, or planned now (and recorded).

    A round this run already charged (``round_`` is in its history: the coordinator restarted after
    the owner had reserved it) is charged again, and the rest of the run, ``steps_left`` steps from
    this round on, is planned anew from everything spent, so the run can still end within budget."""
    if cfg.noise_multiplier is not None:
        return float(cfg.noise_multiplier)
    rerun = round_ is not None and any(s.run == run_key and s.round == round_ for s in ledger.history)
    if run_key in ledger.plans and not rerun:
        return ledger.plans[run_key]
    target = min(cfg.target_epsilon, ledger.budget_epsilon)
    steps = steps_left if rerun and steps_left else planned_steps
    if hint_is_the_plan(cfg.noise_hint, target, ledger, sample_rate, steps, cfg.max_noise_multiplier):
        sigma = float(cfg.noise_hint)
    else:
        sigma = plan_noise(target, ledger.delta, sample_rate, steps, ledger.accountant,
                           spent=ledger.entries, max_noise=cfg.max_noise_multiplier)
    ledger.plans[run_key] = sigma
    return sigma
