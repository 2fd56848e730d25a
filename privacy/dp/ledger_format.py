"""The epsilon ledger's file format: what ``privacy_ledger.json`` holds, how it is checked when read,
and how an older version is brought forward. Pure: no locking and no file system
(``ledger_store.py`` does that); the budget rules are in ``epsilon_ledger.py``.

**A history that cannot be shortened or edited in place without detection.** Each history entry
stores ``prev``, the hash of the entry before it in the one chain of ``core/hash_chain.py`` (the
first entry's ``prev`` is a genesis hash over ``delta`` and ``accountant``); the file also stores
``head`` (the hash of the last entry), ``entry_count``, ``steps_total`` and ``spent_epsilon``.
:func:`parse` re-derives all of them, recomputes epsilon with the ledger's accountant, and raises
:class:`LedgerError` (one line naming the file; the fix is to restore it from a backup, never to
reset it) when: the file is not a JSON object; a field is missing, unknown, of the wrong type, not
finite or out of range; an entry was edited, removed, inserted or reordered (the chain breaks);
entries were cut off the end (head, count and spend no longer match); the stored spend differs
from the recomputed one (relative tolerance ``EPSILON_RTOL``: the same accountant on the same
numbers); the history is empty but the spend is not; the version is unknown. Version-1 files (no
chain) are still read, with the same type and spend checks; their chain is computed on load and
they are written as version 2 on the next save.

What is *not* detected from the file alone: whoever can write the file can replace it with a
shorter or different history that is consistent in itself (recompute the chain, head, count and
spend with this code), and it loads as valid. The chain makes damage and careless edits evident;
only a copy of ``head`` kept elsewhere (a backup, another machine, or a process that still holds
the ledger it loaded) shows that a consistent rewrite lost history. The budget is not protected
either: it is the owner's to set.
"""

from __future__ import annotations

import json
import math
import operator
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedveil.core import hash_chain
from fedveil.core.errors import UserError
from fedveil.privacy.dp.accounting import ACCOUNTANTS, Entry, epsilon_of

VERSION = 2
READABLE_VERSIONS = (1, 2)
EPSILON_RTOL = 1e-6  # stored vs recomputed spend: the same accountant on the same history

FIX = "restore it from a backup; it is never reset, because that would forget the privacy already spent"


class LedgerError(UserError):
    """The ledger is damaged or inconsistent; the owner must look at it before training on."""


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
        return entries(self.history)

    @property
    def spent_epsilon(self) -> float:
        return self.history[-1].epsilon_after if self.history else 0.0


# ---------------------------------------------------------------------------------------------
# the chain over the history


def record(s: Step) -> dict[str, Any]:
    """A history entry as it is stored and hashed."""
    return {"run": s.run, "round": s.round, "noise_multiplier": s.noise_multiplier, "sample_rate": s.sample_rate,
            "steps": s.steps, "epsilon_after": s.epsilon_after, "time": s.time, "prev": s.prev}


def chain(history: list[Step], delta: float, accountant: str) -> list[str]:
    """``prev`` of every entry, then the head: ``[genesis, h(e1), ..., h(en)]`` (``len(history) + 1``)."""
    genesis = hash_chain.genesis({"fedveil": "epsilon-ledger", "delta": float(delta), "accountant": accountant})
    return hash_chain.heads(map(record, history), genesis, prev_key="prev")


def entries(history: list[Step]) -> list[Entry]:
    merged: list[Entry] = []
    for s in history:
        if merged and merged[-1][:2] == (s.noise_multiplier, s.sample_rate):
            merged[-1] = (s.noise_multiplier, s.sample_rate, merged[-1][2] + s.steps)
        else:
            merged.append((s.noise_multiplier, s.sample_rate, s.steps))
    return merged


def close(stored: float, recomputed: float) -> bool:
    return math.isclose(stored, recomputed, rel_tol=EPSILON_RTOL, abs_tol=1e-9)


# ---------------------------------------------------------------------------------------------
# reading and writing the bytes


def decode(path: Path, text: str) -> Ledger:
    """The ledger ``text`` (the content of ``path``) holds, checked; :class:`LedgerError` if it is damaged."""
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise damaged(path, f"{exc.__class__.__name__}: {exc}") from exc
    return parse(path, raw)


