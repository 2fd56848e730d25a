"""Separate hosts (deploy/hosts.sh): one network namespace per role, two bridges; the stranger host."""

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORT = 7301  # every listener below, on every host: namespaces keep them apart


def namespaces_missing() -> str | None:
    """Why this machine cannot make network namespaces, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, bridges)"
    if not all(shutil.which(t) for t in ("ip", "tc", "bridge")):
        return "needs iproute2 (ip, tc, bridge)"
    probe = f"fvprobe{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create a network namespace here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


needs_netns = pytest.mark.skipif(namespaces_missing() is not None, reason=f"NET=hosts: {namespaces_missing()}")


def script(name, *args, env, timeout=300):
    return subprocess.run(["bash", str(ROOT / "deploy" / name), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def hosts_env(deploy: Path) -> dict[str, list[str]]:
    names = "COORD_NS COORD_ADDR OWNER_NS PARTY_NETNS PARTY_HOSTS PARTY_ADDRS TTP_NETNS STRANGER_NS STRANGER_ADDR"
    echo = "; ".join(f'echo "${{{n}[*]}}"' for n in names.split())
    out = subprocess.run(["bash", "-c", f'source "$1"; {echo}', "-", str(deploy / "net" / "hosts.env")],
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return {n: v.split() for n, v in zip(names.split(), out)}


def made(tag: str) -> list[str]:
    """Namespaces and links on this machine whose names start with the run's tag."""
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return [n for n in ns if n.startswith(tag)] + [w.split("@")[0] for w in links.split() if w.startswith(tag)]


def reaches(ns: str, address: str) -> bool:
    code = (f"import socket\ntry:\n    socket.create_connection(('{address}', {PORT}), timeout=1.0).close()\n"
            "except OSError:\n    raise SystemExit(1)")
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], timeout=30).returncode == 0


@pytest.fixture
def hosts(deploy_dir):
    env = {**os.environ, "DEPLOY_DIR": str(deploy_dir), "CONNECTION": "fedveil-hosts", "APP_SHA256": "0" * 64}
    up = script("hosts.sh", "up", "crypten", "stranger", env=env, timeout=60)
    assert up.returncode == 0, up.stdout + up.stderr
    h = hosts_env(deploy_dir)
    tag = h["COORD_NS"][0].split("-")[0]
    assert len(made(tag)) > 10
    yield env, h
    script("stop.sh", env=env)
    assert script("hosts.sh", "down", env=env).returncode == 0
    assert made(tag) == []  # every namespace, bridge and link is gone, by name


@needs_netns
def test_hosts_refuse_without_root_in_one_line(tmp_path):
    deploy = tmp_path / "deploy"  # nobody could not write there: the refusal comes first
    proc = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
                           str(ROOT / "deploy" / "hosts.sh"), "up"], env={**os.environ, "DEPLOY_DIR": str(deploy)},
                          capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs root" in proc.stderr
    assert not deploy.exists()


