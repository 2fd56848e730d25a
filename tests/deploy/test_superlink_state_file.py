"""A SuperLink killed with SIGKILL and started again on its state file still knows the registered SuperNode keys."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def script(name, *args, env):
    return subprocess.run(["bash", str(ROOT / "deploy" / name), *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


def registered(env):
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "flwr"), "supernode", "list", env["CONNECTION"], "--format",
                          "json"], env={**env, "FLWR_HOME": f"{env['DEPLOY_DIR']}/flwr"}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return {n["node-id"]: n["status"] for n in json.loads(out.stdout)["nodes"]}


@pytest.fixture
def env(deploy_dir):  # this file's own port: the other deploy tests' SuperLink may run beside it
    e = {**os.environ, "DEPLOY_DIR": str(deploy_dir), "SUPERLINK_PORT": "8101",
         "CONNECTION": "fedveil-state-test"}
    yield e
    script("stop.sh", env=e)


def test_a_killed_superlink_restarts_on_its_state_file_with_the_registered_keys(env):
    assert script("make-pki.sh", "known", env=env).returncode == 0
    assert script("start-superlink.sh", env=env).returncode == 0
    assert script("register-supernode.sh", "known", env=env).returncode == 0
    before = registered(env)
    assert list(before.values()) == ["registered"]
    pid_file = Path(env["DEPLOY_DIR"]) / "pids" / "superlink.pid"
    os.killpg(int(pid_file.read_text()), signal.SIGKILL)  # no shutdown, no checkpoint: the WAL holds the commits
    log = Path(env["DEPLOY_DIR"]) / "logs" / "superlink.log"
    assert "state file read by FastSqlLinkState" in log.read_text()
    assert script("start-superlink.sh", env=env).returncode == 0
    assert registered(env) == before  # the same node id, still registered: no new `flwr supernode register`
