"""How fedveil's payloads ride in Flower Messages: the record names and their (de)coding.

Server -> client (train and evaluate)::

    "global":  ArrayRecord  plain: {"adapter": flat float32 vector}
                            sealed backends: {"base-ct": bytes of Enc(global), "pending-NNN": bytes of
                            Enc(sum n_k delta_k, sum n_k) per round not yet folded in}; no base-ct means
                            the seed-derived initial adapter every party computes itself
    "config":  ConfigRecord the experiment's flat config + "server-round" + "layout-digest"

Client -> server (train)::

    "update":  ArrayRecord  the backend's clear arrays          (Protected.arrays)
    "blobs":   ConfigRecord the backend's opaque bytes           (Protected.blobs)
    "metrics": MetricRecord num-examples, train-loss, seconds...
    "meta":    ConfigRecord "layout-digest", "client-id", status

Client -> server (evaluate)::

    "metrics": MetricRecord num-examples (held-out tokens), eval-loss
    "meta":    ConfigRecord as above
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedveil.privacy.secagg.base import Protected

GLOBAL, CONFIG, UPDATE, BLOBS, METRICS, META = "global", "config", "update", "blobs", "metrics", "meta"
KEYS = "keys"  # key set-up messages: public keys, public context, sealed boxes
ROUND_KEY, DIGEST_KEY, CLIENT_KEY = "server-round", "layout-digest", "client-id"
REENCRYPT_KEY, FINAL_KEY = "reencrypt-by", "final-adapter"  # sealed backends, evaluate only
REENCRYPTED = "global-ct"  # blob an owner returns with Enc(new global) when asked
WEIGHT_KEY = "num-examples"
PARTY_KEYS = "party-keys"  # crypten: the aggregator parties' X25519 public keys, hex, comma-separated
PER_ROUND_KEYS = (ROUND_KEY, DIGEST_KEY, REENCRYPT_KEY, FINAL_KEY, PARTY_KEYS)


def vector_record(vector: np.ndarray) -> ArrayRecord:
    return ArrayRecord({"adapter": Array(np.ascontiguousarray(vector, dtype=np.float32))})


def record_vector(record: ArrayRecord) -> np.ndarray:
    return record["adapter"].numpy()


def sealed_record(base: bytes | None, pending: list[bytes]) -> ArrayRecord:
    arrays = {} if base is None else {"base-ct": Array(np.frombuffer(base, dtype=np.uint8).copy())}
    arrays.update({f"pending-{i:03d}": Array(np.frombuffer(b, dtype=np.uint8).copy()) for i, b in enumerate(pending)})
    return ArrayRecord(arrays)


def record_sealed(record: ArrayRecord) -> tuple[bytes | None, list[bytes]]:
    base = record["base-ct"].numpy().tobytes() if "base-ct" in record else None
    pending = [record[k].numpy().tobytes() for k in sorted(k for k in record.keys() if k.startswith("pending-"))]
    return base, pending


def protected_to_records(p: Protected) -> dict[str, Any]:
    return {
        UPDATE: ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in p.arrays.items()}),
        BLOBS: ConfigRecord(dict(p.blobs)),
    }


def records_to_protected(content: RecordDict) -> Protected:
    arrays = {k: a.numpy() for k, a in content.array_records[UPDATE].items()} if UPDATE in content else {}
    blobs = {k: v for k, v in content.config_records[BLOBS].items()} if BLOBS in content else {}
    return Protected(arrays=arrays, blobs=blobs)


def split_config(record: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(experiment run config, per-round keys) from a message's config record."""
    run_config = {k: v for k, v in record.items() if k not in PER_ROUND_KEYS}
    per_round = {k: record[k] for k in PER_ROUND_KEYS if k in record}
    return run_config, per_round


def content_nbytes(content: RecordDict) -> int:
    """Bytes of payload in a message (arrays, configs, metrics; keys included)."""
    return sum(record.count_bytes() for record in content.values())


def reply(metrics: Mapping[str, float], meta: Mapping[str, Any], protected: Protected | None = None) -> RecordDict:
    records: dict[str, Any] = {METRICS: MetricRecord(dict(metrics)), META: ConfigRecord(dict(meta))}
    if protected is not None:
        records.update(protected_to_records(protected))
    return RecordDict(records)
