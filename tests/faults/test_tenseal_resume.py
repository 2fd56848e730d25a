"""A tenseal run killed (SIGKILL to the runner) after round 2's checkpoint resumes without re-keying.

The runner kills itself at the fault point ``after-checkpoint:2`` (``core/faults.py``): round 2's
checkpoint, metrics row and round-chain entry are written, nothing of round 3 is. Restarted with
``resume=true`` it must finish rounds 3 and 4 with the context every owner kept (no owner re-keys),
log each round once, and give every owner the final adapter of an uninterrupted federation, within
BFV's rounding: the same owners and config replayed in-process round by round (the owner code path
of ``Owner.train_round``) with the plain backend's sum, which equals a plain Flower run exactly.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import yaml

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ARGS = ["experiment=smoke", "num_clients=3", "rounds=4", "train.local_steps=2", "aggregation=tenseal", "dp=off"]


def runner(out, *extra, env=None):
    return subprocess.Popen([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", *ARGS, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own process group: what it leaves behind is ours to end


def finish(proc, timeout=600):
    try:
        return proc.communicate(timeout=timeout)[0], proc.returncode
    finally:
        try:  # the Ray processes a killed runner leaves behind: its own process group only
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def held_contexts(out):
    """Each owner's held tenseal context files (their SHA-256) and its log of keyings."""
    from fedveil.privacy.secagg.tenseal import keys

    owners = sorted((out / "clients").iterdir())
    held = (keys.SECRET_FILE, keys.PUBLIC_FILE, keys.SETUP_FILE)
    files = {o.name: {str(p.relative_to(o)): hashlib.sha256(p.read_bytes()).hexdigest()
                      for p in sorted((o / "keys" / keys.CONTEXTS_DIR).rglob("*")) if p.name in held} for o in owners}
    return files, {o.name: keys.keyings(o) for o in owners}


def rounds(out):
    return [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def uninterrupted(out, ref_dir):
    """The federation's global after each round, replayed without interruption: the same owners
    (config, data, seeds) train each round from the previous global; the plain backend sums."""
    import torch

    from fedveil.client.owner import Owner, OwnerIdentity
    from fedveil.configs.schema import from_dict
    from fedveil.core import wire
    from fedveil.core.payload import RoundContext
    from fedveil.privacy.secagg.plain import PlainBackend

    values = yaml.safe_load((out / ".hydra" / "config.yaml").read_text())
    values.update(resume=False, output_dir=str(ref_dir), aggregation={"name": "plain"})
    values["model"]["path"] = str(out / "base_model")
    values["data"]["client_dirs"] = [str(out / "data" / f"client_{k}") for k in range(values["num_clients"])]
    cfg = from_dict(values)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the simulated owners train
    try:
        globals_ = []
        for server_round in range(1, cfg.rounds + 1):
            owners = [Owner(cfg, OwnerIdentity(f"client_{k}", cfg.data.client_dirs[k], str(ref_dir / f"client_{k}")),
                            {wire.ROUND: server_round}) for k in range(cfg.num_clients)]
            start = globals_[-1] if globals_ else owners[0].initial
            payloads = {o.identity.owner_id: o.train_round(start.copy())[0] for o in owners}
            backend = PlainBackend(cfg.aggregation, owners[0].layout.size)
            total = backend.combine(payloads, RoundContext(server_round, owners[0].layout.digest))
            globals_.append(backend.reveal(total.payload).applied_to(start))
        final = owners[0].save_final_adapter(globals_[-1])
    finally:
        torch.set_num_threads(threads)
    return globals_, final


def test_a_tenseal_run_killed_after_round_2_resumes_without_re_keying_to_the_uninterrupted_adapter(tmp_path):
    from safetensors.numpy import load_file

    from fedveil.server.cli import main as fedveil

    out = tmp_path / "run"
    log, code = finish(runner(out, env={**os.environ, "FEDVEIL_FAULT": "after-checkpoint:2"}))
    assert code == -signal.SIGKILL, log[-3000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "round_0001.safetensors",
        "round_0002.safetensors",
    ]
    assert rounds(out) == [0, 1, 2] and not (out / "summary.json").exists()
    contexts, keyings = held_contexts(out)
    assert all(len(files) == 3 for files in contexts.values())  # secret.ctx, public.ctx, setup.json
    assert {o: [e["event"] for e in k] for o, k in keyings.items()} == {
        "client_0": ["generate"], "client_1": ["install"], "client_2": ["install"]}

    log, code = finish(runner(out, "resume=true"))
    assert code == 0, log[-3000:]
    assert "owners hold this run's context; resuming with it, no re-keying" in log
    assert "resuming after round 2" in log and "round 3/4" in log and "round 1/4" not in log
    assert rounds(out) == [0, 1, 2, 3, 4]  # each round once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 4
    chain = [json.loads(line)["round"] for line in (out / "round_ledger.jsonl").read_text().splitlines()]
    assert chain == [1, 2, 3, 4] and fedveil(["verify-chain", str(out), "--head", summary["ledger_head"]]) == 0
    assert held_contexts(out) == (contexts, keyings)  # no owner re-keyed: same files, no new keying

    globals_, final = uninterrupted(out, tmp_path / "reference")
    want = load_file(final / "adapter_model.safetensors")
    # BFV rounds each owner's n_k * delta to its fixed-point step (7.3e-4 here) and the re-encrypted
    # global to 2^-23 of its largest value; Adam's first steps (update ~ lr * sign(gradient)) carry that
    # on: measured against this plain-sum replay, mean 1.9e-5, max 2.2e-3 after 4 rounds. A skipped,
    # repeated or mis-based round moves every value, by 2.8e-3 on average here (checked first), so a
    # mean within 2e-4 (10x the rounding, 14x below one round) tells the two apart.
    assert np.abs(globals_[-1] - globals_[-2]).mean() > 1e-3
    for k in range(3):
        got = load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")
        diff = np.concatenate([np.abs(got[n] - want[n]).ravel() for n in sorted(want)])
        assert diff.mean() < 2e-4 and diff.max() < 1e-2, (k, diff.max(), diff.mean())
