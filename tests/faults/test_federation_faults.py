"""SIGKILL the coordinator or an aggregator party mid-run, restart as an operator would
(``resume=true``), and find every round logged once, nothing half-written and the same final
adapter as a run that was never interrupted (DP off: runs with one seed repeat exactly)."""

import psutil
import pytest
from harness import (assert_nothing_half_written, assert_same_adapter, checkpoints, experiment, final_adapter,
                     in_process, killed, rounds_logged)

pytestmark = [pytest.mark.faults, pytest.mark.slow]
PLAIN = {"name": "plain"}


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory, tiny_gpt2, owners_data):
    """The uninterrupted plain run's final adapter (computed once, in this process)."""
    out = tmp_path_factory.mktemp("plain-ref") / "run"
    in_process(experiment(out, tiny_gpt2, owners_data, PLAIN))
    assert rounds_logged(out) == [0, 1, 2, 3]
    return final_adapter(out)


def test_plain_survives_kills_during_aggregation_and_before_and_after_a_checkpoint(tmp_path, tiny_gpt2, owners_data,
                                                                                   plain_reference):
    out = tmp_path / "run"
    run = experiment(out, tiny_gpt2, owners_data, PLAIN)
    resume = {**run, "resume": True}

    # killed while aggregating round 1: only round 0's row exists, no checkpoint
    killed(run, "aggregate:1")
    assert rounds_logged(out) == [0] and not checkpoints(out)
    assert_nothing_half_written(out)

    # resumed without any checkpoint (round 0 not logged again); killed with round 2's row and
    # round-chain entry written but not its checkpoint (the round's commit point)
    killed(resume, "before-checkpoint:2")
    assert rounds_logged(out) == [0, 1, 2] and checkpoints(out) == [1]
    assert_nothing_half_written(out)

    # resumed after round 1: round 2 runs again and is logged once; killed right after its checkpoint
    killed(resume, "after-checkpoint:2")
    assert rounds_logged(out) == [0, 1, 2] and checkpoints(out) == [1, 2]
    assert_nothing_half_written(out)

    summary = in_process(resume)
    assert rounds_logged(out) == [0, 1, 2, 3] and checkpoints(out) == [1, 2, 3]
    assert_nothing_half_written(out)
    assert summary["rounds_completed"] == 3 and summary["clients"] == ["client_0", "client_1", "client_2"]
    from fedveil.server import round_chain

    assert round_chain.verify(out / round_chain.FILENAME, summary["ledger_head"])[0]
    assert_same_adapter(final_adapter(out), plain_reference)



