"""Scale: with ``clients_per_round`` an owner left out of a round does no work in it, and the console
stays short however many owners there are. (The 1,000-owner figures: ``experiments/bench_scale.py``.)"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

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


def test_the_console_stays_short_with_many_owners(sampled_run):
    out, proc = sampled_run
    lines = proc.stdout.splitlines()
    assert not [line for line in lines if "examples from" in line]  # per-owner data lines go to a file
    assert f"{OWNERS} owners:" in proc.stdout and (out / "owners_data.jsonl").is_file()
    assert len((out / "owners_data.jsonl").read_text().splitlines()) == OWNERS
    # the console's length does not grow with the owners: setup, plan, one line per round, outputs
    assert len(lines) <= 25 + ROUNDS, proc.stdout
    assert len(proc.stderr.splitlines()) <= 5, proc.stderr
