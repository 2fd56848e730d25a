"""How fedveil's payloads ride in Flower Messages: the codec between records and plain values.

The names are in :mod:`fedveil.core.wire`; this module is the only one in core that imports Flower.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedveil.core import wire
from fedveil.core.payload import Protected


def arrays_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def record_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def protected_to_records(p: Protected) -> dict[str, Any]:
    return {wire.UPDATE: arrays_record(p.arrays), wire.BLOBS: ConfigRecord(dict(p.blobs))}


def records_to_protected(content: RecordDict) -> Protected:
    arrays = record_arrays(content.array_records[wire.UPDATE]) if wire.UPDATE in content else {}
    blobs = dict(content.config_records[wire.BLOBS].items()) if wire.BLOBS in content else {}
    return Protected(arrays=arrays, blobs=blobs)


def split_config(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(experiment run config, per-round keys) from a message's config record."""
    run_config = {k: v for k, v in record.items() if k not in wire.PER_ROUND_KEYS}
    per_round = {k: record[k] for k in wire.PER_ROUND_KEYS if k in record}
    return run_config, per_round


def content_nbytes(content: RecordDict) -> int:
    """Bytes of payload in a message (arrays, configs, metrics; keys included)."""
    return sum(record.count_bytes() for record in content.values())


def reply(metrics: Mapping[str, float], meta: Mapping[str, Any], protected: Protected | None = None) -> RecordDict:
    records: dict[str, Any] = {wire.METRICS: MetricRecord(dict(metrics)), wire.META: ConfigRecord(dict(meta))}
    if protected is not None:
        records.update(protected_to_records(protected))
    return RecordDict(records)


def owner_label(msg: Message) -> str:
    """The owner id a reply names, or ``node_<id>`` for a reply without one."""
    if msg.has_content() and wire.META in msg.content:
        return str(msg.content.config_records[wire.META].get(wire.OWNER_ID, ""))
    return f"node_{msg.metadata.src_node_id}"


def error_reason(msg: Message, limit: int = 300) -> str:
    """One line from an error reply (Ray wraps owner tracebacks; keep their last message)."""
    reason = str(msg.error.reason or f"error code {msg.error.code}")
    if "Message: " in reason:
        reason = reason.rsplit("Message: ", 1)[1].rstrip("'>\n ")
    reason = " ".join(reason.split())
    return reason if len(reason) <= limit else reason[: limit - 3] + "..."