def test_with_dp_a_round_run_again_after_a_kill_is_recorded_twice_in_every_owners_ledger(tmp_path, tiny_gpt2,
                                                                                          owners_data):
    """The coordinator dies aggregating round 2, after every owner recorded its spend and released
    its update: on resume the round is trained again and paid again. No ledger loses a spend or
    goes down; metrics.jsonl still holds each round once, with the epsilon the owners report."""
    import json

    from fedveil.privacy.dp import epsilon_ledger

    out = tmp_path / "run"
    run = {**experiment(out, tiny_gpt2, owners_data, PLAIN, rounds=2),
           "dp": {"name": "sample_level", "target_epsilon": 8.0, "accountant": "rdp"}}
    killed(run, "aggregate:2")
    assert rounds_logged(out) == [0, 1] and checkpoints(out) == [1]
    before = {k: epsilon_ledger.load(out / "clients" / f"client_{k}") for k in range(3)}
    assert all([s.round for s in ledger.history] == [1, 2] for ledger in before.values())
    in_process({**run, "resume": True})
    assert rounds_logged(out) == [0, 1, 2]
    assert_nothing_half_written(out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for k in range(3):
        ledger = epsilon_ledger.load(out / "clients" / f"client_{k}")
        spent = [s.epsilon_after for s in ledger.history]
        assert [s.round for s in ledger.history] == [1, 2, 2] and spent == sorted(spent)
        assert spent[:2] == [s.epsilon_after for s in before[k].history]  # nothing recorded was lost
        reported = [r["per_client"][f"client_{k}"]["epsilon"] for r in rows[1:]]
        assert reported == pytest.approx([spent[0], spent[2]])  # round 2's row: after both of its spends
        # the re-run round is planned anew from what is left: more noise, and the run still ends within budget
        sigmas = [s.noise_multiplier for s in ledger.history]
        assert sigmas[2] > sigmas[1] == sigmas[0] and spent[2] <= ledger.budget_epsilon == 8.0


def party_processes(root):
    return [p for p in psutil.process_iter(["cmdline"]) if str(root) in " ".join(p.info["cmdline"] or [])
            and "secagg.crypten.party" in " ".join(p.info["cmdline"] or [])]


def test_crypten_party_killed_mid_mpc_fails_the_round_clearly_and_the_run_resumes_after_a_restart(
        tmp_path, tiny_gpt2, owners_data):
    """Two parties run as a deployment's would (started apart from the coordinator, addresses in the
    config). Party 1 dies inside round 2's MPC: the round fails with the party's error and nothing
    of round 2 is written; the operator restarts the parties and resumes. client_2 vanishes in
    round 2 of every run here (no reply): its shares are simply absent and the two others still
    meet min_owners=2. The uninterrupted run with the restarted parties gives the same adapter."""
    from fedveil.core.errors import UserError
    import shutil

    from fedveil.privacy.secagg.crypten.launcher import start_local_parties, stop_parties, tls_dir_of
    from fedveil.privacy.secagg.identity import OwnerKeys

    out, drop = tmp_path / "run", {(2, "client_2")}
    # the parties' signed roster: the owners' keys (made in the run's state dirs; the reference run's
    # owners get the same keys below)
    roster = {f"client_{k}": OwnerKeys(f"client_{k}", str(out / "clients" / f"client_{k}")).member().verify_key
              for k in range(3)}

    def parties(root, fault=None):
        import os

        env = dict(os.environ)
        os.environ.update({"FEDVEIL_FAULT": fault} if fault else {})
        try:
            addresses, procs = start_local_parties(2, root, min_owners=2, owners=roster)
        finally:
            os.environ.clear()
            os.environ.update(env)
        return procs, {"name": "crypten", "parties": 2, "min_owners": 2, "party_addresses": addresses,
                       "tls_dir": str(tls_dir_of(root)), "party_timeout_s": 60}

    procs, crypten = parties(tmp_path / "parties", fault="crypten-party-mpc:2@1")
    try:
        with pytest.raises(
            UserError, match=r"aggregator .*party 1 at 127\.0\.0\.1:\d+ \(\w+\) failed or did not answer within 60 s"
        ):
            in_process(experiment(out, tiny_gpt2, owners_data, crypten, rounds=2), drop)
        assert procs[1].poll() == -9  # party 1 was killed mid-MPC
        assert rounds_logged(out) == [0, 1] and checkpoints(out) == [1]  # nothing of round 2
        assert_nothing_half_written(out)
    finally:
        stop_parties(procs)  # the operator stops what is left of the group and starts it again
    procs, crypten = parties(tmp_path / "parties")
    try:
        summary = in_process({**experiment(out, tiny_gpt2, owners_data, crypten, rounds=2), "resume": True}, drop)
        reference = tmp_path / "reference"
        for k in range(3):
            shutil.copytree(out / "clients" / f"client_{k}" / "keys", reference / "clients" / f"client_{k}" / "keys")
        in_process(experiment(reference, tiny_gpt2, owners_data, crypten, rounds=2), drop)
    finally:
        stop_parties(procs)
    assert not party_processes(tmp_path)
    assert rounds_logged(out) == [0, 1, 2] and summary["rounds_completed"] == 2
    assert_nothing_half_written(out)
    import json

    for run in (out, reference):
        last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["clients"] == ["client_0", "client_1"] and len(last["excluded"]) == 1
        assert "no reply within" in next(iter(last["excluded"].values()))
    # (the coordinator names a silent node by the owner id its replies gave; a restarted coordinator
    # that has not heard from it yet, by its node id)
    assert "client_2" in json.loads((reference / "metrics.jsonl").read_text().splitlines()[-1])["excluded"]
    assert_same_adapter(final_adapter(out), final_adapter(reference))


def test_local_parties_die_with_a_killed_coordinator(tmp_path):
    """What the simulation's parties are started with (``launcher.die_with_parent``): SIGKILL the
    process that started them, as a failpoint in the coordinator would, and they are gone."""
    import signal
    import subprocess
    import sys
    import time

    starter = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time\n"
        "from fedveil.privacy.secagg.crypten.launcher import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '120'], preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, text=True)
    child = psutil.Process(int(starter.stdout.readline()))
    try:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        deadline = time.monotonic() + 10
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        if child.is_running():
            child.kill()
