"""SecureAggregation + the global state on hand-made Flower replies: averaging, and refusing bad replies one by one."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedveil.core import records, wire
from fedveil.core.layout import AdapterLayout
from fedveil.privacy.secagg.plain import PlainBackend
from fedveil.server.global_state import ClearGlobal
from fedveil.server.strategy import SecureAggregation

LAYOUT = AdapterLayout.of({"w.lora_A": np.zeros((2, 2), np.float32)})


@pytest.fixture(autouse=True)
def task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def instruction(node):
    return Message(content=RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=node, message_type="train")


def train_reply(node, delta, n, digest=LAYOUT.digest, backend=PlainBackend(size=4)):
    content = records.reply(
        {"num-examples": n, "train-loss": 1.0 * node},
        {wire.LAYOUT_DIGEST: digest, wire.OWNER_ID: f"client_{node}"},
        backend.protect(np.asarray(delta, np.float32), n),
    )
    return Message(content, reply_to=instruction(node))


STRATEGY = SecureAggregation(FedAvg(), PlainBackend(size=4), LAYOUT)


def round_from(start, replies):
    """(new global vector, the round's outcome) from a global ``start`` and the replies."""
    state = ClearGlobal(np.asarray(start, np.float32))
    outcome = STRATEGY.aggregate_train(1, replies)
    state.apply(outcome)
    return state.vector, outcome


def test_weighted_average_of_deltas_is_added_to_the_global():
    vector, outcome = round_from([1, 1, 1, 1], [train_reply(1, [1, 0, 0, 0], 1), train_reply(2, [0, 4, 0, 0], 3)])
    metrics = outcome.metrics
    np.testing.assert_allclose(vector, [1.25, 4.0, 1.0, 1.0])
    assert metrics["num-examples"] == 4 and metrics["train-loss"] == pytest.approx((1 * 1 + 2 * 3) / 4)
    assert sorted(outcome.accepted) == ["client_1", "client_2"] and not outcome.excluded


def test_layout_mismatch_error_and_malformed_replies_are_excluded_and_the_round_goes_on():
    other = AdapterLayout.of({"w.lora_A": np.zeros((3, 2), np.float32)})
    replies = [
        train_reply(1, [2, 2, 2, 2], 1),
        train_reply(2, [9, 9, 9, 9], 1, digest=other.digest),
        Message(Error(code=4000, reason="privacy budget exhausted"), reply_to=instruction(3)),
        train_reply(4, [1, 1, 1, 1, 1], 1, backend=PlainBackend(size=5)),
    ]
    vector, outcome = round_from([0, 0, 0, 0], replies)
    np.testing.assert_allclose(vector, [2, 2, 2, 2])
    excluded = outcome.excluded
    assert set(excluded) == {"client_2", "node_3", "client_4"}
    assert "adapter layout mismatch" in excluded["client_2"]
    assert "privacy budget exhausted" in excluded["node_3"]
    assert "layout has 4" in excluded["client_4"]


def test_nothing_accepted_means_no_new_global():
    vector, outcome = round_from([0, 0, 0, 0], [Message(Error(code=1, reason="boom"), reply_to=instruction(1))])
    assert (outcome.revealed, outcome.metrics) == (None, None)
    np.testing.assert_array_equal(vector, [0, 0, 0, 0])


def test_tenseal_dropout_and_tampering_leave_the_sum_of_what_arrived(tmp_path):
    from fedveil.core.payload import RoundContext
    from fedveil.privacy.secagg import backend_spec
    from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster
    from fedveil.privacy.secagg.tenseal import keys as setup
    from fedveil.privacy.secagg.tenseal.backend import TensealServer
    from fedveil.privacy.secagg.tenseal.config import TensealConfig
    from fedveil.privacy.secagg.tenseal.global_codec import EncryptedGlobal

    cfg = TensealConfig(max_owners=4, max_weight=4.0, value_bound=2.0)  # BFV: the weights and values played here
    owners = {f"client_{n}": OwnerKeys(f"client_{n}", str(tmp_path / f"client_{n}")) for n in (1, 2, 3, 4)}
    pin_roster({o: k.state_dir for o, k in owners.items()}, "client_1")
    made = setup.generate(cfg, owners["client_1"], "run", {})
    for o, k in owners.items():
        setup.install(k, "run", public=made.public, statement=made.statement, signature=made.signature,
                      sealed=made.sealed[o])
    sides = {o: backend_spec("tenseal").owner(cfg, 4, k, {}, run="run") for o, k in owners.items()}

    def reply(node, delta, n):
        who = f"client_{node}"
        payload = sides[who].protect(np.asarray(delta, np.float32), n, RoundContext(1, LAYOUT.digest, who))
        content = records.reply({"num-examples": n, "train-loss": 1.0}, {wire.LAYOUT_DIGEST: LAYOUT.digest,
                                                                           wire.OWNER_ID: who}, payload)
        return Message(content, reply_to=instruction(node))

    server = TensealServer(cfg, 4, public=made.public, run="run",
                           signers={o: k.member().verify_key for o, k in owners.items()})
    s = SecureAggregation(FedAvg(), server, LAYOUT)
    state = EncryptedGlobal(check=server.check_global)  # the server holds no plaintext global
    tampered = reply(3, [5, 5, 5, 5], 1)
    blobs = tampered.content.config_records[wire.BLOBS]
    blob = bytearray(blobs["ciphertext"])
    blob[100] ^= 1
    blobs["ciphertext"] = bytes(blob)
    # client 2 dropped out mid-round: no reply at all
    outcome = s.aggregate_train(1, [reply(1, [1, 0, 0, 0], 1), tampered, reply(4, [0, 0, 0, 2], 3)])
    state.apply(outcome)
    assert outcome.revealed is None and outcome.metrics["num-examples"] == 4  # no model, only the ciphertext sum
    assert set(outcome.excluded) == {"client_3"} and "SHA-256" in outcome.excluded["client_3"]
    owner = sides["client_1"]
    revealed = owner.reveal(outcome.combined)
    np.testing.assert_allclose(revealed.mean, [0.25, 0, 0, 1.5], atol=1e-6)
    np.testing.assert_allclose(
        owner.open_global(state.arrays(), np.zeros(4, np.float32), 1), [0.25, 0, 0, 1.5], atol=1e-6
    )
    with pytest.raises(Exception, match="cannot decrypt"):
        s.backend.reveal(outcome.combined)
