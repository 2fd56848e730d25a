"""Scale: with ``clients_per_round`` an owner left out of a round does no work in it, and the console
stays short however many owners there are. (The 1,000-owner figures: ``experiments/bench_scale.py``,
whose overrides, resolved parameters and goal lines are checked last.)"""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedveil.configs.schema import register_schemas
from fedveil.experiments import bench_scale
from fedveil.experiments.run import CONFIG_MODULE

OWNERS, PER_ROUND, ROUNDS = 12, 2, 3


@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("scale") / "run"
    cmd = [sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", "experiment=smoke",
           f"num_clients={OWNERS}", f"clients_per_round={PER_ROUND}", f"rounds={ROUNDS}", "train.local_steps=2",
           "data.demo_examples=20", "aggregation=plain", "dp=off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def owner_rounds(out):
    """Owner id -> the rounds it trained or evaluated in, from its own log (written by the owner)."""
    seen = {}
    for k in range(OWNERS):
        log = out / "clients" / f"client_{k}" / "evaluations.jsonl"
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
        seen[f"client_{k}"] = {int(r["round"]) for r in rows}
    return seen


@pytest.mark.slow
def test_owners_left_out_of_a_round_do_no_work_in_it(sampled_run):
    out, _ = sampled_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    seen = owner_rounds(out)
    for r in rows[:-1]:  # round 0 and every round but the last: one sampled cohort alone
        evaluated = set(r["evaluated"])
        assert len(evaluated) == PER_ROUND
        # eval_in_train (the default): round r's evaluation rides in round r+1's train messages, so the
        # owners that evaluate round r's global are round r+1's cohort, and they do it in round r+1
        assert evaluated == set(rows[r["round"] + 1]["clients"])
        # the owners' own logs (a line per round trained or evaluated): round r's work is its cohort's
        # training and the next cohort's evaluation of its global, nobody else's
        assert {who for who, rounds in seen.items() if r["round"] in rounds} == set(r["clients"]) | evaluated
    assert rows[-1]["evaluated"] == sorted(seen) and all(ROUNDS in rounds for rounds in seen.values())
    assert all(len(r["clients"]) == PER_ROUND for r in rows[1:])
    sampled = set().union(*(set(r["clients"]) for r in rows[1:]))
    assert len(sampled) < OWNERS  # some owners did nothing until the final evaluation
    assert all(seen[who] == {ROUNDS} for who in seen if who not in sampled)


@pytest.mark.slow
def test_the_console_stays_short_with_many_owners(sampled_run):
    out, proc = sampled_run
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if "examples from" in line]  # per-owner data lines go to a file
    assert f"{OWNERS} owners:" in proc.stdout and (out / "owners_data.jsonl").is_file()
    assert len((out / "owners_data.jsonl").read_text().splitlines()) == OWNERS
    # the console's length does not grow with the owners: setup, plan (tenseal's download forms: a fixed table
    # of 6 lines), one line per round, outputs
    assert len(lines) <= 30 + ROUNDS, proc.stdout
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr


def test_bench_scale_passes_an_override_to_every_run_or_to_the_configuration_it_names():
    extra = ["data.demo_examples=60", "tenseal+dp:aggregation.download=committee", "plain+dp:seed=3",
             "data.path=/a:b"]  # a colon after '=' is a value's, not a prefix
    assert bench_scale.overrides_for("tenseal+dp", extra) == [
        *bench_scale.CONFIGS["tenseal+dp"], "data.demo_examples=60", "aggregation.download=committee", "data.path=/a:b"]
    assert bench_scale.overrides_for("plain+dp", extra) == [
        *bench_scale.CONFIGS["plain+dp"], "data.demo_examples=60", "seed=3", "data.path=/a:b"]


def test_bench_scale_refuses_an_override_for_a_configuration_it_does_not_run(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_scale", "--configs", "plain+dp", "tenseal+dp:aggregation.download=sum"])
    with pytest.raises(SystemExit) as exc:
        bench_scale.main()
    assert exc.value.code == 2
    assert "override 'tenseal+dp:aggregation.download=sum' is for configuration 'tenseal+dp'" in capsys.readouterr().err


def test_bench_scale_reports_the_bfv_parameters_resolved_for_a_cohort_of_100(tmp_path):
    # issue 23: the 1,000-owner figure must be BFV's, with parameters for the cohort (100), not num_clients
    overrides = ["num_clients=1000", "clients_per_round=100", "rounds=2", *bench_scale.CONFIGS["tenseal+dp"]]
    register_schemas()
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        composed = compose("config", overrides=overrides)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(composed, tmp_path / ".hydra" / "config.yaml")
    agg = bench_scale.resolved_aggregation(tmp_path)
    assert {k: agg[k] for k in ("name", "scheme", "poly_modulus_degree", "plain_modulus_bits", "max_owners")} == {
        "name": "tenseal", "scheme": "bfv", "poly_modulus_degree": 4096, "plain_modulus_bits": 45, "max_owners": 100}
    assert bench_scale.fmt_aggregation(agg).startswith("tenseal (scheme bfv, poly_modulus_degree 4096, ")


def result(config, cpu, peak_gib, owners=1000):
    return {"owners": owners, "config": config, "cpu_seconds_per_round": cpu, "peak_memory_bytes": peak_gib * 2**30,
            "aggregation": {"name": config.split("+")[0]}}


def test_bench_scale_states_round_2s_cpu_ratio_and_each_peak_against_issue_23s_goals():
    lines = [line.strip() for line in bench_scale.goal_lines([result("plain+dp", [35.0, 100.0], 1.8),
                                                               result("tenseal+dp", [57.0, 250.0], 2.3)])]
    assert lines[0] == ("1000 owners: round 2 CPU seconds tenseal+dp / plain+dp = 250.0 / 100.0 = x2.50 "
                               "(goal <= x2: NOT met; tenseal)")
    assert lines[1:] == ["1000 owners: plain+dp peak memory 1.80 GiB (goal <= 2.2 GiB: met)",
                         "1000 owners: tenseal+dp peak memory 2.30 GiB (goal <= 2.2 GiB: NOT met)"]
    met = bench_scale.goal_lines([result("plain+dp", [35.0, 100.0], 1.8), result("tenseal+dp", [99.0, 200.0], 2.2)])
    assert "= x2.00 (goal <= x2: met" in met[0] and met[2].endswith("2.20 GiB (goal <= 2.2 GiB: met)")
    assert "no round 2" in bench_scale.goal_lines([result("plain+dp", [1.0], 1), result("tenseal+dp", [2.0], 1)])[0]
