"""The secure-aggregation backend contract, free of Flower.

Every backend computes the same weighted FedAvg of adapter deltas (see ``core/payload.py``) and
differs only in who can see what on the way:

1. each owner ``protect``s ``(delta_k, n_k)`` for one :class:`RoundContext` into a ``Protected`` payload;
2. the server ``validate``s each payload and ``combine``s those that arrived into a ``Combined``
   (it never needs to read them), which names any owner the backend itself left out;
3. whoever holds the key ``reveal``s the combined payload into ``(sum_k n_k delta_k, sum_k n_k)``.

A backend also says how owners read the global adapter the server sends (``open_global``), what
owners need each round besides it (``round_config``), who holds the global between rounds (a
:class:`GlobalHolder`: the server in clear, or ``BackendSpec.held_global``) and what an owner
does after evaluating it (the owner-side hooks ``after_evaluate`` and ``writes_final_adapter``).
The registry (``__init__.py``) says, per backend, how each side is built, whether owners key the
federation first and whether a run can resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Protocol

import numpy as np

from fedveil.core import wire
from fedveil.core.errors import Refusal
from fedveil.core.payload import Combined, PayloadError, Protected, Revealed, RoundContext


class ServerSide(Protocol):
    name: str
    server_can_reveal: bool  # True only where the server may see the aggregate in clear
    server_sees_updates: bool  # True only where the server sees each owner's update (plain)

    def validate(self, payload: Protected) -> None:
        """Raise :class:`PayloadError` unless ``payload`` is well formed for this setup."""

    def combine(self, payloads: dict[str, Protected], ctx: RoundContext) -> Combined: ...

    def reveal(self, combined: Protected) -> Revealed: ...

    def round_config(self) -> dict[str, str]:
        """Per-round values owners need (crypten: the parties' public keys)."""


class OwnerSide(Protocol):
    def protect(self, delta: np.ndarray, weight: float, ctx: RoundContext) -> Protected: ...

    def open_global(self, arrays: dict[str, np.ndarray], initial: np.ndarray, after_round: int) -> np.ndarray:
        """The global adapter after round ``after_round`` (0: the starting adapter) from the server's arrays."""

    def after_evaluate(self, global_vector: np.ndarray, per_round: dict[str, Any], owner_id: str,
                       after_round: int) -> Optional[Protected]:
        """What owner ``owner_id`` sends back with its evaluation of ``global_vector`` (the global after
        ``after_round``), as the server's ``per_round`` values ask (its holder's ``handover``); None:
        nothing. ``tenseal``: the global re-encrypted and signed, by the one owner asked, for the
        server to hold between rounds. It may depend on the global and public values only, never on
        the owner's data (it leaves through the release gate beside the evaluation)."""

    def writes_final_adapter(self, per_round: dict[str, Any]) -> bool:
        """Whether the owner writes this round's global into its own state directory as the final
        adapter (where the server never holds it in clear, so cannot write it: ``tenseal``)."""

    def reveal_eval_mean(self, combined: Protected, ctx: RoundContext) -> float:
        """The token-weighted held-out loss of a round's eval pairs, opened by this owner where the server
        cannot open their sum (``tenseal``: every signed pair checked, the mean only in the reply)."""


class ServerHoldsGlobal:
    """The owner-side hooks of a backend whose server holds the global in clear (``plain``,
    ``crypten``): an owner seals nothing for it and writes no final adapter (the server does)."""

    def after_evaluate(self, global_vector: np.ndarray, per_round: dict[str, Any], owner_id: str,
                       after_round: int) -> Optional[Protected]:
        return None

    def writes_final_adapter(self, per_round: dict[str, Any]) -> bool:
        return False

    def reveal_eval_mean(self, combined: Protected, ctx: RoundContext) -> float:
        raise Refusal("config", "this backend's server (or its parties) opens the held-out sum; no owner does",
                      key="aggregation.name")


class GlobalHolder(Protocol):
    """The server's one holder of the global adapter between rounds (``server/global_state.py``'s
    ``ClearGlobal``, or the backend's own, ``BackendSpec.held_global``): the same arrays go to owners
    (the Message's global record) and into checkpoints."""

    def arrays(self) -> dict[str, np.ndarray]: ...

    def arrays_for(self, owner: str) -> Optional[dict[str, np.ndarray]]:
        """What ``owner``'s message carries where it is less than :meth:`arrays` (None: all of it)."""

    def opened(self, after_round: int, replied: dict[str, bool]) -> None:
        """The owners sent the global after ``after_round`` and whether each replied without error."""

    def apply(self, outcome: Any) -> None:
        """Advance by a round's outcome (the server's ``TrainOutcome``)."""

    def handover(self, server_round: int, accepted: Any, owners: list[str], last: bool) -> dict[str, Any]:
        """The per-round values the evaluate message of round ``server_round`` carries for the owners'
        ``after_evaluate``/``writes_final_adapter`` (``accepted``: the owners whose updates it took,
        ``owners``: those keyed at set-up, ``last``: the run's last round); {}: none."""

    def adopt(self, evaluated: dict[str, Protected], asked: str | None = None,
              after_round: int | None = None) -> Optional[str]:
        """Take up what the owners' ``after_evaluate`` sent (owner id -> payload), from the owner
        asked at the last ``handover`` only; returns why it refused one (None: adopted, or none)."""

    def final_adapter(self, out: Path, save: Callable[[np.ndarray, Path], None]) -> str:
        """Write the final adapter where the server can (``save(vector, folder)``) and say where it is."""

    def restored(self, arrays: dict[str, np.ndarray]) -> "GlobalHolder":
        """A holder of the checkpointed ``arrays``, checked as this one would check them."""


def clear_global(arrays: dict[str, np.ndarray], initial: np.ndarray | None = None,
                 after_round: int | None = None) -> np.ndarray:
    """The global adapter where the server holds it in clear (and is trusted with it)."""
    if wire.CLEAR_GLOBAL not in arrays:
        raise PayloadError("the global adapter is missing from the server's message")
    return np.asarray(arrays[wire.CLEAR_GLOBAL], np.float32)


def clear_global_bytes(values: int, messages: int = 2) -> int:
    """Bytes one owner downloads per round of a global the server holds in clear: the fp32 adapter in
    each of the round's ``messages`` (2: the train and the evaluate message; 1: the train message alone,
    which carries the evaluation of the round before: ``eval_in_train``)."""
    return messages * 4 * values


@dataclass
class Cost:
    """Bytes per round (exact payloads) and the backend's added seconds per round (rough): what a
    backend's ``BackendSpec.cost`` returns (seconds 0) and the planner completes (seconds from
    calibration.json).

    ``update_up``: what one owner uploads for its update (the backend's ``protect`` payload).
    ``global_down``: what one owner downloads of the global adapter per round (train + evaluate
    messages; ``carried``: see below), in steady state; ``global_down_first``: in round 1 (tenseal: the evaluate message
    carries every accepted owner's signed update of the round, so it grows with the owners).
    ``reencrypt_up``: tenseal, what the one owner asked each round uploads besides (Enc(global) and
    its signature). ``party_in`` / ``party_out``: crypten, per party per round (every owner's share
    in, the float64 aggregate out; the parties' own MPC traffic is not counted).

    The held-out pair (``privacy/secagg/eval_pair.py``), without DP only (under DP none of it
    exists: all 0): ``eval_up``, what one evaluating owner uploads for its pair per round (in its
    evaluate reply); ``evalsum_down`` / ``evalsum_up``: tenseal, the ``query.evalsum`` message to the
    one owner that reveals the mean (the cohort's signed pairs) and its reply (the mean, one float64);
    crypten's ``party_in`` grows by every owner's pair shares and ``party_out`` by the pair's sum.

    ``per_owner`` counts what every owner moves (update and pair up, global down): the byte limit
    ``privacy.max_bytes_per_round`` checks it. What one owner moves besides, asked by the server
    (``reencrypt_up``, ``evalsum_*``), counts once in ``per_round``. Flower's config and metric
    records add a few KB per message to all of these; they are not counted.

    ``carried`` (``eval_in_train``, the default): round r's evaluation rides in round r+1's train
    message, so the figures above are of such a round (``global_down``: the train message alone;
    ``global_down_first``: round 1's; ``global_down_second``: round 2's where it differs, tenseal's
    pending updates over the starting adapter); only the last round adds the evaluate message
    (``evaluate_down``, ``evaluate_down_first`` where round 1 is the last) and carries two
    evaluations' pairs, evalsums and re-encryptions (:meth:`evaluations_in`, :meth:`reencrypts_in`).
    :meth:`down_in` gives any round's download; ``per_owner`` stays a steady-state round's, and
    :meth:`last_per_owner` says what the last round moves. An owner left out of a round (``lost_update``)
    makes that round evaluate apart: not priced.

    A new payload every owner sends each round is one more field (default 0, so backends that do not
    send it need no change), added to :attr:`per_owner`; ``as_dict`` picks it up.
    """

    backend: str
    values: int
    owners: int
    update_up: int
    global_down: int
    global_down_first: int
    reencrypt_up: int = 0
    party_in: int = 0
    party_out: int = 0
    parties: int = 0
    eval_up: int = 0
    evalsum_down: int = 0
    evalsum_up: int = 0
    # tenseal's verifier committee (``tenseal/committee.py``; forms other than ``every``): every owner
    # reveals its nonce (``reveal_up``); ``committee`` owners download ``committee_down`` instead of
    # ``global_down`` (every update of the round besides) and upload their signature (``committee_up``)
    reveal_up: int = 0
    committee: int = 0
    committee_down: int = 0
    committee_up: int = 0
    # carried: a committee member gets the round it certified without the sum (it computed it) in the next round's
    # train message; ``committee_down`` is a member that was not on the round before's committee (the most), and
    # ``member_kept`` what each of the c owners that were on it does not download (the mean counts them)
    member_kept: int = 0
    seconds: float = 0.0  # rough: protect + aggregate + reveal, from calibration.json; training excluded
    carried: bool = False
    global_down_second: Optional[int] = None  # None: as global_down
    evaluate_down: int = 0
    evaluate_down_first: int = 0

    @classmethod
    def of(cls, figures: Mapping[str, Any]) -> "Cost":
        """The cost as :meth:`as_dict` wrote it (e.g. summary.json's plan); fields it lacks (a plan from
        before them) take their defaults."""
        return cls(**{f.name: figures[f.name] for f in fields(cls) if f.name in figures})

    def down_in(self, server_round: int, rounds: int) -> int:
        """What one owner (outside any committee) downloads of the global in round ``server_round`` of ``rounds``."""
        if not self.carried:
            return self.global_down_first if server_round == 1 else self.global_down
        if server_round <= 2:
            train = self.global_down_first if server_round == 1 else self.second_down
        else:
            train = self.global_down
        if server_round < rounds:
            return train
        return train + (self.evaluate_down_first if server_round == 1 else self.evaluate_down)

    @property
    def second_down(self) -> int:
        """Round 2's download where it is not the last (carried tenseal: round 1's updates alone)."""
        return self.global_down if self.global_down_second is None else self.global_down_second

    def evaluations_in(self, server_round: int, rounds: int) -> int:
        """How many rounds' evaluations round ``server_round`` carries (each: every evaluating owner's held-out
        pair up, tenseal's one evalsum): 1; carried, the last round 2 (the round before's and its own)."""
        return 2 if self.carried and server_round == rounds else 1

    def reencrypts_in(self, server_round: int, rounds: int) -> int:
        """How many re-encrypted globals (``reencrypt_up``) round ``server_round`` brings: 1; carried, none in
        round 1 (no one hands over the starting adapter), and in the last round its own besides the round before's."""
        if not self.carried:
            return 1
        return (server_round > 1) + (server_round == rounds)

    def last_per_owner(self, rounds: int) -> int:
        """:attr:`per_owner` for the last of ``rounds`` (carried: the evaluate message and a second pair
        besides, over a steady round's figure)."""
        extra = self.down_in(rounds, rounds) - self.global_down
        return self.per_owner + extra + (self.evaluations_in(rounds, rounds) - 1) * self.eval_up

    @property
    def max_down(self) -> int:
        """The most one owner downloads in a steady-state round (a committee member's, where there is one)."""
        return max(self.global_down, self.committee_down if self.committee else 0)

    @property
    def mean_down(self) -> float:
        """The mean over the round's owners of what each downloads."""
        if not self.committee:
            return float(self.global_down)
        return ((self.owners - self.committee) * self.global_down + self.committee * self.committee_down
                - self.committee * self.member_kept) / self.owners

    @property
    def per_owner(self) -> int:
        """Update and held-out pair up + global down for an owner in a steady-state round, the most any
        owner moves (a committee member's, where there is one): what the byte limit checks."""
        return self.update_up + self.eval_up + self.reveal_up + self.max_down + (self.committee_up if self.committee
                                                                                 else 0)

    @property
    def per_round(self) -> int:
        """All of a steady-state round: every owner's update, pair and global, the one owner's
        re-encryption and evalsum, the committee's extra, the parties'."""
        every = self.update_up + self.eval_up + self.reveal_up + self.global_down
        extra = self.committee * (self.committee_down - self.global_down + self.committee_up - self.member_kept)
        return (self.owners * every + extra + self.reencrypt_up + self.evalsum_down + self.evalsum_up
                + self.parties * (self.party_in + self.party_out))

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "per_owner": self.per_owner, "per_round": self.per_round, "max_down": self.max_down,
                "mean_down": self.mean_down}


def server_sees_counts(backend: Any, dp_on: bool) -> bool:
    """May the coordinator see an owner's counts (examples, held-out tokens)? The one rule, called by
    the owner (what it sends as weight) and the server (what it records): only where it sees each
    update anyway (``backend.server_sees_updates``: plain) and without DP (there a count is data)."""
    return bool(backend.server_sees_updates) and not dp_on


__all__ = ["Combined", "Cost", "GlobalHolder", "OwnerSide", "PayloadError", "Protected", "Revealed", "RoundContext",
           "ServerHoldsGlobal", "ServerSide", "clear_global", "clear_global_bytes", "server_sees_counts"]
