"""sim.ray_address: the simulation runs its owners on an existing Ray cluster instead of starting one."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fedveil.configs.schema import SimulationConfig
from fedveil.core.errors import UserError


@pytest.mark.parametrize("address", ["10.0.0.5", "host:port", ":6379", "host:70000"])
def test_a_ray_address_is_auto_or_host_and_port(address):
    with pytest.raises(UserError, match=f"sim.ray_address='{address}' is neither auto nor HOST:PORT"):
        SimulationConfig(ray_address=address)
    assert SimulationConfig(ray_address="auto").ray_address == "auto"
    assert SimulationConfig(ray_address="10.0.0.5:6379").ray_address == "10.0.0.5:6379"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_federation_runs_on_a_ray_head_started_beforehand(tmp_path):
    port = free_port()
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen([str(ray), "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             "--include-dashboard=false", f"--temp-dir={ray_tmp}", "--disable-usage-stats"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(Path(ray_tmp).glob("session_*/logs/raylet.out")):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
        out = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}",
                               "experiment=smoke", "rounds=1", "aggregation=plain", "dp=off", f"sim.ray_address=127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1] and len(rows[1]["clients"]) == 2
        # the run's driver connected to that head (its log is in the head's session), not to a Ray of its own
        assert list(Path(ray_tmp).glob("session_*/logs/python-core-driver-*"))
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and what it started: this test's process group
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
