"""The deploy scripts on 127.0.0.1: the whole demo, node authentication, and TLS by default."""

import os
import subprocess
import time
from pathlib import Path

import pytest

from fedveil.privacy.dp import epsilon_ledger
from fedveil.privacy.policy import load_policy

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("deploy")]  # fixed ports: one xdist worker runs them all
ROOT = Path(__file__).resolve().parents[2]


def script(name, *args, env, timeout=300):  # above start-superlink.sh's own 120 s wait
    return subprocess.run(["bash", str(ROOT / "deploy" / name), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def env(deploy_dir):
    e = {**os.environ, "DEPLOY_DIR": str(deploy_dir), "SUPERLINK_PORT": "8137", "CONNECTION": "fedveil-test",
         "APP_SHA256": "0" * 64}
    yield e
    script("stop.sh", env=e)


def online(env):
    out = subprocess.run([str(ROOT / ".venv" / "bin" / "flwr"), "supernode", "list", env["CONNECTION"]], env={
        **env, "FLWR_HOME": f"{env['DEPLOY_DIR']}/flwr"}, capture_output=True, text=True, timeout=60).stdout
    return out.count("online")


def test_plaintext_is_refused_unless_asked_and_unregistered_keys_are_rejected(env, tmp_path):
    refused = script("start-superlink.sh", env=env)
    assert refused.returncode == 2 and "pass --insecure explicitly" in refused.stderr

    assert script("make-pki.sh", "known", "stranger", env=env).returncode == 0
    assert script("start-superlink.sh", env=env).returncode == 0
    assert script("register-supernode.sh", "known", env=env).returncode == 0
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    assert script("start-supernode.sh", "stranger", str(data), "9237", env=env).returncode == 0
    pid = int((Path(env["DEPLOY_DIR"]) / "pids" / "supernode-stranger.pid").read_text())
    for _ in range(90):  # the SuperLink turns the unregistered key away; the SuperNode gives up
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0:
            break
        time.sleep(1)
    else:
        pytest.fail("the unregistered SuperNode is still running")
    assert online(env) == 0
    assert script("start-supernode.sh", "known", str(data), "9238", env=env).returncode == 0
    for _ in range(60):  # the registered key is let in (the check above is not a broken set-up)
        if online(env) == 1:
            break
        time.sleep(1)
    assert online(env) == 1


def public_address():
    """A non-loopback IPv4 address of this host (no packet is sent), or None."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def flwr(*args, env, home):
    return subprocess.run([str(ROOT / ".venv" / "bin" / "flwr"), *args], env={**env, "FLWR_HOME": str(home)},
                          capture_output=True, text=True, timeout=120)


def test_only_the_operator_can_register_a_supernode_key(env, tmp_path):
    # Before: flower-superlink serves the Control API on the same HTTPS listener as the Fleet API,
    # without authentication (Flower 1.42's account auth is an enterprise OIDC plugin): a stranger
    # with nothing but ca.crt and the SuperNodes' address ran `flwr supernode register` and its key
    # was accepted. Now (fedveil-superlink) a non-operator address reaches the Fleet API only.
    # What this proves: a client connecting from another address than the SuperLink host's loopback
    # gets 403 on the Control API while the Fleet API still serves it; the operator on the SuperLink
    # host registers keys. Here the "other host" is this host's public interface address (the peer
    # address the SuperLink sees is that address, not 127.0.0.1).
    ip = public_address()
    if ip is None:
        pytest.skip("this host has no non-loopback IPv4 address to play the stranger from")
    env = {**env, "SUPERLINK_BIND": "0.0.0.0", "SUPERLINK_SANS": ip, "SUPERLINK_PORT": "8139"}
    assert script("make-pki.sh", "known", "stranger", env=env).returncode == 0
    assert script("start-superlink.sh", env=env).returncode == 0
    deploy = Path(env["DEPLOY_DIR"])

    stranger_home = tmp_path / "stranger-flwr"
    stranger_home.mkdir()
    (stranger_home / "config.toml").write_text(
        f'[superlink]\ndefault = "there"\n\n[superlink.there]\naddress = "{ip}:8139"\n'
        f'root-certificates = "{deploy / "pki" / "ca.crt"}"\n'
    )
    attempt = flwr("supernode", "register", str(deploy / "pki" / "stranger.pub"), "there", env=env, home=stranger_home)
    assert attempt.returncode != 0, attempt.stdout + attempt.stderr
    assert "answer only the operator" in " ".join((attempt.stdout + attempt.stderr).split())  # the guard said no
    listing = flwr("supernode", "list", "there", env=env, home=stranger_home)
    assert listing.returncode != 0  # not even a listing from there

    assert script("register-supernode.sh", "known", env=env).returncode == 0  # the operator, on the SuperLink host
    operator = flwr("supernode", "list", env["CONNECTION"], env=env, home=deploy / "flwr")
    assert operator.returncode == 0

    # the key the stranger sent is not registered: a SuperNode holding it is turned away ...
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    remote = {**env, "SUPERLINK_HOST": ip}  # SuperNodes dial the public address: the Fleet API answers there
    assert script("start-supernode.sh", "stranger", str(data), "9241", env=remote).returncode == 0
    pid = int((deploy / "pids" / "supernode-stranger.pid").read_text())
    for _ in range(90):
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0:
            break
        time.sleep(1)
    else:
        pytest.fail("the stranger's SuperNode is still running: its key was registered")
    # ... while the operator-registered one connects through the same public address
    assert script("start-supernode.sh", "known", str(data), "9242", env=remote).returncode == 0
    for _ in range(60):
        if online(env) == 1:
            break
        time.sleep(1)
    assert online(env) == 1


def test_a_supernode_refuses_to_start_without_a_pinned_app(tmp_path):
    proc = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "fedveil-supernode"),
            "--insecure",
            "--superlink",
            "127.0.0.1:1",
            "--node-config",
            "data-dir='/x'",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "app-sha256" in proc.stderr


def test_make_deploy_demo_tenseal(deploy_dir):
    # includes the pinned-app check: a modified copy of the app (one changed line) is submitted after
    # the run; before, the SuperNodes ran it (any code a coordinator ships, with the owners' data)
    env = {**os.environ, "DEPLOY_DIR": str(deploy_dir)}
    proc = subprocess.run(["make", "deploy-demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "deploy-demo (tenseal): OK" in proc.stdout and "chain intact" in proc.stdout
    assert "the modified app was refused by all 3 SuperNodes" in proc.stdout
    assert "fedveil-supernode: refused run" in proc.stdout
    assert not list((deploy_dir / "pids").glob("*.pid"))  # everything stopped
    # under DP, with policies that require it: every owner's own ledger was charged for both rounds
    assert "dp=sample_level" in proc.stdout and "every owner's epsilon ledger was charged" in proc.stdout
    assert "the run without DP was refused: no round trained, no ledger changed" in proc.stdout
    for owner in ("client_0", "client_1", "client_2"):
        policy = load_policy(deploy_dir / "policies" / f"{owner}.json")
        assert policy.require_dp and policy.max_epsilon == 8.0
        ledger = epsilon_ledger.load(deploy_dir / "state" / owner)
        assert [s.round for s in ledger.history] == [1, 2] and len({s.run for s in ledger.history}) == 1
        assert 0 < ledger.history[0].epsilon_after < ledger.spent_epsilon <= 8.0 and ledger.delta == 1e-5
