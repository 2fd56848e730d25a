"""SIGKILL a data owner's worker process at each of its failpoints, restart it as its operator
would, and find its epsilon ledger whole, never lower, and holding every spend it recorded
(over-counting a step that never trained, never under-counting one that did)."""

import json
import os
import subprocess
import sys

import pytest

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.client.protocol import Instruction, WorkerUnavailable
from fedveil.client.worker import relay
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.core.errors import Refusal
from fedveil.core.io import leftover_temps
from fedveil.privacy.dp import epsilon_ledger

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_an_owner_worker_killed_while_training_or_writing_its_ledger_rejoins_with_every_spend_recorded(
        tmp_path, tiny_gpt2, owners_data):
    data = owners_data[0]  # rounds=5: the noise is planned for 10 steps, room for the 8 the interruptions cost
    cfg = from_dict({"seed": 2, "rounds": 5, "num_clients": 1, "output_dir": str(tmp_path / "run"),
                     "model": {"path": str(tiny_gpt2)}, "data": {"max_length": 32},
                     "train": {"local_steps": 2, "batch_size": 4}, "aggregation": {"name": "plain"},
                     "dp": {"name": "sample_level", "target_epsilon": 8.0, "accountant": "rdp"}})
    owner = Owner(cfg, OwnerIdentity("client_0", data, str(tmp_path / "scratch")))
    state_dir, sock = tmp_path / "state", tmp_path / "state" / "owner.sock"

    def train(server_round):
        return relay(
            sock,
            Instruction(
                "train",
                to_run_config(cfg),
                {wire.ROUND: server_round, wire.LAYOUT_DIGEST: owner.layout.digest},
                {wire.CLEAR_GLOBAL: owner.initial},
            ),
        )

    def launch(fault=None):
        env = {k: v for k, v in os.environ.items() if k != "FEDVEIL_FAULT"} | (
            {"FEDVEIL_FAULT": fault} if fault else {}
        )
        proc = subprocess.Popen([sys.executable, "-m", "fedveil.client.worker", "serve", "--data-dir", data,
                                 "--state-dir", str(state_dir), "--owner-id", "client_0"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = proc.stdout.readline()  # printed once the socket listens
        assert "listening on" in line, line + proc.stdout.read()
        return proc

    def ledger_rounds():  # the file as it is on disk (it must parse whatever happened)
        return [e["round"] for e in json.loads(epsilon_ledger.ledger_path(state_dir).read_text())["history"]]

    workers = []
    try:
        # killed mid-round, after the round's spend is recorded and before training: the spend stays
        workers.append(launch("owner-training:2"))
        first = train(1).metrics[wire.DP_EPSILON]
        with pytest.raises(WorkerUnavailable, match="stopped answering"):
            train(2)
        assert workers[-1].wait(timeout=60) == -9 and ledger_rounds() == [1, 2]
        with pytest.raises(WorkerUnavailable, match="not running; start it with `fedveil-owner serve"):
            train(3)

        # restarted; killed on the next train instruction before anything is carried out: nothing spent
        workers.append(launch("worker-training:3"))
        with pytest.raises(WorkerUnavailable, match="stopped answering"):
            train(3)
        assert workers[-1].wait(timeout=60) == -9 and ledger_rounds() == [1, 2]

        # restarted; killed inside the ledger write of round 3 (temp file fsynced, not renamed)
        workers.append(launch("ledger-write@state"))
        with pytest.raises(WorkerUnavailable, match="stopped answering"):
            train(3)
        assert workers[-1].wait(timeout=60) == -9
        assert ledger_rounds() == [1, 2]  # the ledger is the one before, whole
        (temp,) = leftover_temps(epsilon_ledger.ledger_path(state_dir))
        assert [e["round"] for e in json.loads(temp.read_text())["history"]] == [1, 2, 3]  # the write, whole

        # restarted: the owner refuses to train on an interrupted write; its operator does what the
        # line says (the temp file holds the longer valid history: it becomes the ledger)
        workers.append(launch())
        with pytest.raises(Refusal) as refused:  # the coordinator gets the code; the worker's console the line
            train(3)
        assert refused.value.code == "internal"
        log = iter(workers[-1].stdout.readline, "")
        assert "a ledger write was interrupted. Compare it with privacy_ledger.json" in next(
            line for line in log if "refused" in line
        )
        assert ledger_rounds() == [1, 2]
        os.replace(temp, epsilon_ledger.ledger_path(state_dir))
        third = train(3).metrics[wire.DP_EPSILON]
    finally:
        for w in workers:
            w.kill()
            w.wait()
    ledger = epsilon_ledger.load(state_dir)
    assert [s.round for s in ledger.history] == [1, 2, 3, 3]  # the spends of the two interrupted rounds stay
    spent = [s.epsilon_after for s in ledger.history]
    assert spent == sorted(spent) and spent[0] == pytest.approx(first) and spent[-1] == pytest.approx(third)
    assert ledger.spent_epsilon == pytest.approx(third) and third > first
