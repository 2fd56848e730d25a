"""``SecureAggregation``: wraps a base strategy so that updates are aggregated by a backend.

In the style of Flower's DP wrappers: node sampling, configuration and evaluation-metric
averaging stay with the base strategy (FedAvg); this wrapper stamps the adapter layout into every
instruction, checks it on every reply, refuses malformed payloads client by client (the round
goes on with the others) and lets the backend combine what arrived.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedveil.core import wire
from fedveil.core.errors import UserError
from fedveil.core.layout import AdapterLayout
from fedveil.privacy.secagg.base import Backend, Protected


@dataclass
class TrainRound:
    """What the server learned about one training round (for metrics.jsonl and the ledger)."""

    accepted: dict[str, dict[str, float]] = field(default_factory=dict)  # client id -> metrics
    excluded: dict[str, str] = field(default_factory=dict)  # client id or node -> reason
    node_to_client: dict[int, str] = field(default_factory=dict)
    combined: Protected | None = None  # what the backend combined (ciphertexts for sealed backends)
    aggregate_seconds: float = 0.0
    reveal_seconds: float = 0.0


def error_reason(msg: Message, limit: int = 300) -> str:
    """One line from an error reply (Ray wraps client tracebacks; keep their last message)."""
    reason = str(msg.error.reason or f"error code {msg.error.code}")
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1].rstrip("'>\n ")
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."


def client_label(msg: Message) -> str:
    if msg.has_content() and wire.META in msg.content:
        return str(msg.content.config_records[wire.META].get(wire.CLIENT_KEY, ""))
    return f"node_{msg.metadata.src_node_id}"


class SecureAggregation(Strategy):
    """Aggregate adapter deltas through ``backend``; everything else is ``base``'s."""

    def __init__(self, base: Strategy, backend: Backend, layout: AdapterLayout) -> None:
        self.base, self.backend, self.layout = base, backend, layout
        self.current: np.ndarray | None = None  # the global vector the round started from
        self.last_train = TrainRound()

    def summary(self) -> None:
        self.base.summary()

    def _stamp(self, config: ConfigRecord) -> ConfigRecord:
        config[wire.DIGEST_KEY] = self.layout.digest
        return config

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.current = wire.record_vector(arrays) if "adapter" in arrays else None
        return self.base.configure_train(server_round, arrays, self._stamp(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        return self.base.configure_evaluate(server_round, arrays, self._stamp(config), grid)

    def _accept(self, msg: Message) -> tuple[str, Protected, dict[str, float]]:
        """Validate one reply; raise :class:`UserError` with the reason to exclude it."""
        who = client_label(msg)
        if msg.has_error():
            raise UserError(f"client failed: {error_reason(msg)}")
        content = msg.content
        if wire.META not in content or wire.METRICS not in content:
            raise UserError("reply lacks its meta or metrics record")
        self.layout.check(str(content.config_records[wire.META].get(wire.DIGEST_KEY, "")), who)
        metrics = dict(content.metric_records[wire.METRICS])
        weight = float(metrics.get(wire.WEIGHT_KEY, -1))
        if not weight > 0:
            raise UserError(f"reply has no positive '{wire.WEIGHT_KEY}'")
        protected = wire.records_to_protected(content)
        self.backend.validate(protected)
        return who, protected, metrics

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        log = self.last_train = TrainRound()
        payloads, order = [], []
        for msg in replies:
            who = client_label(msg)
            log.node_to_client[msg.metadata.src_node_id] = who
            try:
                who, protected, metrics = self._accept(msg)
            except UserError as exc:
                log.excluded[who] = str(exc)
                continue
            log.accepted[who] = metrics
            payloads.append(protected)
            order.append(who)
        if not payloads:
            return None, None
        start = time.perf_counter()
        combined = log.combined = self.backend.combine(payloads, clients=order, server_round=server_round,
                                                       layout_digest=self.layout.digest)
        log.aggregate_seconds = time.perf_counter() - start
        for who, status in zip(order, getattr(self.backend, "last_status", None) or []):
            if status != "ok":  # the parties' MPC left this owner out (norm over the bound, bad share)
                log.excluded[who] = f"dropped by the aggregator parties: {status}"
                log.accepted.pop(who)
        if not log.accepted:
            return None, None
        metrics = MetricRecord(weighted_means(log.accepted))
        if not self.backend.server_can_reveal:
            return None, metrics  # the server keeps the ciphertext; owners reveal it
        start = time.perf_counter()
        revealed = self.backend.reveal(combined)
        log.reveal_seconds = time.perf_counter() - start
        new_global = (self.current + revealed.mean).astype(np.float32)
        return wire.vector_record(new_global), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = [m for m in replies if not m.has_error() and wire.METRICS in m.content]
        if not replies:
            return None
        return MetricRecord(weighted_means({client_label(m): dict(m.content.metric_records[wire.METRICS]) for m in replies}))


def weighted_means(per_client: dict[str, dict[str, float]]) -> dict[str, float]:
    """Metrics averaged with ``num-examples`` weights; ``num-examples`` itself is summed."""
    total = sum(float(m[wire.WEIGHT_KEY]) for m in per_client.values())
    keys = sorted({k for m in per_client.values() for k in m} - {wire.WEIGHT_KEY})
    out = {k: sum(float(m.get(k, 0.0)) * float(m[wire.WEIGHT_KEY]) for m in per_client.values()) / total for k in keys}
    out[wire.WEIGHT_KEY] = total
    return out
