"""Whole federations on the Flower Simulation Engine, through the same command a user types."""

import json
import subprocess
import time
import sys

import numpy as np
import pytest

from fedveil.server import cli

pytestmark = pytest.mark.slow


def run_cli(out, *args, multirun=False, expect=0):
    cmd = [sys.executable, "-m", "fedveil.experiments.run", *(["-m"] if multirun else []),
           f"hydra.{'sweep' if multirun else 'run'}.dir={out}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def verify_adapter(adapter, out, *args):
    """``fedveil verify-adapter`` against the roster the owners pinned (every simulated owner holds the same)."""
    return cli.main(["verify-adapter", str(adapter), "--roster", str(out / "clients" / "client_0" / "roster.json"),
                     *map(str, args)])


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_acceptance_run_plain_no_dp(tmp_path):
    out = tmp_path / "D"
    proc = run_cli(out, "seed=1", "rounds=3", "num_clients=3", "aggregation=plain", "dp=off")
    assert "round 3/3" in proc.stdout and "eval loss" in proc.stdout
    assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr + proc.stdout

    metrics = rows(out)
    assert [r["round"] for r in metrics] == [0, 1, 2, 3]
    assert metrics[-1]["eval_loss"] < 0.92 * metrics[0]["eval_loss"]  # clearly below round 0
    for r in metrics[1:]:
        assert r["clients"] == ["client_0", "client_1", "client_2"] and r["backend"] == "plain"
        assert set(r["seconds"]) >= {"round", "train", "protect", "aggregate", "reveal", "evaluate"}
        for c in r["per_client"].values():
            assert c["bytes_up"] > 4 * 16384 and c["bytes_down"] > 4 * 16384 and c["num_examples"] == 216

    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds_completed"] == 3 and summary["final_eval_loss"] == metrics[-1]["eval_loss"]
    assert (out / "report.md").is_file() and len(list((out / "checkpoints").glob("round_*.safetensors"))) == 3
    # the plan comes first and stays in the summary, with planned vs measured per figure
    assert proc.stdout.index("[fedveil] plan | ") < proc.stdout.index("round 0/3")
    assert summary["plan"]["run"]["backend"] == "plain" and summary["plan"]["dp"] is None
    up = summary["planned_vs_measured"]["bytes_up_per_owner_per_round"]
    assert up["planned"] == 4 * 16384 + 8 and 1.0 < up["ratio"] < 1.02  # Flower's records add the rest
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == [
        "bytes.png",
        "epsilon.png",
        "loss.png",
        "seconds.png",
    ]

    # the round chain verifies against the head the summary recorded
    from fedveil.server.cli import main as fedveil

    chain = [json.loads(line) for line in (out / "round_ledger.jsonl").read_text().splitlines()]
    assert [e["round"] for e in chain] == [1, 2, 3] and chain[0]["participants"] == [
        "client_0",
        "client_1",
        "client_2",
    ]
    assert fedveil(["verify-chain", str(out), "--head", summary["ledger_head"]]) == 0

    # final_adapter/ loads with PEFT onto the base model its config names, and equals round 3's global
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    from fedveil.task.model import get_adapter
    from fedveil.core.layout import AdapterLayout

    adapter_cfg = json.loads((out / "final_adapter" / "adapter_config.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(adapter_cfg["base_model_name_or_path"], local_files_only=True)
    model = PeftModel.from_pretrained(base, out / "final_adapter", local_files_only=True)
    loaded = get_adapter(model)
    vector = load_file(out / "checkpoints" / "round_0003.safetensors")["adapter"]
    np.testing.assert_allclose(AdapterLayout.of(loaded).flatten(loaded), vector, atol=1e-7)
    assert np.abs(vector).max() > 0


def test_acceptance_run_with_dp(tmp_path):
    out = tmp_path / "P"
    proc = run_cli(out, "seed=1", "rounds=3", "num_clients=3", "aggregation=plain", "dp=sample_level",
                   "dp.target_epsilon=4")
    assert "max eps" in proc.stdout
    metrics = rows(out)
    eps = [c["epsilon"] for r in metrics[1:] for c in r["per_client"].values()]
    assert len(eps) == 9 and all(0 < e <= 4.0 for e in eps)
    for r in metrics[1:]:
        for c in r["per_client"].values():
            assert {"noise_multiplier", "sample_rate", "steps", "delta", "epsilon"} <= set(c)
            assert c["delta"] == 1e-5 and c["sample_rate"] == 0.05 and c["steps"] == 20
            # under DP nothing exact about the owner's data reaches the server
            assert c["num_examples"] is None and c["train_loss"] is None and "eval_loss" not in c
            assert "update_norm" not in c
        assert r["eval_loss"] is None and r["train_loss"] is None
    summary = json.loads((out / "summary.json").read_text())
    owners_loss = summary["owners_eval_loss_by_round"]  # simulation only: the owners' own figures
    assert owners_loss["3"] < owners_loss["0"]
    assert summary["max_epsilon"] == max(eps)
    # every owner signed the final adapter the server wrote (under DP: the statement joins the transcript suite)
    assert verify_adapter(out / "final_adapter", out) == 0
    claim = json.loads((out / "signatures" / "coordinator.json").read_text())["statement"]
    assert claim["round_chain_head"] == summary["ledger_head"] and claim["rounds"] == 3
    # each owner's ledger is in its own state directory, never in what the server wrote
    for k in range(3):
        ledger = json.loads((out / "clients" / f"client_{k}" / "privacy_ledger.json").read_text())
        assert len(ledger["history"]) == 3 and ledger["spent_epsilon"] <= 4.0
    # a 4th round at the same noise, same state directories: every owner refuses; the run still ends
    proc = run_cli(
        out,
        "seed=1",
        "rounds=4",
        "num_clients=3",
        "aggregation=plain",
        "dp=sample_level",
        "dp.target_epsilon=4",
        f"dp.noise_multiplier={metrics[1]['per_client']['client_0']['noise_multiplier']}",
        "resume=true",
        expect=2,
    )
    assert proc.stderr.strip().splitlines() == [
        "fedveil: error: round 4: no owner trained, so the run stops (3 excluded; "
        + proc.stderr.split("excluded; ", 1)[1].strip()
    ]
    assert "owner failed: budget" in proc.stderr  # the refusal's code; its line is on each owner's console
    last = rows(out)[-1]
    assert last["round"] == 4 and last["clients"] == [] and len(last["excluded"]) == 3
    assert all(reason == "owner failed: budget" for reason in last["excluded"].values())


def test_non_dp_runs_with_one_seed_repeat_also_on_an_existing_ray_head(tmp_path, ray_head):
    """(That DP runs with one seed differ is played at the owner level, cheaper:
    tests/adversary/test_dp_against_the_coordinator.py::test_owners_replayed_with_one_config_repeat_without_dp_and_differ_with_it.)"""
    from safetensors.numpy import load_file

    def final(name, *args):
        run_cli(tmp_path / name, "experiment=smoke", "rounds=1", "seed=5", "aggregation=plain", *args)
        return load_file(tmp_path / name / "final_adapter" / "adapter_model.safetensors")

    # the second plain run goes to a Ray head started beforehand (sim.ray_address), and repeats the first
    address, ray_tmp = ray_head
    plain = [final("off0", "dp=off"), final("off1", "dp=off", f"sim.ray_address={address}")]
    assert all(np.array_equal(plain[0][k], plain[1][k]) for k in plain[0])
    assert list(ray_tmp.glob("session_*/logs/python-core-driver-*"))  # that run's driver connected to the head


SECURE_ARGS = ["dp=off", "seed=3", "rounds=2", "num_clients=3"]
PLAIN = ["aggregation=plain", "dp=off"]  # the defaults are DP-SGD and the planner's secure backend


@pytest.fixture(scope="module")
def plain_reference(tmp_path_factory):
    """The plain run the secure backends must reproduce: its final adapter tensors and its metrics rows."""
    from safetensors.numpy import load_file

    out = tmp_path_factory.mktemp("plain") / "run"
    run_cli(out, "aggregation=plain", *SECURE_ARGS)
    return load_file(out / "final_adapter" / "adapter_model.safetensors"), rows(out)


def assert_same_held_out_loss(secure_rows, plain_rows):
    """One held-out loss on every backend (token-weighted over owners, summed inside the backend), and no
    owner's own loss reaches a secure backend's coordinator (the key stays out of per_client)."""
    assert [r["round"] for r in secure_rows] == [r["round"] for r in plain_rows] == [0, 1, 2]
    for secure, plain in zip(secure_rows, plain_rows):
        assert abs(secure["eval_loss"] - plain["eval_loss"]) < 1e-3
        assert all("eval_loss" not in c for c in secure["per_client"].values())
    assert all("eval_loss" in c for c in plain_rows[-1]["per_client"].values())  # plain: the server sees it anyway


def test_tenseal_matches_plain_and_the_server_writes_no_plaintext(tmp_path, plain_reference):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    proc = run_cli(tmp_path / "he", "aggregation=tenseal", *SECURE_ARGS)
    out = tmp_path / "he"
    assert "server holds the public context only" in proc.stdout
    reference, plain_rows = plain_reference
    assert_same_held_out_loss(rows(out), plain_rows)
    for k in range(3):
        owner = load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")
        assert max(float(np.abs(owner[n] - reference[n]).max()) for n in reference) < 1e-4
    # the server side of the output: no final adapter, checkpoints of ciphertext bytes only,
    # no update norms in its metrics
    assert not (out / "final_adapter").exists()
    for ckpt in (out / "checkpoints").glob("*.safetensors"):
        with safe_open(str(ckpt), framework="numpy") as fh:
            assert all(k.startswith(("base-ct", "pending-")) and fh.get_tensor(k).dtype == np.uint8 for k in fh.keys())
    for r in rows(out)[1:]:
        assert r["backend"] == "tenseal" and r["clients"] == ["client_0", "client_1", "client_2"]
        assert all("update_norm" not in c and c["num_examples"] is None for c in r["per_client"].values())
        # BFV (the default): two fixed-point values per slot, the weight sealed beside: <= 3x fp32
        assert all(c["bytes_update_up"] <= 12 * 16384 for c in r["per_client"].values())
    server_files = [
        p
        for p in out.rglob("*")
        if p.is_file() and p.relative_to(out).parts[0] not in ("clients", "data", "base_model")
    ]
    weights = reference["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"].tobytes()[:64]
    assert not any(weights in p.read_bytes() for p in server_files)
    # owners hold the keys; the server's output has none
    assert len(list((out / "clients" / "client_0" / "keys" / "tenseal").glob("*/secret.ctx"))) == 1
    # each owner signed the adapter it holds; its bundle is beside it, the cohort's in the run's signatures/
    for k in range(3):
        adapter = out / "clients" / f"client_{k}" / "final_adapter"
        assert verify_adapter(adapter, out, "--min-owners", 1) == 0
        assert verify_adapter(adapter, out, "--signatures", out / "signatures") == 0
    assert not any(p.name.endswith(".ctx") or p.name.endswith(".key") for p in server_files)


def test_crypten_matches_plain_with_three_parties_that_are_gone_afterwards(tmp_path, plain_reference):
    import psutil
    from safetensors.numpy import load_file

    out = tmp_path / "mpc"
    proc = run_cli(out, "aggregation=crypten", *SECURE_ARGS)
    assert "3 aggregator parties reachable" in proc.stdout
    final = load_file(out / "final_adapter" / "adapter_model.safetensors")
    reference, plain_rows = plain_reference
    assert max(float(np.abs(final[n] - reference[n]).max()) for n in reference) < 1e-3
    assert_same_held_out_loss(rows(out), plain_rows)
    assert verify_adapter(out / "final_adapter", out) == 0  # every owner signed the global it evaluated last
    for r in rows(out)[1:]:
        assert r["backend"] == "crypten" and r["clients"] == ["client_0", "client_1", "client_2"]
        for c in r["per_client"].values():
            assert "update_norm" not in c and c["num_examples"] is None  # the server sees the aggregate only
            assert c["bytes_update_up"] <= 3 * 2 * 4 * 16384 + 3 * 4096  # <= 2x fp32 per party
    # the parties die with the runner (PR_SET_PDEATHSIG): on a loaded machine they may take a moment after it exits
    def parties_left():
        lines = (" ".join(p.info["cmdline"] or []) for p in psutil.process_iter(["cmdline"]))
        return [line for line in lines if "secagg.crypten.party" in line and str(out) in line]

    deadline = time.monotonic() + 20
    while parties_left() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not parties_left()


def test_owner_level_dp_under_crypten_trains_and_each_ledger_holds_its_skellam_epsilon(tmp_path):
    """dp=owner_level: 4 owners, quantised updates and Skellam shares summed by 3 parties. Every owner joins
    (q = 1: how many join is then no draw of the owners' secret coins) and the noise is small (sigma 0.03, a
    large epsilon), so that 2 rounds show the loss falling every time. q < 1 end to end: the tenseal run below."""
    from fedveil.privacy.dp import skellam

    out = tmp_path / "owner-level"
    run_cli(out, "seed=3", "rounds=2", "num_clients=4", "aggregation=crypten", "dp=owner_level",
            "dp.noise_multiplier=0.03", "dp.clip_norm=1.0", "dp.target_epsilon=5000", "dp.sample_rate=1.0")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["owners_eval_loss_by_round"]["2"] < summary["owners_eval_loss_by_round"]["0"] - 0.1
    for r in rows(out)[1:]:
        assert r["clients"] == [f"client_{k}" for k in range(4)] and r["train_loss"] is None
        for c in r["per_client"].values():  # the parties revealed the sum only; owners the DP record only
            assert c["num_examples"] is None and c["train_loss"] is None and "update_norm" not in c
            assert (c["sample_rate"], c["steps"]) == (1.0, 1.0) and abs(c["noise_multiplier"] - 0.03) < 1e-9
    for k in range(4):
        state = out / "clients" / f"client_{k}"
        ledger = json.loads((state / "owner_level_ledger.json").read_text())
        entries = [(e["mu"], e["sample_rate"], e["l1"], e["l2"], 1) for e in ledger["history"]]
        assert [e["round"] for e in ledger["history"]] == [1, 2]
        assert ledger["spent_epsilon"] == skellam.epsilon_of(entries, ledger["delta"])
        assert ledger["spent_epsilon"] == rows(out)[2]["per_client"][f"client_{k}"]["epsilon"]
        assert not (state / "privacy_ledger.json").exists()  # the sample-level unit spent nothing


def test_owner_level_dp_under_tenseal_trains_and_every_owner_decodes_the_same_global(tmp_path):
    """dp=owner_level under tenseal's BFV: 4 owners, each its own coin (q = 0.9), integer updates (quantised
    delta + Skellam share) encrypted at step 1, summed by the server; owners count the signed contributions
    (t = 3) and decode the sum over gamma. Little noise (sigma 0.03). How many owners join is a draw of their
    secret coins, Bin(4, 0.9) a round. Two joins in 2 rounds take the loss down by more than 0.02 (one join
    alone took it down 0.030 and 0.066, measured with the coin forced; the owners' held-out samples, each drawn
    with the owner's CSPRNG, move it ~0.01), and at most one join happens with probability 7.3e-7 (at q = 1/2
    with a 0.1 fall the test failed in CI)."""
    from fedveil.privacy.dp import skellam

    out = tmp_path / "owner-level-tenseal"
    proc = run_cli(out, "seed=3", "rounds=2", "num_clients=4", "aggregation=tenseal", "dp=owner_level",
                   "dp.noise_multiplier=0.03", "dp.clip_norm=1.0", "dp.target_epsilon=5000", "dp.sample_rate=0.9")
    assert "DP against other owners: epsilon" in proc.stdout + proc.stderr  # the plan states both
    summary = json.loads((out / "summary.json").read_text())
    assert summary["owners_eval_loss_by_round"]["2"] < summary["owners_eval_loss_by_round"]["0"] - 0.02
    for r in rows(out)[1:]:
        assert r["clients"] == [f"client_{k}" for k in range(4)] and r["train_loss"] is None
        for c in r["per_client"].values():  # ciphertexts only; owners the DP record only
            assert c["num_examples"] is None and c["train_loss"] is None and "update_norm" not in c
            assert (c["sample_rate"], c["steps"]) == (0.9, 1.0) and abs(c["noise_multiplier"] - 0.03) < 1e-9
    adapters = set()
    for k in range(4):
        state = out / "clients" / f"client_{k}"
        ledger = json.loads((state / "owner_level_ledger.json").read_text())
        entries = [(e["mu"], e["sample_rate"], e["l1"], e["l2"], 1) for e in ledger["history"]]
        assert ledger["spent_epsilon"] == skellam.epsilon_of(entries, ledger["delta"])
        adapters.add((state / "final_adapter" / "adapter_model.safetensors").read_bytes())
    assert len(adapters) == 1  # every owner decoded the same sums into the same global


def test_llama_architecture_trains_through_model_path(tmp_path, tiny_llama):
    out = tmp_path / "L"
    run_cli(out, "model=local", f"model.path={tiny_llama}", "model.device=cpu", "experiment=smoke", *PLAIN)
    metrics = rows(out)
    assert metrics[-1]["eval_loss"] < 0.95 * metrics[0]["eval_loss"]
    adapter_cfg = json.loads((out / "final_adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["base_model_name_or_path"] == str(tiny_llama)
    assert "q_proj" in adapter_cfg["target_modules"]


def test_resume_continues_from_the_latest_checkpoint(tmp_path):
    out = tmp_path / "R"
    run_cli(out, "experiment=smoke", "rounds=1", *PLAIN)
    proc = run_cli(out, "experiment=smoke", "rounds=2", "resume=true", *PLAIN)
    assert "resuming after round 1" in proc.stdout
    assert [r["round"] for r in rows(out)] == [0, 1, 2]


def test_an_epsilon_sweep_with_owner_sampling_and_fedveil_report_draws_its_frontier(tmp_path):
    from fedveil.experiments.report import main as report

    out = tmp_path / "S"
    run_cli(out, "experiment=smoke", "rounds=1", "aggregation=plain", "clients_per_round=1", "dp.target_epsilon=2,8",
            multirun=True)
    for i in (0, 1):  # one of the two owners trains (and spends epsilon); both evaluate
        trained = rows(out / str(i))[1]
        assert len(trained["clients"]) == 1 and list(trained["per_client"]) == trained["clients"]
        untrained = ({"client_0", "client_1"} - set(trained["clients"])).pop()
        ledger = out / str(i) / "clients" / untrained / "privacy_ledger.json"
        assert not ledger.exists() or json.loads(ledger.read_text())["history"] == []
    summaries = [json.loads((out / str(i) / "summary.json").read_text()) for i in (0, 1)]
    eps = [s["max_epsilon"] for s in summaries]
    assert 1 < eps[0] <= 2 < eps[1] <= 8  # each job spent its own target
    losses = [list(s["owners_eval_loss_by_round"].values())[-1] for s in summaries]
    assert all(np.isfinite(losses))
    assert report([str(out)]) == 0
    assert (out / "report" / "frontier.png").is_file() and (out / "0" / "plots" / "epsilon.png").is_file()


def test_dp_benchmark_runs_and_prints_ratios():
    proc = subprocess.run([sys.executable, "-m", "fedveil.experiments.bench_dp", "--models", "tiny", "--steps", "2",
                           "--repeats", "1", "--variants", "hooks"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ratios = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(ratios) == {"tiny/hooks"} and ratios["tiny/hooks"]["time_ratio"] > 0
