"""The owner worker: one model load for many rounds, the same answers as in-process, a 0600 socket,
and a clear error (then a clean rejoin, ledger intact) when it dies."""

import os
import signal
import stat
import subprocess
import sys
import threading

import numpy as np
import pytest

from fedveil.client.operations import WorkerState, handle
from fedveil.client.owner import OwnerIdentity
from fedveil.client.worker import Instruction, WorkerUnavailable, relay, serve
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.task.demo_data import write_demo_data


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), 1, 60, seed=0)[0]


def run_config(tmp_path, model, **dp):
    cfg = from_dict({"seed": 2, "rounds": 3, "num_clients": 1, "output_dir": str(tmp_path / "run"),
                     "model": {"path": str(model)}, "train": {"local_steps": 2},
                     "dp": dp or {"name": "off"}})
    return to_run_config(cfg)


@pytest.fixture(scope="module")
def start(tiny_gpt2, demo_dir, tmp_path_factory):
    """(layout digest, initial adapter) every party derives from the model and seed 2."""
    from fedveil.client.owner import Owner

    owner = Owner(from_dict({"model": {"path": str(tiny_gpt2)}, "seed": 2, "num_clients": 1,
                             "output_dir": str(tmp_path_factory.mktemp("o"))}),
                  OwnerIdentity("client_0", str(demo_dir), str(tmp_path_factory.mktemp("s"))))
    return owner.layout.digest, owner.initial


def train_instruction(config, rnd, start):
    digest, initial = start
    return Instruction("train", config, {wire.ROUND: rnd, wire.LAYOUT_DIGEST: digest}, {wire.CLEAR_GLOBAL: initial})


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
    answers = [relay(sock, train_instruction(config, rnd, start)) for rnd in (1, 2, 3)]
    assert model_loads() == loads_before  # the model was already loaded here: three rounds, no reload
    local = handle(train_instruction(config, 1, start), state.identity)
    np.testing.assert_array_equal(answers[0].protected.arrays["delta"], local.protected.arrays["delta"])
    assert answers[0].meta[wire.OWNER_ID] == "client_0" and answers[0].metrics[wire.NUM_EXAMPLES] > 0
    # a refusal travels back as one line
    bad = Instruction("train", config, {wire.ROUND: 1, wire.LAYOUT_DIGEST: "0" * 64}, {wire.CLEAR_GLOBAL: start[1]})
    with pytest.raises(Exception, match="adapter layout mismatch"):
        relay(sock, bad)
    with pytest.raises(Exception, match="unknown instruction"):
        relay(sock, Instruction("upload-data", config))


def test_a_dead_worker_is_a_clear_error_and_a_restarted_one_rejoins_with_its_ledger(tmp_path, tiny_gpt2, demo_dir, start):
    config = run_config(tmp_path, tiny_gpt2, name="sample_level", target_epsilon=8.0, accountant="rdp")
    state_dir, sock = tmp_path / "state", tmp_path / "state" / "owner.sock"

    def launch():
        proc = subprocess.Popen([sys.executable, "-m", "fedveil.client.worker", "serve", "--data-dir", str(demo_dir),
                                 "--state-dir", str(state_dir), "--owner-id", "client_0"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = proc.stdout.readline()  # printed once the socket listens
        assert "listening on" in line, line + proc.stdout.read()
        return proc

    worker = launch()
    try:
        first = relay(sock, train_instruction(config, 1, start))
        assert first.metrics[wire.DP_EPSILON] > 0
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        with pytest.raises(WorkerUnavailable, match="not running; start it with `fedveil-owner serve"):
            relay(sock, train_instruction(config, 2, start))
        worker = launch()
        try:
            second = relay(sock, train_instruction(config, 2, start))
        except Exception:
            worker.kill()
            print(worker.stdout.read())  # the restarted worker's log, for the failure report
            raise
        assert second.metrics[wire.DP_EPSILON] > first.metrics[wire.DP_EPSILON]  # the ledger went on, not reset
    finally:
        worker.kill()
        worker.wait()
