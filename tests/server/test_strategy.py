"""SecureAggregation on hand-made Flower replies: averaging, and refusing bad replies one by one."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedveil.core import wire
from fedveil.core.layout import AdapterLayout
from fedveil.privacy.secagg.plain import PlainBackend
from fedveil.server.strategy import SecureAggregation

LAYOUT = AdapterLayout.of({"w.lora_A": np.zeros((2, 2), np.float32)})


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def instruction(node):
    return Message(content=RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type="train")


def train_reply(node, delta, n, digest=LAYOUT.digest, backend=PlainBackend(size=4)):
    content = wire.reply({"num-examples": n, "train-loss": 1.0 * node}, {wire.DIGEST_KEY: digest, wire.CLIENT_KEY: f"client_{node}"},
                         backend.protect(np.asarray(delta, np.float32), n))
    return Message(content, reply_to=instruction(node))


def strategy_at(start):
    s = SecureAggregation(FedAvg(), PlainBackend(size=4), LAYOUT)
    s.current = np.asarray(start, np.float32)
    return s


def test_weighted_average_of_deltas_is_added_to_the_global():
    s = strategy_at([1, 1, 1, 1])
    arrays, metrics = s.aggregate_train(1, [train_reply(1, [1, 0, 0, 0], 1), train_reply(2, [0, 4, 0, 0], 3)])
    np.testing.assert_allclose(wire.record_vector(arrays), [1.25, 4.0, 1.0, 1.0])
    assert metrics["num-examples"] == 4 and metrics["train-loss"] == pytest.approx((1 * 1 + 2 * 3) / 4)
    assert sorted(s.last_train.accepted) == ["client_1", "client_2"] and not s.last_train.excluded


def test_layout_mismatch_error_and_malformed_replies_are_excluded_and_the_round_goes_on():
    s = strategy_at([0, 0, 0, 0])
    other = AdapterLayout.of({"w.lora_A": np.zeros((3, 2), np.float32)})
    replies = [
        train_reply(1, [2, 2, 2, 2], 1),
        train_reply(2, [9, 9, 9, 9], 1, digest=other.digest),
        Message(Error(code=4000, reason="privacy budget exhausted"), reply_to=instruction(3)),
        train_reply(4, [1, 1, 1, 1, 1], 1, backend=PlainBackend(size=5)),
    ]
    arrays, _ = s.aggregate_train(1, replies)
    np.testing.assert_allclose(wire.record_vector(arrays), [2, 2, 2, 2])
    excluded = s.last_train.excluded
    assert set(excluded) == {"client_2", "node_3", "client_4"}
    assert "adapter layout mismatch" in excluded["client_2"]
    assert "privacy budget exhausted" in excluded["node_3"]
    assert "layout has 4" in excluded["client_4"]


def test_nothing_accepted_means_no_new_global():
    s = strategy_at([0, 0, 0, 0])
    assert s.aggregate_train(1, [Message(Error(code=1, reason="boom"), reply_to=instruction(1))]) == (None, None)


def test_tenseal_dropout_and_tampering_leave_the_sum_of_what_arrived():
    from fedveil.privacy.secagg.tenseal_ckks import (
        TensealBackend, TensealConfig, make_context, public_bytes, secret_bytes,
    )

    ctx = make_context(TensealConfig())
    owner = TensealBackend(TensealConfig(), 4, public=public_bytes(ctx), secret=secret_bytes(ctx))
    s = SecureAggregation(FedAvg(), TensealBackend(TensealConfig(), 4, public=public_bytes(ctx)), LAYOUT)
    s.current = None  # the server holds no plaintext global
    tampered = train_reply(3, [5, 5, 5, 5], 1, backend=owner)
    blobs = tampered.content.config_records[wire.BLOBS]
    blob = bytearray(blobs["ciphertext"])
    blob[100] ^= 1
    blobs["ciphertext"] = bytes(blob)
    # client 2 dropped out mid-round: no reply at all
    arrays, metrics = s.aggregate_train(1, [train_reply(1, [1, 0, 0, 0], 1, backend=owner), tampered,
                                            train_reply(4, [0, 0, 0, 2], 3, backend=owner)])
    assert arrays is None and metrics["num-examples"] == 4  # the server got no model, only the ciphertext sum
    assert set(s.last_train.excluded) == {"client_3"} and "SHA-256" in s.last_train.excluded["client_3"]
    revealed = owner.reveal(s.last_train.combined)
    np.testing.assert_allclose(revealed.mean, [0.25, 0, 0, 1.5], atol=1e-6)
    with pytest.raises(Exception, match="cannot decrypt"):
        s.backend.reveal(s.last_train.combined)
