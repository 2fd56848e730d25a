"""The owner worker: one model load for many rounds, the same answers as in-process, a 0600 socket,
and a federation that goes on without a worker that went away (one killed mid-round, then
restarted, with its ledger: tests/faults/test_owner_faults.py)."""

import json
import os
import stat
import threading

import numpy as np
import pytest

from fedveil.client.operations import WorkerState, handle
from fedveil.client.owner import OwnerIdentity
from fedveil.client.protocol import Instruction
from fedveil.client.worker import relay, serve
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.core.errors import Refusal
from fedveil.task.demo_data import write_demo_data


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), 1, 60, seed=0)[0]


def run_config(tmp_path, model, **dp):
    cfg = from_dict({"seed": 2, "rounds": 3, "num_clients": 1, "output_dir": str(tmp_path / "run"),
                     "model": {"path": str(model)}, "train": {"local_steps": 2}, "aggregation": {"name": "plain"},
                     "dp": dp or {"name": "off"}})
    return to_run_config(cfg)


@pytest.fixture(scope="module")
def start(tiny_gpt2, demo_dir, tmp_path_factory):
    """(layout digest, initial adapter) every party derives from the model and seed 2."""
    from fedveil.client.owner import Owner

    owner = Owner(from_dict({"model": {"path": str(tiny_gpt2)}, "seed": 2, "num_clients": 1,
                             "output_dir": str(tmp_path_factory.mktemp("o")), "aggregation": {"name": "plain"},
                             "dp": {"name": "off"}}),
                  OwnerIdentity("client_0", str(demo_dir), str(tmp_path_factory.mktemp("s"))))
    return owner.layout.digest, owner.initial


def train_instruction(config, server_round, start):
    digest, initial = start
    return Instruction("train", config, {wire.ROUND: server_round, wire.LAYOUT_DIGEST: digest},
                       {wire.CLEAR_GLOBAL: initial})


def start_thread_worker(tmp_path, demo_dir):
    state = WorkerState("client_0", str(demo_dir), str(tmp_path / "state"))
    sock = tmp_path / "state" / "owner.sock"
    ready = threading.Event()
    threading.Thread(target=serve, args=(sock, state.answer, ready.set), daemon=True).start()
    assert ready.wait(10)
    return state, sock


def test_worker_answers_like_the_in_process_path_and_loads_the_model_once(tmp_path, tiny_gpt2, demo_dir, start):
    from fedveil.client.owner import model_loads

    config = run_config(tmp_path, tiny_gpt2)
    state, sock = start_thread_worker(tmp_path, demo_dir)
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600 and stat.S_IMODE(os.stat(sock.parent).st_mode) == 0o700
    loads_before = model_loads()
    answers = [relay(sock, train_instruction(config, server_round, start)) for server_round in (1, 2, 3)]
    assert model_loads() == loads_before  # the model was already loaded here: three rounds, no reload
    local = handle(train_instruction(config, 1, start), state.identity)
    np.testing.assert_array_equal(answers[0].protected.arrays["delta"], local.protected.arrays["delta"])
    assert answers[0].meta[wire.OWNER_ID] == "client_0" and answers[0].metrics[wire.NUM_EXAMPLES] > 0
    # a refusal travels back as its code and public parameters; its line stays in the worker's log
    bad = Instruction("train", config, {wire.ROUND: 1, wire.LAYOUT_DIGEST: "0" * 64}, {wire.CLEAR_GLOBAL: start[1]})
    with pytest.raises(Refusal) as refused:
        relay(sock, bad)
    assert refused.value.code == "layout" and refused.value.public == {}
    with pytest.raises(Refusal) as refused:
        relay(sock, Instruction("upload-data", config))
    assert refused.value.code == "config" and refused.value.public == {"key": "op"}


class RelayGrid:
    """The coordinator's Grid, minus the network: each message goes through its node's ClientApp
    (``client/app.py`` in relay mode, node config ``worker=<socket>``) to that owner's worker.
    ``before_round(server_round)`` runs before each round's train messages (one push per round)."""

    def __init__(self, sockets, before_round):
        self.sockets, self.before_round, self.replies, self.rounds = sockets, before_round, {}, 0

    def get_node_ids(self):
        return list(self.sockets)

    def push_messages(self, messages):
        from flwr.app import Context, RecordDict

        from fedveil.client.app import app

        if any(m.metadata.message_type == "train" for m in messages):
            self.rounds += 1
            self.before_round(self.rounds)
        ids = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            node = m.metadata.dst_node_id
            context = Context(run_id=1, node_id=node, node_config={"worker": str(self.sockets[node])},
                              state=RecordDict(), run_config={})
            self.replies[m.object_id] = app(message=m, context=context)
            ids.append(m.object_id)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]


def test_a_federation_goes_on_without_a_dead_worker_and_its_owner_rejoins_with_its_ledger(tmp_path, tiny_gpt2,
                                                                                          monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from fedveil.server.federation import run_federation

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):  # what a ServerApp process is given
        monkeypatch.setattr(TaskIdentity, name, value)

    data = write_demo_data(tmp_path / "data", 2, 60, seed=0)
    cfg = from_dict({"seed": 2, "rounds": 3, "num_clients": 2, "output_dir": str(tmp_path / "run"),
                     "model": {"path": str(tiny_gpt2)}, "train": {"local_steps": 2}, "aggregation": {"name": "plain"},
                     "dp": {"name": "sample_level", "target_epsilon": 8.0, "accountant": "rdp"}})
    data_dirs = {"client_0": data[0], "client_1": data[1]}

    def start_worker(owner):  # a fresh WorkerState: what a (re)started worker process knows, i.e. its state dir
        state = WorkerState(owner, str(data_dirs[owner]), str(tmp_path / owner))
        ready = threading.Event()
        threading.Thread(target=serve, args=(tmp_path / owner / "owner.sock", state.answer, ready.set),
                         daemon=True).start()
        assert ready.wait(10)

    def before_round(server_round):
        if server_round == 2:  # client_1's worker goes away between rounds 1 and 2 (a real SIGKILL: the test above)
            (tmp_path / "client_1" / "owner.sock").unlink()
        if server_round == 3:  # and is started again, from its state directory only
            start_worker("client_1")

    for owner in data_dirs:
        start_worker(owner)
    sockets = {10: tmp_path / "client_0" / "owner.sock", 11: tmp_path / "client_1" / "owner.sock"}
    run_federation(RelayGrid(sockets, before_round), cfg)
    rows = {r["round"]: r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())}
    assert rows[1]["clients"] == rows[3]["clients"] == ["client_0", "client_1"]
    assert rows[2]["clients"] == ["client_0"]  # the round went on without client_1
    (reason,) = rows[2]["excluded"].values()
    assert reason == "owner failed: unavailable"  # the code only; the hint is on the owner's console
    eps = {(who, r): rows[r]["per_client"][who]["epsilon"] for who in ("client_0", "client_1") for r in (1, 2, 3)
           if "epsilon" in rows[r]["per_client"].get(who, {})}
    # the restarted worker's ledger holds both participations of client_1, as client_0's held its first two
    assert eps["client_1", 3] > eps["client_1", 1]
    assert eps["client_1", 3] == pytest.approx(eps["client_0", 2], rel=1e-6)
