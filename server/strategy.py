"""``SecureAggregation``: wraps a base strategy so that updates are aggregated by a backend.

In the style of Flower's DP wrappers: node sampling, configuration and evaluation-metric
averaging stay with the base strategy (FedAvg); this wrapper stamps the adapter layout into every
instruction, checks it on every reply, refuses malformed payloads owner by owner (the round
goes on with the others) and lets the backend combine what arrived. It returns what the round
produced (:class:`TrainOutcome`) and holds no global adapter: ``global_state`` does.
"""

from __future__ import annotations

import random
import time
from typing import Callable, Optional
from collections.abc import Iterable
from dataclasses import dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedveil.core import records, wire
from fedveil.core.errors import UserError
from fedveil.core.faults import maybe_die
from fedveil.core.layout import AdapterLayout
from fedveil.core.payload import EVAL_PAIR, Protected, Revealed, RoundContext, eval_pair_of, update_of
from fedveil.privacy.secagg.base import ServerSide
from fedveil.privacy.secagg.eval_pair import mean_of


@dataclass
class TrainOutcome:
    """What one training round produced (for the global state, metrics.jsonl and the round chain)."""

    accepted: dict[str, dict[str, float]] = field(default_factory=dict)  # owner id -> metrics
    excluded: dict[str, str] = field(default_factory=dict)  # owner id or node -> reason
    node_to_owner: dict[int, str] = field(default_factory=dict)
    combined: Protected | None = None  # what the backend combined (ciphertexts for encrypted backends)
    revealed: Revealed | None = None  # the aggregate, where the server may see it
    metrics: dict[str, float] | None = None  # weighted means of the accepted owners' metrics
    aggregate_seconds: float = 0.0
    reveal_seconds: float = 0.0
    carried_up: dict[int, int] = field(default_factory=dict)  # node -> bytes of its reply that are not its update
    payloads: dict[str, Protected] = field(default_factory=dict)  # accepted owner -> its update as it sent it


@dataclass
class EvalOutcome:
    """The round's held-out loss (None: not revealed, or under DP), or the combined pairs an owner reveals."""

    loss: float | None = None
    pending: Protected | None = None  # the backend's sum of pairs only an owner can open (tenseal)
    owners: list[str] = field(default_factory=list)  # whose pairs were summed
    excluded: dict[str, str] = field(default_factory=dict)  # owner id -> why its pair was left out
    note: str = ""  # why no loss was revealed


