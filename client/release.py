"""The owner's release gate: everything a data owner sends leaves through :func:`release`.

Both paths call it: the in-process ClientApp (``client/app.py``) and the owner worker
(``client/operations.py``, ``client/worker.py``; the socket's format: ``client/protocol.py``). What it
lets out is decided here and nowhere else:

- a reply: the protected update (finite, or nothing leaves), without DP the protected held-out pair
  (``privacy/secagg/eval_pair.py``; under DP it is cut: ``core.payload.without_eval_pair``), metrics
  on an explicit allow-list and meta on another. Under DP the metric list is the DP record
  (``wire.DP_FIELDS``: σ, q, steps, δ, ε, budget, all public values) and sizes fixed by public
  values (weight 1, the public ``train.local_steps``): never counts, lengths, losses, norms or
  timings. Without DP it adds what docs/privacy.md's threat model names (losses, the count and norm
  where the backend lets the server see updates, timings).
- a failure: an int code and a reason that is the refusal code and its public parameters only, DP
  or not ("refuse with a code, not with data"). A :class:`~fedveil.core.errors.Refusal` keeps its
  code and parameters; a plain ``UserError`` becomes ``config``; any other exception ``internal``.
  The line and, for a bug, the traceback go to the owner's console (stderr), never to the server.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import numpy as np

from fedveil.client.protocol import Answer, WorkerUnavailable
from fedveil.core import wire
from fedveil.core.errors import REFUSAL_CODES, Refusal, UserError
from fedveil.core.payload import Protected, without_eval_pair

# A fixed int per refusal code (the Error reply's code); the order of REFUSAL_CODES never changes.
ERROR_CODES = {code: 4000 + i for i, code in enumerate(REFUSAL_CODES)}
CODE_NAMES = {number: code for code, number in ERROR_CODES.items()}

# Metrics an owner may send under DP: its DP record and sizes fixed by public values.
DP_METRICS = frozenset({wire.NUM_EXAMPLES, wire.TRAIN_STEPS, *wire.DP_FIELDS})
# Without DP, also what docs/privacy.md's threat model lists (the owner leaves out counts and norms where
# its backend hides updates: Owner.metric_weight, Owner.train_round).
CLEAR_METRICS = DP_METRICS | {wire.TRAIN_LOSS, wire.EVAL_LOSS, wire.UPDATE_NORM, wire.TRAIN_SECONDS,
                              wire.EVAL_SECONDS, wire.PROTECT_SECONDS, wire.REVEAL_SECONDS}
# Meta that is public: who answers, its layout digest, key set-up material (public keys, public
# context, signed statements, sealed boxes; the signed statement over the final adapter: digests of the
# global it received, the run, the roster, the rounds it trained, all public).
META_KEYS = frozenset({wire.OWNER_ID, wire.LAYOUT_DIGEST, wire.PUBLIC_KEY, wire.VERIFY_KEY, wire.PUBLIC_CONTEXT,
                       wire.SETUP_STATEMENT, wire.SETUP_SIGNATURE, wire.ADAPTER_STATEMENT})
META_PREFIXES = (wire.HELD_PREFIX, wire.SEALED_PREFIX)
# Sizes under DP are public constants, whatever the owner computed.
DP_FIXED = {wire.NUM_EXAMPLES: 1.0}


@dataclass(frozen=True)
class Released:
    """What leaves the owner: a reply (metrics, meta, protected) or an error (code, reason)."""

    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    protected: Optional[Protected] = None
    error_code: Optional[int] = None
    reason: str = ""

    @property
    def is_error(self) -> bool:
        return self.error_code is not None

    def answer(self) -> Answer:
        return Answer(dict(self.metrics), dict(self.meta), self.protected)


def release(outcome: Answer | BaseException, dp_on: bool, who: str = "owner") -> Released:
    """The one gate: ``outcome`` (an :class:`Answer` or the exception an instruction raised) ->
    what may leave this owner. ``dp_on``: the run asks for DP, or its config could not be read."""
    if isinstance(outcome, BaseException):
        return refusal_of(outcome, who)
    # the held-out pair (loss x tokens, tokens) leaves without DP only: under DP nothing of it does
    protected = without_eval_pair(outcome.protected) if dp_on else outcome.protected
    if protected is not None and not _finite(protected):
        return refusal_of(RuntimeError("a non-finite value in the protected update (never sent)"), who)
    allowed = DP_METRICS if dp_on else CLEAR_METRICS
    metrics = {k: float(v) for k, v in outcome.metrics.items() if k in allowed}
    if dp_on:
        metrics.update({k: v for k, v in DP_FIXED.items() if k in metrics})
    meta = {k: v for k, v in outcome.meta.items() if k in META_KEYS or k.startswith(META_PREFIXES)}
    return Released(metrics, meta, protected)


def refusal_of(exc: BaseException, who: str = "owner") -> Released:
    """An exception -> (code, public reason); its line (and a bug's traceback) stay on this console."""
    if isinstance(exc, Refusal):
        code, public = exc.code, exc.public
    elif isinstance(exc, WorkerUnavailable):
        code, public = "unavailable", {}
    elif isinstance(exc, UserError):
        code, public = "config", {}
    else:
        code, public = "internal", {}
    if not isinstance(exc, UserError):  # a bug: its traceback, for the owner's operator
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"{who}: refused ({code}): {exc}", file=sys.stderr, flush=True)
    return Released(error_code=ERROR_CODES[code], reason=reason_of(code, public))


def reason_of(code: str, public: Mapping[str, Any]) -> str:
    """``code k=v ...``: the whole reason an owner sends, sorted so equal refusals are equal bytes."""
    return " ".join([code, *(f"{k}={_public_value(v)}" for k, v in sorted(public.items()))])


def refusal_from(code: int | str, reason: str) -> Refusal:
    """The :class:`Refusal` a released error stands for (the relay's side): code and parameters only."""
    name = CODE_NAMES.get(int(code), "internal") if not isinstance(code, str) else code
    name = name if name in REFUSAL_CODES else "internal"
    params = dict(part.split("=", 1) for part in str(reason).split()[1:] if "=" in part)
    return Refusal(name, f"the owner worker refused: {reason}", **params)


def _public_value(value: Any) -> str:
    # public parameters are names and small public numbers; spaces would split the reason
    return str(value).replace(" ", "_")


def _finite(protected: Protected) -> bool:
    for value in protected.arrays.values():
        if np.issubdtype(np.asarray(value).dtype, np.floating) and not np.isfinite(value).all():
            return False
    return True


def dp_requested(run_config: Mapping[str, Any]) -> bool:
    """Whether a run config asks for DP; one that cannot say counts as DP (the gate fails closed)."""
    name = run_config.get("dp.name")
    return not (isinstance(name, str) and name == "off")