def parse(path: Path, raw: Any) -> Ledger:
    if not isinstance(raw, dict):
        raise damaged(path, f"it holds a JSON {_kind(raw)}, not a ledger object")
    version = raw.get("version")
    if type(version) is not int or version not in READABLE_VERSIONS:
        raise LedgerError(f"{path}: ledger version {version!r} is not one this fedveil reads "
                          f"{list(READABLE_VERSIONS)}; "
                          "use the fedveil that wrote it (never reset it)")
    fields = {"version": int, "budget_epsilon": float, "delta": float, "accountant": str, "spent_epsilon": float,
              "plans": dict, "history": list}
    if version >= 2:
        fields.update({"entry_count": int, "steps_total": int, "head": str})
    _check_fields(path, "the ledger", raw, fields)
    budget, delta, spent = float(raw["budget_epsilon"]), float(raw["delta"]), float(raw["spent_epsilon"])
    accountant = raw["accountant"]
    if accountant not in ACCOUNTANTS:
        raise damaged(path, f"accountant {accountant!r} is not one of {list(ACCOUNTANTS)}")
    if not 0.0 < delta < 1.0 or budget < 0.0 or spent < 0.0:
        raise damaged(path, f"budget_epsilon={budget!r}, delta={delta!r}, spent_epsilon={spent!r} are out of range")
    plans: dict[str, float] = {}
    for run, sigma in raw["plans"].items():
        if not _is_number(sigma) or not sigma > 0:
            raise damaged(path, f"plans[{run!r}] = {sigma!r} is not a positive number")
        plans[run] = float(sigma)
    history = [_step_from_json(path, i, s, version) for i, s in enumerate(raw["history"])]
    heads = chain(history, delta, accountant)
    where = "history entry {} ({}, round {})"
    for i, s in enumerate(history):
        if version >= 2 and raw["history"][i]["prev"] != heads[i]:
            raise damaged(path, where.format(i + 1, s.run, s.round) + " does not link to the entry before it: "
                          "an entry was edited, removed, inserted or reordered")
        s.prev = heads[i]
    if version >= 2:
        if raw["entry_count"] != len(history):
            raise damaged(path, f"entry_count is {raw['entry_count']} but the history holds {len(history)} entries")
        if raw["steps_total"] != sum(s.steps for s in history):
            raise damaged(path, f"steps_total is {raw['steps_total']} but the history sums to "
                          f"{sum(s.steps for s in history)}")
        if raw["head"] != heads[-1]:
            raise damaged(path, "the chain head does not match the last history entry: the history was cut short "
                          "or its last entry edited")
    if not history:
        if spent != 0.0:
            raise damaged(path, f"the history is empty but spent_epsilon is {spent!r}")
    else:
        recomputed = epsilon_of(entries(history), delta, accountant)
        if not close(spent, recomputed) or not close(history[-1].epsilon_after, recomputed):
            raise damaged(path, f"recorded epsilon {spent!r} (last entry {history[-1].epsilon_after!r}) does not match "
                          f"its history ({recomputed!r}): the file was edited")
    return Ledger(budget_epsilon=budget, delta=delta, accountant=accountant, history=history, plans=plans)


def encode(path: Path, ledger: Ledger) -> bytes:
    """``ledger`` as version 2 (chain, head, count, spend); sets every step's ``prev``."""
    if not (_is_number(ledger.budget_epsilon) and ledger.budget_epsilon >= 0 and _is_number(ledger.delta)
            and 0 < ledger.delta < 1 and ledger.accountant in ACCOUNTANTS):
        raise LedgerError(f"{path}: refusing to write budget={ledger.budget_epsilon!r}, delta={ledger.delta!r}, "
                          f"accountant={ledger.accountant!r}; nothing was recorded")
    heads = chain(ledger.history, ledger.delta, ledger.accountant)
    history = []
    for s, prev in zip(ledger.history, heads):
        s.prev = prev
        history.append(record(s))
    data = {"version": VERSION, "budget_epsilon": float(ledger.budget_epsilon), "delta": float(ledger.delta),
            "accountant": ledger.accountant, "spent_epsilon": float(ledger.spent_epsilon),
            "entry_count": len(history), "steps_total": sum(s.steps for s in ledger.history), "head": heads[-1],
            "plans": {str(k): float(v) for k, v in ledger.plans.items()}, "history": history}
    return (json.dumps(data, indent=1, allow_nan=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------------------------------------
# field checks

_STEP_FIELDS = {"run": str, "round": int, "noise_multiplier": float, "sample_rate": float, "steps": int,
                "epsilon_after": float, "time": float}


def _step_from_json(path: Path, i: int, raw: Any, version: int) -> Step:
    if not isinstance(raw, dict):
        raise damaged(path, f"history entry {i + 1} is a JSON {_kind(raw)}, not an object")
    fields: dict[str, type] = dict(_STEP_FIELDS)
    if version >= 2:
        fields["prev"] = str
    _check_fields(path, f"history entry {i + 1}", raw, fields)
    step = Step(**{k: (float(raw[k]) if t is float else raw[k]) for k, t in _STEP_FIELDS.items()})
    problem = _step_problem(step)
    if problem:
        raise damaged(path, f"history entry {i + 1}: {problem}")
    return step


def checked_step(step: Step, path: Path, what: str) -> Step:
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
        raise damaged(path, f"{what} has missing fields {missing} / unknown fields {extra}")
    for name, kind in fields.items():
        value = raw[name]
        ok = _is_number(value) if kind is float else (type(value) is kind)
        if not ok:
            raise damaged(path, f"{what}: {name} = {_short(value)} is a JSON {_kind(value)}, not {_WANTED[kind]}")
        if kind is dict and not all(isinstance(k, str) for k in value):
            raise damaged(path, f"{what}: {name} has non-string keys")
    if "head" in fields and not _is_hex_digest(raw["head"]):
        raise damaged(path, f"{what}: head {_short(raw['head'])} is not a SHA-256 hex digest")
    if "prev" in fields and not _is_hex_digest(raw["prev"]):
        raise damaged(path, f"{what}: prev {_short(raw['prev'])} is not a SHA-256 hex digest")


_WANTED = {float: "a finite number", int: "an integer", str: "a string", dict: "an object", list: "a list"}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_hex_digest(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number a ledger may hold")


def _kind(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def damaged(path: Path, problem: str) -> LedgerError:
    return LedgerError(f"{path} is damaged or was edited: {' '.join(problem.split())}; {FIX}")
