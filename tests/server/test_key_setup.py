"""The server's tenseal key set-up against real owners' operations (Flower-free relay): keying once,
refusing to key a run again, and taking the held context up on resume."""

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedveil.client.operations import handle
from fedveil.client.owner import OwnerIdentity
from fedveil.client.protocol import Instruction
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import records, wire
from fedveil.core.errors import UserError
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.identity import pin_roster
from fedveil.privacy.secagg.tenseal import keys as tenseal_keys
from fedveil.server import key_setup

OWNERS = {1: "client_0", 2: "client_1", 3: "client_2"}
SETUP = backend_spec("tenseal").key_setup


@pytest.fixture()
def relay(tmp_path, monkeypatch):
    """``key_setup.ask`` answered in-process by each node's owner (``client/operations.handle``)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    states = {o: tmp_path / o for o in OWNERS.values()}
    pin_roster(states, "client_0")

    def ask(grid, nodes, message_type, run_config, keys, timeout):
        cfg = from_dict(
            {
                "output_dir": str(tmp_path / "run"),
                "model": {"path": "/m"},
                "aggregation": {"name": "tenseal"},
                "dp": {"name": "off"},
                "resume": bool(run_config.get("resume")),
            }
        )
        replies = {}
        for n in nodes:
            op = message_type.split(".")[1]
            answer = handle(Instruction(op, run_config, {}, {}, dict(keys.get(n, {}))),
                            OwnerIdentity(OWNERS[n], "/data", str(states[OWNERS[n]])), cfg)
            sent = Message(RecordDict({wire.CONFIG: ConfigRecord({})}), dst_node_id=n, message_type=message_type)
            replies[n] = Message(records.reply(answer.metrics, answer.meta, answer.protected), reply_to=sent)
        return replies

    monkeypatch.setattr(key_setup, "ask", ask)
    monkeypatch.setattr(key_setup, "sample_nodes", lambda grid, n, m: (sorted(OWNERS), []))
    run_config = to_run_config(from_dict({"output_dir": str(tmp_path / "run"), "model": {"path": "/m"},
                                          "aggregation": {"name": "tenseal"}, "dp": {"name": "off"}}))
    return states, run_config


def test_a_run_is_keyed_once_and_a_restart_resumes_with_the_held_context(relay):
    states, run_config = relay
    keyed = key_setup.setup_keys(None, run_config, 3, "", 1.0, setup=SETUP)
    assert not keyed.rejoined and sorted(keyed.owners.values()) == sorted(OWNERS.values())
    with pytest.raises(UserError, match="already hold a tenseal context for this run.*pass resume=true"):
        key_setup.setup_keys(None, run_config, 3, "", 1.0, setup=SETUP)  # a restart without resume=true keys nothing
    resumed = key_setup.setup_keys(None, {**run_config, "resume": True}, 3, "", 1.0, resume=True, setup=SETUP)
    assert resumed.rejoined and (resumed.public, resumed.run, resumed.signers) == (
        keyed.public,
        keyed.run,
        keyed.signers,
    )
    assert [len(tenseal_keys.keyings(s)) for s in states.values()] == [1, 1, 1]  # nobody re-keyed