@needs_netns
def test_a_range_this_machine_uses_is_refused_before_anything_is_made(tmp_path):
    scratch = f"fvscratch{uuid.uuid4().hex[:6]}"  # a machine that already holds 198.18.7.1, without touching this one
    subprocess.run(["ip", "netns", "add", scratch], check=True)
    try:
        subprocess.run(["ip", "-n", scratch, "addr", "add", "198.18.7.1/32", "dev", "lo"], check=True)
        proc = subprocess.run(["ip", "netns", "exec", scratch, "bash", str(ROOT / "deploy" / "hosts.sh"), "up"],
                              env={**os.environ, "DEPLOY_DIR": str(tmp_path / "d")}, capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1
        assert "already uses 198.18.7.1/32" in proc.stderr
        assert not (tmp_path / "d" / "net" / "created").exists()
    finally:
        subprocess.run(["ip", "netns", "del", scratch])


@needs_netns
def test_a_failed_step_removes_everything_made_so_far(tmp_path):
    env = {**os.environ, "DEPLOY_DIR": str(tmp_path / "d"), "OWNER_RATE": "fast"}  # tc refuses it, after the bridge
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    proc = script("hosts.sh", "up", env=env, timeout=60)
    assert proc.returncode != 0 and "everything made was removed" in proc.stderr
    assert not (tmp_path / "d" / "net" / "created").exists()
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not [n for n in after - before if n.startswith("fv")]
    tag = re.search(r"making the hosts (fv[0-9a-f]{4})-\* failed", proc.stderr).group(1)
    assert made(tag) == []


@needs_netns
def test_a_stranger_reaches_no_party_and_owners_reach_only_the_coordinator(hosts):
    # Owners and strangers reach the coordinator's host and nothing else; a party's gRPC answers the
    # coordinator; gloo and the dealer live on the party bridge, which owners and strangers are not on.
    env, h = hosts
    parties, dealer = h["PARTY_NETNS"], h["TTP_NETNS"][0]
    listeners = [subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c",
                                   f"import socket, time\ns = socket.create_server(('0.0.0.0', {PORT}))\n"
                                   "while True: s.accept()[0].close()"])
                 for ns in [h["COORD_NS"][0], *h["PARTY_NETNS"], *h["OWNER_NS"]]]
    try:
        time.sleep(1.5)
        coordinator, stranger, owner = h["COORD_NS"][0], h["STRANGER_NS"][0], h["OWNER_NS"][0]
        assert reaches(stranger, h["COORD_ADDR"][0]) and reaches(owner, h["COORD_ADDR"][0])
        for grpc, gloo in zip(h["PARTY_HOSTS"], h["PARTY_ADDRS"]):
            assert reaches(coordinator, grpc)  # the listeners are up: what fails below is the network
            assert reaches(dealer, gloo) and reaches(parties[0], gloo)
            assert not reaches(stranger, grpc) and not reaches(stranger, gloo)
            assert not reaches(owner, grpc) and not reaches(owner, gloo)
            assert not reaches(coordinator, gloo)  # the coordinator is not on the party bridge either
        assert not reaches(owner, "198.18.0.11") and not reaches(stranger, "198.18.0.10")  # nor each other
    finally:
        for p in listeners:
            p.kill()
            p.wait()


@needs_netns
def test_owner_links_are_shaped_both_ways(tmp_path):
    env = {**os.environ, "DEPLOY_DIR": str(tmp_path / "d"), "OWNER_RATE": "20mbit"}
    assert script("hosts.sh", "up", env=env, timeout=60).returncode == 0
    try:
        h = hosts_env(tmp_path / "d")
        coordinator, owner = h["COORD_NS"][0], h["OWNER_NS"][0]
        for src, dst, address in ((owner, coordinator, h["COORD_ADDR"][0]), (coordinator, owner, "198.18.0.10")):
            sink = subprocess.Popen(["ip", "netns", "exec", dst, sys.executable, "-c",
                                     f"import socket, time\nc = socket.create_server(('0.0.0.0', {PORT})).accept()[0]\n"
                                     "n, t = 0, time.time()\nwhile b := c.recv(1 << 20):\n    n += len(b)\n"
                                     "print(n * 8 / (time.time() - t) / 1e6)"], stdout=subprocess.PIPE, text=True)
            time.sleep(1.0)
            send = f"import socket\nsocket.create_connection(('{address}', {PORT})).sendall(b'x' * 3_000_000)"
            subprocess.run(["ip", "netns", "exec", src, sys.executable, "-c", send], check=True, timeout=60)
            mbit = float(sink.communicate(timeout=60)[0])
            assert 10 < mbit < 22, f"{src} -> {dst}: {mbit:.1f} Mbit/s through a 20mbit tbf"
    finally:
        script("hosts.sh", "down", env=env)


def online(env, ns):
    out = subprocess.run(["ip", "netns", "exec", ns, str(ROOT / ".venv" / "bin" / "flwr"), "supernode", "list",
                          env["CONNECTION"]], env={**env, "FLWR_HOME": f"{env['DEPLOY_DIR']}/flwr"},
                         capture_output=True, text=True, timeout=60).stdout
    return out.count("online")