class SecureAggregation:
    """Aggregate adapter deltas through ``backend``; everything else is ``inner``'s."""

    def __init__(self, inner: Strategy, backend: ServerSide, layout: AdapterLayout,
                 decode: Optional[Callable[[Revealed], Revealed]] = None) -> None:
        """``decode``: what the revealed aggregate means in model units where owners send something else
        (dp=owner_level: integers, ``owner_level_plan.decode_sum``); None: it is the weighted sum already."""
        self.inner, self.backend, self.layout, self.decode = inner, backend, layout, decode

    def _stamp(self, config: ConfigRecord) -> ConfigRecord:
        config[wire.LAYOUT_DIGEST] = self.layout.digest
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                        nodes: list[int] | None = None,
                        per_node: dict[int, ArrayRecord] | None = None) -> Iterable[Message]:
        """``inner``'s training messages, or with ``nodes`` (the owners connected: ``server/availability.py``)
        one to each node of a sample of them as large as ``inner`` samples (FedAvg's ``fraction_train``,
        ``min_train_nodes``), all of them when fewer are connected; never waiting for more. ``per_node``:
        the global a node gets instead of ``arrays`` (the holder's ``arrays_for``)."""
        if nodes is None:
            return self.inner.configure_train(server_round, arrays, self._stamp(config), grid)
        wanted = max(int(len(nodes) * self.inner.fraction_train), self.inner.min_train_nodes)
        return self._messages(server_round, arrays, config, random.sample(nodes, min(wanted, len(nodes))),
                              MessageType.TRAIN, per_node)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                           nodes: list[int] | None = None,
                           per_node: dict[int, ArrayRecord] | None = None) -> Iterable[Message]:
        """``inner``'s evaluation messages, or with ``nodes`` one to each of those nodes (the round's cohort)."""
        if nodes is None:
            return self.inner.configure_evaluate(server_round, arrays, self._stamp(config), grid)
        return self._messages(server_round, arrays, config, nodes, MessageType.EVALUATE, per_node)

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, nodes: list[int],
                  message_type: str, per_node: dict[int, ArrayRecord] | None = None) -> list[Message]:
        config = self._stamp(config)
        config[wire.ROUND] = server_round  # as FedAvg sets it
        content = RecordDict({wire.GLOBAL: arrays, wire.CONFIG: config})
        per_node = per_node or {}
        return [Message(content=content if n not in per_node else RecordDict({wire.GLOBAL: per_node[n],
                                                                             wire.CONFIG: config}),
                        message_type=message_type, dst_node_id=n) for n in nodes]

    def _accept(self, msg: Message, reply: Protected | None) -> tuple[Protected, dict[str, float]]:
        """Validate one reply (``reply``: its payload, decoded once); raise :class:`UserError` with the reason
        to exclude it."""
        if msg.has_error():
            raise UserError(f"owner failed: {records.error_reason(msg)}")
        content = msg.content
        if wire.META not in content or wire.METRICS not in content:
            raise UserError("reply lacks its meta or metrics record")
        self.layout.check(str(content.config_records[wire.META].get(wire.LAYOUT_DIGEST, "")), records.owner_label(msg))
        metrics = dict(content.metric_records[wire.METRICS])
        weight = float(metrics.get(wire.NUM_EXAMPLES, -1))
        if not weight > 0:
            raise UserError(f"reply has no positive '{wire.NUM_EXAMPLES}'")
        protected = update_of(reply or Protected())
        self.backend.validate(protected)
        return protected, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> TrainOutcome:
        out = TrainOutcome()
        payloads: dict[str, Protected] = {}
        for msg in replies:
            who = records.owner_label(msg)
            out.node_to_owner[msg.metadata.src_node_id] = who
            reply = records.records_to_protected(msg.content) if msg.has_content() else None
            if reply is not None:
                out.carried_up[msg.metadata.src_node_id] = carried_nbytes(reply)
            try:
                payloads[who], out.accepted[who] = self._accept(msg, reply)
            except UserError as exc:
                out.excluded[who] = str(exc)
        if not payloads:
            return out
        maybe_die("aggregate", server_round)
        start = time.perf_counter()
        combined = self.backend.combine(payloads, RoundContext(server_round, self.layout.digest))
        out.aggregate_seconds = time.perf_counter() - start
        out.combined = combined.payload
        for who, reason in combined.excluded.items():  # e.g. the parties' MPC left this owner out
            out.excluded[who] = reason
            out.accepted.pop(who, None)
        if not out.accepted:
            return out
        out.metrics = weighted_means(out.accepted)
        out.payloads = {who: p for who, p in payloads.items() if who in out.accepted}
        if self.backend.server_can_reveal:  # elsewhere the server keeps the ciphertext; owners reveal it
            start = time.perf_counter()
            out.revealed = self.backend.reveal(out.combined)
            if self.decode is not None:
                out.revealed = self.decode(out.revealed)
            out.reveal_seconds = time.perf_counter() - start
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> EvalOutcome:
        """The round's held-out loss, token-weighted over the owners whose pairs the backend summed
        (``privacy/secagg/eval_pair.py``): revealed here where the server may see the sum, else left
        ``pending`` for one owner to reveal. Under DP owners send no pair: no loss."""
        pairs = {}
        for m in replies:
            if m.has_content() and not m.has_error() and wire.META in m.content:
                pair = eval_pair_of(records.records_to_protected(m.content))
                if pair is not None:
                    pairs[records.owner_label(m)] = pair
        if not pairs:
            return EvalOutcome()
        try:
            combined = self.backend.combine(pairs, RoundContext(server_round, self.layout.digest, purpose=EVAL_PAIR))
            summed = sorted(set(pairs) - set(combined.excluded))
            if not self.backend.server_can_reveal:  # tenseal: the server cannot open the sum
                pending = combined.payload if summed else None
                return EvalOutcome(None, pending, summed, combined.excluded)
            return EvalOutcome(mean_of(self.backend.reveal(combined.payload)), None, summed, combined.excluded)
        except UserError as exc:  # e.g. the crypten parties' floor: nothing revealed, the round goes on
            return EvalOutcome(excluded={who: str(exc) for who in pairs}, note=str(exc))


def carried_nbytes(reply: Protected) -> int:
    """Bytes of a train reply's payload that are not its update (what ``update_of`` leaves out)."""
    update = update_of(reply)
    carried = Protected({k: v for k, v in reply.arrays.items() if k not in update.arrays},
                        {k: v for k, v in reply.blobs.items() if k not in update.blobs})
    if not (carried.arrays or carried.blobs):
        return 0
    return records.content_nbytes(RecordDict(records.protected_to_records(carried)))


def weighted_means(per_owner: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metrics averaged with ``num-examples`` weights; ``num-examples`` itself is summed."""
    total = sum(float(m[wire.NUM_EXAMPLES]) for m in per_owner.values())
    keys = sorted({k for m in per_owner.values() for k in m} - {wire.NUM_EXAMPLES})
    out = {k: sum(float(m.get(k, 0.0)) * float(m[wire.NUM_EXAMPLES]) for m in per_owner.values()) / total for k in keys}
    out[wire.NUM_EXAMPLES] = total
    return out
