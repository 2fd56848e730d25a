"""The runner plans a run once and writes its summary.json once, with everything the run knows.

No federation runs here: the Simulation Engine is replaced by a stand-in that leaves the rows of a
real run (``tests/formats/run_v0``: the demo config, tenseal + DP-SGD) and returns the coordinator's
summary of it, as ``server/app.py: server_app`` hands it to the runner.
"""

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from fedveil.configs import schema
from fedveil.core import metrics
from fedveil.core.disk import owner_state_dir
from fedveil.experiments import plan as plan_module
from fedveil.experiments import run
from fedveil.privacy import planner

FIXTURE = Path(__file__).parents[1] / "formats" / "run_v0"


@pytest.fixture
def planner_calls(monkeypatch):
    """Every call of the planner (``privacy.planner.choose``, where the config and the plan call it)."""
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs.get("values"))
        return planner.choose(*args, **kwargs)

    monkeypatch.setattr(schema, "choose", counted)
    monkeypatch.setattr(plan_module, "choose", counted)
    return calls


def test_an_auto_run_is_planned_once_and_runs_the_plans_pick(tmp_path, monkeypatch, capsys, planner_calls):
    started = {}
    monkeypatch.setattr(run, "run_experiment",
                        lambda cfg, plan: started.update(cfg=cfg, plan=plan) or metrics.RunSummary(final_eval_loss=1.0))
    monkeypatch.setattr(sys, "argv", ["run", f"hydra.run.dir={tmp_path}/out", "rounds=1", "dp=off", "aggregation=auto",
                                      "privacy.coordinator=curious"])
    schema.register_schemas()
    run.hydra_main()
    assert planner_calls == [16384]  # once, knowing the adapter's size
    cfg, plan = started["cfg"], started["plan"]
    assert cfg.aggregation.name == plan["pick"] == plan["run"]["backend"] == "tenseal"
    assert capsys.readouterr().out.count("planner (aggregation=auto): tenseal: the cheapest backend") == 1


def test_an_auto_run_the_planner_refuses_is_one_line_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(run, "run_experiment", lambda cfg, plan: pytest.fail("a refused plan ran"))
    monkeypatch.setattr(sys, "argv", ["run", f"hydra.run.dir={tmp_path}/out", "dp=off", "aggregation=auto",
                                      "privacy.coordinator=curious", "privacy.owner_collusion=true"])
    schema.register_schemas()
    with pytest.raises(SystemExit) as stop:
        run.hydra_main()
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("fedveil: error: no aggregation backend covers coordinator=curious, owner_collusion=true")


def test_the_runner_writes_summary_json_once_with_the_plan_and_the_owners_losses(tmp_path, monkeypatch):
    out = tmp_path / "out"
    values = plan_module.compose(["rounds=2"])  # the demo: aggregation=auto (-> tenseal), DP-SGD
    values["output_dir"] = str(out)
    cfg, plan = plan_module.planned_run(values)
    fixture = metrics.read_summary(FIXTURE)
    coordinators = replace(fixture, plan=None, planned_vs_measured=None, owners_eval_loss_by_round=None)

    def federation(cfg):  # what the Simulation Engine leaves: the rows, the owners' own logs, the summary
        shutil.copy(FIXTURE / metrics.METRICS_FILE, out)
        for k, (loss, tokens) in enumerate([(5.0, 100), (6.0, 300), (7.0, 0)]):
            with open(owner_state_dir(out, k) / "evaluations.jsonl", "a") as log:
                log.write(json.dumps({"run": str(out), "round": 2, "eval_loss": loss, "eval_tokens": tokens}) + "\n")
                log.write(json.dumps({"run": "another run", "round": 2, "eval_loss": 9.0, "eval_tokens": 9}) + "\n")
        return coordinators

    writes = []
    write = metrics.atomic_write_bytes
    monkeypatch.setattr(metrics, "atomic_write_bytes", lambda path, data, **kw: (writes.append(Path(path).name),
                                                                                   write(path, data, **kw)))
    monkeypatch.setattr(run, "run_in_simulation", federation)
    summary = run.run_experiment(cfg, plan)
    assert writes == [metrics.SUMMARY_FILE]  # once, and nothing else through the summary's writer
    assert metrics.read_summary(out) == summary
    assert summary.plan == plan and summary.owners_eval_loss_by_round == {2: (5.0 * 100 + 6.0 * 300) / 400}
    assert replace(summary, plan=None, planned_vs_measured=None, owners_eval_loss_by_round=None) == coordinators
    up = summary.planned_vs_measured[metrics.BYTES_UP_FIGURE]
    assert (up.planned, up.measured) == (plan["run"]["update_up"], 131855.0)
    assert summary.ratio(metrics.EPSILON_FIGURE) == pytest.approx(fixture.max_epsilon / plan["dp"]["epsilon"])
    assert (out / "report.md").is_file() and (out / "plots" / "loss.png").is_file()
