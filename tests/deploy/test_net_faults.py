"""Faults over the network, on separate hosts (deploy/hosts.sh): an owner's link goes down mid-round
and comes back; the coordinator's host is killed and restarted with ``resume=true``.

The federation is deploy/demo.sh's, step for step (``UP_ONLY=1``: it stops once the SuperNodes are
online and leaves them up): TLS, registered SuperNode keys, owner workers, DP-SGD, the plain
backend, 3 owners on a tiny model. The test runs ``flwr run`` on the coordinator's host itself and
breaks the network or the host while the run goes. Every wait polls against a deadline; on a
failure the deploy logs are printed.
"""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_hosts import ROOT, made, needs_netns

FLWR = str(ROOT / ".venv" / "bin" / "flwr")
TIMEOUT_S = 25  # sim.round_timeout_s: public, in the run config


class Deployment:
    """A NET=hosts federation that is up: its hosts, its run config, its files and logs."""

    def __init__(self, env: dict[str, str]):
        self.env, self.dir = {**env, "FLWR_HOME": f"{env['DEPLOY_DIR']}/flwr"}, Path(env["DEPLOY_DIR"])
        self.runs: list[subprocess.Popen] = []
        self.hosts = sourced(self.dir / "net" / "hosts.env", "COORD_NS COORD_ADDR OWNER_NS OWNER_LINKS")
        fed = sourced(self.dir / "federation.env", "CONNECTION RUN_CONFIG")
        self.connection, self.run_config = fed["CONNECTION"][0], " ".join(fed["RUN_CONFIG"])
        self.coordinator = self.hosts["COORD_NS"][0]
        self.out = self.dir / "server"

    def run(self, name: str, extra: str) -> subprocess.Popen:
        """``flwr run`` on the coordinator's host, its stream in logs/NAME.log."""
        command = ["ip", "netns", "exec", self.coordinator, FLWR, "run", ".", self.connection, "--stream",
                   "--run-config", f"{self.run_config} {extra}"]
        with open(self.dir / "logs" / f"{name}.log", "w") as log:
            self.runs.append(subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        return self.runs[-1]

    def rows(self) -> list[dict]:
        path = self.out / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def link(self, owner: int, state: str) -> None:
        subprocess.run(["ip", "link", "set", self.hosts["OWNER_LINKS"][owner], state], check=True)

    def logs(self, tail: int = 40) -> str:
        parts = []
        for log in sorted((self.dir / "logs").glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-tail:]
            parts.append(f"--- {log.name}\n" + "\n".join(lines))
        return "\n".join(parts)


def sourced(path: Path, names: str) -> dict[str, list[str]]:
    echo = "; ".join(f'echo "${{{n}[*]}}"' for n in names.split())
    out = subprocess.run(["bash", "-c", f'source "$1"; {echo}', "-", str(path)], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    return {n: v.split() for n, v in zip(names.split(), out)}


def until(what: str, check, deadline_s: float, dep: Deployment, poll: float = 0.05):
    """Poll ``check`` until it returns something truthy, or fail after ``deadline_s`` with the logs."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if got := check():
            return got
        time.sleep(poll)
    pytest.fail(f"{what}: not within {deadline_s:g} s\n{dep.logs()}")


@pytest.fixture
def deployment(deploy_dir, request):
    env = {**os.environ, "DEPLOY_DIR": str(deploy_dir), "NET": "hosts", "BACKEND": "plain",
           "ROUNDS": str(request.param), "UP_ONLY": "1", "CONNECTION": "fedveil-netfaults"}
    up = subprocess.run(["bash", str(ROOT / "deploy" / "demo.sh")], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    dep = Deployment(env)
    tag = dep.coordinator.split("-")[0]
    try:
        yield dep
    finally:
        for run in dep.runs:
            if run.poll() is None:
                os.killpg(run.pid, signal.SIGKILL)
                run.wait()
        subprocess.run(["bash", str(ROOT / "deploy" / "stop.sh")], env=env, capture_output=True, timeout=120)
        subprocess.run(["bash", str(ROOT / "deploy" / "hosts.sh"), "down"], env=env, capture_output=True, timeout=120)
        assert made(tag) == []


def received(dep: Deployment, owner: str, message_type: str) -> int:
    log = dep.dir / "logs" / f"supernode-{owner}.log"
    return log.read_text(errors="replace").count(f"Receiving: {message_type} message") if log.exists() else 0


def verify_chain(dep: Deployment) -> None:
    head = json.loads((dep.out / "summary.json").read_text())["ledger_head"]
    verify = subprocess.run([str(ROOT / ".venv" / "bin" / "fedveil"), "verify-chain", str(dep.out), "--head", head],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "chain intact" in verify.stdout, verify.stdout + verify.stderr


@needs_netns
@pytest.mark.slow
@pytest.mark.parametrize("deployment", [4], indirect=True)
def test_an_owner_link_down_mid_round_the_round_goes_on_and_the_owner_rejoins_with_its_ledger(deployment):
    # Measured (Flower 1.42): the SuperNode's request in flight when the link drops hangs until its HTTP
    # timeout (30 s), then it retries (back-off up to 20 s) and, once the link is back, finishes the
    # instruction it had taken: it trains the stale round 2 (and may miss round 3 doing so), sends a reply
    # the coordinator no longer waits for, and trains with the others from the next round it pulls in time.
    from fedveil.privacy.dp import epsilon_ledger

    dep, k, owner = deployment, 2, "client_2"
    run = dep.run("link-down", f"sim.round_timeout_s={TIMEOUT_S}")
    until("round 1's checkpoint", lambda: (dep.out / "checkpoints" / "round_0001.safetensors").exists(), 240, dep)
    # round 2's train message is reaching the owner: its link goes down before the reply leaves
    until(f"{owner} received round 2's train message", lambda: received(dep, owner, "train") >= 2, 60, dep, 0.01)
    dep.link(k, "down")
    down_at = time.monotonic()
    row2 = until("round 2's row", lambda: next((r for r in dep.rows() if r["round"] == 2), None), TIMEOUT_S + 60, dep)
    waited = time.monotonic() - down_at
    dep.link(k, "up")
    assert row2["clients"] == ["client_0", "client_1"], dep.logs()
    assert list(row2["excluded"]) == [owner]
    assert row2["excluded"][owner].startswith(f"no reply within sim.round_timeout_s={TIMEOUT_S} s")
    assert waited < TIMEOUT_S + 20, f"round 2 ended {waited:.0f} s after the link went down"
    assert run.wait(timeout=240) == 0, dep.logs()
    rows = {r["round"]: r for r in dep.rows()}
    assert sorted(rows) == [0, 1, 2, 3, 4], dep.logs()
    rejoined = [r for r in (3, 4) if owner in rows[r]["clients"]]
    assert rejoined, f"{owner} did not train in round 3 or 4: {[rows[r]['excluded'] for r in (3, 4)]}\n{dep.logs()}"
    # its ε ledger, read with the project's own checks (chain, head, count, recomputed spend), holds one
    # entry per round it trained: every round the coordinator took its update in, and round 2, whose
    # update left it (after the link came back) but came too late. Every other entry is a round whose
    # message it was sent and did not answer in time; none is a round it was never sent.
    ledger = epsilon_ledger.load(dep.dir / "state" / owner)
    trained = [s.round for s in ledger.history]
    accepted = [r for r in range(1, 5) if owner in rows[r]["clients"]]
    assert trained == sorted(set(trained)) and {1, 2, *accepted} <= set(trained) <= {1, 2, 3, 4}
    for r in set(trained) - set(accepted):
        assert rows[r]["excluded"][owner].startswith("no reply within"), rows[r]["excluded"]
    last = rows[accepted[-1]]["per_client"][owner]["epsilon"]
    assert last == pytest.approx(ledger.history[trained.index(accepted[-1])].epsilon_after) and 0 < last <= 8.0
    assert 0 < ledger.spent_epsilon <= 8.0
    for other in ("client_0", "client_1"):
        assert [s.round for s in epsilon_ledger.load(dep.dir / "state" / other).history] == [1, 2, 3, 4]
    verify_chain(dep)


def coordinator_processes(dep: Deployment) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", dep.coordinator], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def online(dep: Deployment) -> int:
    out = subprocess.run(["ip", "netns", "exec", dep.coordinator, FLWR, "supernode", "list", dep.connection],
                         env=dep.env, capture_output=True, text=True, timeout=60).stdout
    return out.count("online")


@needs_netns
@pytest.mark.slow
@pytest.mark.parametrize("deployment", [3], indirect=True)
def test_the_coordinator_host_killed_after_round_1_restarts_with_resume_and_the_run_finishes(deployment):
    # SIGKILL to every process on the coordinator's host (SuperLink, the ServerApp it started, flwr run)
    # right after round 1's checkpoint; the SuperLink comes back on its state file (the registered
    # SuperNode keys), the owners' SuperNodes reconnect on their own, and the run resumes at round 2.
    from fedveil.privacy.dp import epsilon_ledger

    dep = deployment
    dep.run("before-restart", f"sim.round_timeout_s={TIMEOUT_S * 2}")
    until("round 1's checkpoint", lambda: (dep.out / "checkpoints" / "round_0001.safetensors").exists(), 240, dep)
    pids = coordinator_processes(dep)
    assert len(pids) >= 2, "the SuperLink and the ServerApp run on the coordinator's host"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    until("the coordinator's processes gone", lambda: not coordinator_processes(dep), 30, dep)
    assert (dep.dir / "state" / "superlink.db").is_file()  # the durable default: the state is in a file
    env = {**dep.env, "SUPERLINK_HOST": dep.hosts["COORD_ADDR"][0]}
    up = subprocess.run(["ip", "netns", "exec", dep.coordinator, "bash", str(ROOT / "deploy" / "start-superlink.sh")],
                        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr + dep.logs()
    until("the 3 SuperNodes back online", lambda: online(dep) >= 3, 120, dep, 1.0)
    # 4x: the SuperNodes first pull the killed run's pending message (refused, "Run is finished") and back
    # off; on a loaded CI machine the resumed run's train message reached them 42 s in (2x timed out at 50 s)
    resumed = dep.run("resumed", f"sim.round_timeout_s={TIMEOUT_S * 4} resume=true")
    assert resumed.wait(timeout=420) == 0, dep.logs()
    log = (dep.dir / "logs" / "resumed.log").read_text()
    assert "resuming after round 1" in log and "[fedveil] done:" in log, dep.logs()
    rows = dep.rows()
    assert [r["round"] for r in rows] == [0, 1, 2, 3], dep.logs()  # each round logged once
    owners = ("client_0", "client_1", "client_2")
    assert rows[1]["clients"] == list(owners), rows[1]  # before the kill: everyone
    # after it an owner may miss a round (its SuperNode still answering the message of before the kill,
    # or back online only after the round's timeout on a loaded machine): the round goes on with the
    # others and records why; the run finishes either way. An owner that never answered the restarted
    # coordinator is known to it by its node id only (it learns the owner's name from a reply): `node_<id>`.
    # On a loaded CI machine two of the three may miss a round (seen once: only client_0 answered round 2)
    for r in rows[2:]:
        assert len(r["clients"]) >= 1, r
        missing = set(owners) - set(r["clients"])
        why = {who: reason for who, reason in r["excluded"].items() if who in missing or who.startswith("node_")}
        assert len(why) == len(missing), r["excluded"]
        assert all(reason.startswith(("no reply within", "not connected within")) for reason in why.values()), why
    verify_chain(dep)
    # each owner's ε ledger verifies and holds every round it trained in the rows (round 2 twice where the
    # owner trained it before the kill too: that update left, so it stays charged), within the owner's cap
    for owner in owners:
        ledger = epsilon_ledger.load(dep.dir / "state" / owner)
        trained = [s.round for s in ledger.history]
        in_rows = {r["round"] for r in rows[1:] if owner in r["clients"]}
        assert in_rows <= set(trained) <= {1, 2, 3} and trained == sorted(trained) and trained.count(1) == 1, \
            (owner, trained, in_rows)
        last = max(in_rows)
        assert rows[last]["per_client"][owner]["epsilon"] <= ledger.history[-1].epsilon_after + 1e-9
        assert 0 < ledger.spent_epsilon <= 8.0