@needs_netns
@pytest.mark.slow
def test_a_stranger_host_registers_nothing(hosts, tmp_path):
    # A host on the federation bridge, holding ca.crt and its own SuperNode key: the Control API
    # refuses it (it is not the operator's host), so its key is never registered and its SuperNode
    # is turned away, while an owner host's registered SuperNode connects through the same bridge.
    env, h = hosts
    env = {**env, "SUPERLINK_HOST": h["COORD_ADDR"][0]}
    coordinator, stranger, owner = h["COORD_NS"][0], h["STRANGER_NS"][0], h["OWNER_NS"][0]
    assert script("make-pki.sh", "client_0", "stranger", env=env).returncode == 0
    up = subprocess.run(["ip", "netns", "exec", coordinator, "bash", str(ROOT / "deploy" / "start-superlink.sh")],
                        env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert up.returncode == 0, up.stdout + up.stderr
    deploy = Path(env["DEPLOY_DIR"])
    home = tmp_path / "stranger-flwr"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "there"\n\n[superlink.there]\naddress = "{h["COORD_ADDR"][0]}:8000"\n'
        f'root-certificates = "{deploy / "pki" / "ca.crt"}"\n')
    attempt = subprocess.run(["ip", "netns", "exec", stranger, str(ROOT / ".venv" / "bin" / "flwr"), "supernode",
                              "register", str(deploy / "pki" / "stranger.pub"), "there"],
                             env={**env, "FLWR_HOME": str(home)}, capture_output=True, text=True, timeout=120)
    assert attempt.returncode != 0
    assert "answer only the operator" in " ".join((attempt.stdout + attempt.stderr).split())

    registered = subprocess.run(["ip", "netns", "exec", coordinator, "bash",
                                 str(ROOT / "deploy" / "register-supernode.sh"), "client_0"],
                                env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert registered.returncode == 0, registered.stderr
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.jsonl").write_text('{"text": "hello"}\n{"text": "world"}\n')
    for name, ns, port in (("stranger", stranger, "9251"), ("client_0", owner, "9252")):
        started = subprocess.run(["ip", "netns", "exec", ns, "bash", str(ROOT / "deploy" / "start-supernode.sh"),
                                  name, str(data), port], env={**env, "WORKER": "0"}, capture_output=True, text=True,
                                 timeout=120, cwd=ROOT)
        assert started.returncode == 0, started.stderr
    pid = int((deploy / "pids" / "supernode-stranger.pid").read_text())
    for _ in range(90):  # the SuperLink turns the unregistered key away; the stranger's SuperNode gives up
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0:
            break
        time.sleep(1)
    else:
        pytest.fail("the stranger's SuperNode is still running: its key was let in")
    for _ in range(60):  # the owner host's registered SuperNode is let in through the same bridge
        if online(env, coordinator) == 1:
            break
        time.sleep(1)
    assert online(env, coordinator) == 1


@needs_netns
@pytest.mark.slow
def test_make_deploy_demo_on_separate_hosts(deploy_dir):
    # the whole demo with each role in its own namespace: 201-287 s on the shared 2-core machine (load varies)
    env = {**os.environ, "DEPLOY_DIR": str(deploy_dir)}
    proc = subprocess.run(["make", "deploy-demo", "NET=hosts"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "deploy-demo (tenseal, separate hosts): OK" in proc.stdout and "chain intact" in proc.stdout
    assert "SuperLink up on 198.18.0.1:8000" in proc.stdout  # the coordinator's host, not 127.0.0.1
    assert "every owner's epsilon ledger was charged" in proc.stdout
    assert "the modified app was refused by all 3 SuperNodes" in proc.stdout
    assert "the run without DP was refused: no round trained, no ledger changed" in proc.stdout
    tag = re.search(r"hosts \((fv[0-9a-f]{4})-\*\)", proc.stdout).group(1)
    assert made(tag) == [] and not list((deploy_dir / "pids").glob("*.pid"))  # stopped, then removed
