"""The server's tenseal key set-up against real owners' operations (Flower-free relay): keying once,
refusing to key a run again, and taking the held context up on resume."""

import re

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

    def ask(grid, nodes, message_type, run_config, keys, timeout, owners=None, expected=None):
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
    monkeypatch.setattr(key_setup, "connected_owners", lambda grid, n, timeout: sorted(OWNERS))
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


class SlowGrid:
    """A grid whose owners are partly away: ``connected`` nodes are listed, ``answering`` reply as
    ``owners`` names them, ``refusing`` reply with an error; every other message is never answered."""

    def __init__(self, connected, answering, refusing=()):
        self.connected, self.answering, self.refusing = list(connected), set(answering), set(refusing)
        self.replies, self.polls = {}, 0

    def get_node_ids(self):
        self.polls += 1
        return self.connected

    def push_messages(self, messages):
        from flwr.app import Error

        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            n = m.metadata.dst_node_id
            if n in self.answering:
                meta = ConfigRecord({wire.OWNER_ID: OWNERS[n], wire.PUBLIC_KEY: b"x", wire.VERIFY_KEY: b"y"})
                self.replies[m.object_id] = Message(RecordDict({wire.META: meta}), reply_to=m)
            elif n in self.refusing:
                self.replies[m.object_id] = Message(Error(code=0, reason="the pinned roster names other keys"),
                                                    reply_to=m)
        return [m.object_id for m in messages]

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


@pytest.mark.parametrize("connected, answering, refusing, named", [
    ([1, 2], [1, 2], [], r"client_2: not connected, or no answer within sim\.round_timeout_s=0\.3 s"),
    ([1, 2, 3], [1, 3], [], r"client_1: not connected, or no answer within sim\.round_timeout_s=0\.3 s"),
    ([1, 2, 3], [1, 2], [3], r"node_3: the pinned roster names other keys"),
])
def test_key_set_up_waits_at_most_the_round_timeout_for_each_step_and_names_who_is_missing(connected, answering,
                                                                                          refusing, named):
    import time

    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    grid = SlowGrid(connected, answering, refusing)
    start = time.monotonic()
    with pytest.raises(UserError) as failed:
        key_setup.setup_keys(grid, {}, 3, "", 0.3, setup=SETUP)
    waited = time.monotonic() - start
    assert waited < 3.0, f"key set-up waited {waited:.1f} s with sim.round_timeout_s=0.3"  # a loaded CI stalls ~1 s
    line = str(failed.value)
    assert "\n" not in line and re.search(named, line), line
    assert line.startswith("key set-up failed at query.pubkey (") and "start the run again" in line
    assert "raise sim.round_timeout_s" in line
    if len(connected) < 3:  # it waited for the third owner (polling), then asked the two it had
        assert waited >= 0.3 and grid.polls >= 2


def test_a_silent_owner_is_named_at_a_later_step():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    with pytest.raises(UserError, match=r"^key set-up failed at query\.install \(client_1: no answer within "
                                        r"sim\.round_timeout_s=0\.2 s\); every owner must take part"):
        key_setup.ask(SlowGrid([1, 2, 3], [1, 3]), [1, 2, 3], wire.QUERY_INSTALL, {}, {}, 0.2, owners=OWNERS)
