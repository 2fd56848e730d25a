"""Run plots, planned vs measured, and ``fedveil report``: checked against the records, not by eye.

The run directories are written by the real writers (``core.metrics``' rows and summary, the
runner's ``runner_summary`` with a real plan of the config, ``server.outputs.write_outputs``) from
synthetic rounds, so no federation runs here; the slow end-to-end tests check the same files from
real runs.
"""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
from matplotlib.image import imread

from fedveil.core.metrics import MetricsRow, append_row, summarize
from fedveil.experiments.plan import compose, plan_of
from fedveil.experiments.plots import PIXELS, plot_run
from fedveil.experiments.report import main as report_main
from fedveil.experiments.report import report
from fedveil.experiments.run import runner_summary
from fedveil.privacy.secagg.base import Cost
from fedveil.server.outputs import write_outputs

OWNERS = ["client_0", "client_1", "client_2"]


def rounds(plan, losses, epsilons=None, dp="off"):
    """metrics.jsonl rows shaped as server.federation writes them; bytes 1 % over the plan's."""
    run = plan["run"]
    rows = [{"round": 0, "backend": run["backend"], "eval_loss": losses[0] if dp == "off" else None,
             "clients": OWNERS, "per_client": {}, "seconds": {"round": 0.0, "evaluate": 0.2}}]
    for server_round in range(1, len(losses)):
        per_client = {}
        for k, who in enumerate(OWNERS):
            down = Cost.of(run).down_in(server_round, plan["rounds"])  # eval_in_train: round 1 downloads no global
            c = {"bytes_down": int(down * 1.01) + k, "bytes_update_up": int(run["update_up"] * 1.01) + k,
                 "bytes_up": int(run["update_up"] * 1.01) + k + 200 + server_round}
            if dp == "off":
                c["eval_loss"] = losses[server_round] + 0.01 * (k - 1)
            else:
                c.update(epsilon=epsilons[server_round - 1] * (1 - 0.01 * k), epsilon_budget=epsilons[-1] + 1)
            per_client[who] = c
        rows.append({"round": server_round, "backend": run["backend"], "dp": dp, "clients": OWNERS, "excluded": {},
                     "train_loss": losses[server_round] + 0.1,
                     "eval_loss": losses[server_round] if dp == "off" else None,
                     "per_client": per_client,
                     "seconds": {"round": 1.0 + server_round, "train": 0.5 * server_round, "protect": 0.01,
                                 "aggregate": 0.02,
                                 "reveal": 0.03, "evaluate": 0.2},
                     "max_epsilon": max((c["epsilon"] for c in per_client.values() if "epsilon" in c), default=None)})
    return rows


def write_run(path, plan, rows, overrides, owners_losses=None):
    path.mkdir(parents=True)
    typed = [MetricsRow.from_dict(row) for row in rows]
    for row in typed:
        append_row(path, row)
    coordinators = summarize(typed, backend=plan["run"]["backend"], dp=rows[-1]["dp"], clients=OWNERS)
    # under DP the simulation runner adds the owners' own losses (run.owners_eval_losses)
    write_outputs(path, runner_summary(coordinators, plan, typed, dict(enumerate(owners_losses or [])) or None))
    (path / ".hydra").mkdir()
    (path / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A sweep directory of three runs: plain without DP, and tenseal + DP-SGD at epsilon 2 and 8."""
    root = tmp_path_factory.mktemp("sweep")
    common = ["rounds=2", "aggregation=auto"]
    plain = plan_of(compose(["rounds=2", "aggregation=plain"]))
    tenseal = plan_of(compose(["rounds=2", "aggregation=tenseal", "dp=sample_level", "dp.target_epsilon=2"]))
    write_run(root / "0", plain, rounds(plain, [5.6, 5.1, 4.8]), [*common, "privacy.coordinator=trusted"])
    write_run(root / "1", tenseal, rounds(tenseal, [5.6, 5.4, 5.3], [1.2, 1.9], dp="sample_level"),
              [*common, "privacy.coordinator=curious", "privacy.epsilon=2"], owners_losses=[5.6, 5.4, 5.3])
    write_run(root / "2", tenseal, rounds(tenseal, [5.6, 5.3, 5.0], [5.1, 7.9], dp="sample_level"),
              [*common, "privacy.coordinator=curious", "privacy.epsilon=8"], owners_losses=[5.6, 5.3, 5.0])
    return root


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_summary_holds_the_plan_and_planned_vs_measured(sweep):
    summary = json.loads((sweep / "2" / "summary.json").read_text())
    plan, rows = summary["plan"], metrics(sweep / "2")
    assert plan["pick"] == "tenseal" and plan["dp"]["noise_multiplier"] > 0
    figures = summary["planned_vs_measured"]
    up = np.mean([c["bytes_update_up"] for r in rows[1:] for c in r["per_client"].values()])
    assert figures["bytes_up_per_owner_per_round"]["measured"] == pytest.approx(up)
    assert figures["bytes_up_per_owner_per_round"]["ratio"] == pytest.approx(up / plan["run"]["update_up"])
    assert 1.0 < figures["bytes_down_per_owner_per_round"]["ratio"] < 1.02  # round 1 planned smaller
    assert figures["epsilon"] == {"planned": plan["dp"]["epsilon"], "measured": 7.9,
                                  "ratio": pytest.approx(7.9 / plan["dp"]["epsilon"])}
    assert figures["seconds_protect_per_round"]["planned"] == pytest.approx(plan["run"]["phase_seconds"]["protect"])
    assert figures["seconds_protect_per_round"]["measured"] == pytest.approx(0.01)
    assert figures["seconds_train_per_round"]["planned"] is None  # training is not modelled


def test_run_plots_decode_at_their_size_and_hold_the_metrics(sweep):
    plotted = {run: plot_run(sweep / run) for run in ("0", "2")}
    for run in plotted:
        for name in ("loss.png", "epsilon.png", "bytes.png", "seconds.png"):
            image = imread(sweep / run / "plots" / name)
            assert image.shape[:2] == (PIXELS[1], PIXELS[0]) and image.std() > 0, name
    rows = metrics(sweep / "0")
    drawn = plotted["0"]
    assert drawn["loss.png"]["federation (token-weighted)"] == [[r["round"], r["eval_loss"]] for r in rows]
    assert drawn["loss.png"]["client_2"] == [[r["round"], r["per_client"]["client_2"]["eval_loss"]] for r in rows[1:]]
    assert drawn["epsilon.png"] == {}  # dp=off: nothing spent, nothing drawn
    assert drawn["seconds.png"]["train"] == [[r["round"], r["seconds"]["train"]] for r in rows[1:]]
    assert drawn["bytes.png"]["up: protected update"] == [
        [r["round"], pytest.approx(np.mean([c["bytes_update_up"] for c in r["per_client"].values()]))] for r in rows[1:]
    ]

    rows = metrics(sweep / "2")
    drawn = plotted["2"]
    assert drawn["epsilon.png"]["client_1"] == [[r["round"], r["per_client"]["client_1"]["epsilon"]] for r in rows[1:]]
    assert drawn["epsilon.png"]["budget 8.9"] == [[0, 8.9], [1, 8.9]]  # axhline spans the axes
    assert "federation (token-weighted)" not in drawn["loss.png"]  # under DP the coordinator sees no loss
    assert drawn["loss.png"]["owners' own logs (never sent under DP)"] == [[0, 5.6], [1, 5.3], [2, 5.0]]


def test_report_compares_a_sweep_in_one_table_and_a_frontier(sweep, tmp_path, capsys):
    text, plots = report([sweep], tmp_path)
    lines = text.splitlines()
    cells = [re.split(r"\s{2,}", line.strip()) for line in lines[:4]]  # columns are 2+ spaces apart
    assert cells[0][:4] == ["run", "backend", "dp", "epsilon"]
    # labels: the overrides that differ between the runs
    assert [c[0] for c in cells[1:]] == ["privacy.coordinator=trusted", "privacy.coordinator=curious privacy.epsilon=2",
                                         "privacy.coordinator=curious privacy.epsilon=8"]
    assert cells[1][1:6] == ["plain", "off", "-", "5.6000", "4.8000"]
    assert cells[3][1:6] == ["tenseal", "sample_level", "7.900", "5.6000*", "5.0000*"]
    assert cells[3][8] == f"{1.01:.3f}"  # measured / planned bytes up
    assert lines[4].startswith("* held-out loss from the owners' own logs")

    frontier = plots["frontier.png"]
    assert frontier["tenseal (sample-level DP-SGD)"] == [[1.9, 5.3], [7.9, 5.0]]  # (epsilon, final loss) by epsilon
    assert frontier["no DP: privacy.coordinator=trusted"] == [[0, 4.8], [1, 4.8]]
    cost = plots["cost_bytes.png"]["bytes"]
    # BFV: ~2x fp32 up; down (form committee, the default): the round's certified sum, ~2x a clear global
    assert set(cost) == {"plain", "tenseal"} and cost["tenseal"] > 1.5 * cost["plain"]
    for name in plots:
        assert imread(tmp_path / name).shape[:2] == (PIXELS[1], PIXELS[0])

    assert report_main([str(sweep / "0"), str(sweep / "2"), "--out", str(tmp_path / "two")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [re.split(r"\s{2,}", line)[0] for line in out[1:3]] == ["privacy.coordinator=trusted",
                                                                "privacy.coordinator=curious privacy.epsilon=8"]
    assert (tmp_path / "two" / "frontier.png").is_file()


def test_report_on_a_directory_without_runs_is_one_line_exit_2(tmp_path, capsys):
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedveil: error:") and "no finished run" in err[0]


def test_many_owners_share_one_legend_entry_and_keep_their_lines(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from fedveil.experiments import plots

    owners = [f"client_{k}" for k in range(plots.LEGEND_OWNERS + 5)]
    rows = [MetricsRow.from_dict({"round": r, "per_client": {o: {"epsilon": 0.5 * r + k / 100, "epsilon_budget": 8.0}
                                                             for k, o in enumerate(owners)}}) for r in (1, 2)]
    drawn = plots.plot_epsilon(rows, tmp_path / "epsilon.png")  # every owner's line is still drawn
    assert all(drawn[o] == [[1.0, 0.5 + k / 100], [2.0, 1.0 + k / 100]] for k, o in enumerate(owners))
    for count, expected in ((len(owners), ["budget 8", f"each owner ({len(owners)})"]),
                            (2, ["client_0", "client_1", "budget 8"])):
        ax = Figure().add_subplot()
        monkeypatch.setattr(plots, "save", lambda path, draw, integer_x=True: draw(ax))  # onto ax, no file
        plots.plot_epsilon([replace(r, per_client=dict(list(r.per_client.items())[:count])) for r in rows], tmp_path)
        assert plots.legend_entries(*ax.get_legend_handles_labels())[1] == expected


def test_the_frontier_draws_owner_level_beside_sample_level(tmp_path):
    """A sweep over the privacy unit at equal epsilon targets: one series per unit, each in epsilon order."""
    runs, common = tmp_path / "units", ["rounds=2", "aggregation=crypten", "num_clients=3"]
    for job, (unit, eps, losses) in enumerate([("owner_level", 2, [5.6, 5.2, 4.9]), ("owner_level", 8, [5.6, 5.0, 4.7]),
                                               ("sample_level", 2, [5.6, 5.5, 5.4]),
                                               ("sample_level", 8, [5.6, 5.4, 5.2])]):
        overrides = [*common, f"dp={unit}", f"dp.target_epsilon={eps}"]
        plan = plan_of(compose(overrides))
        write_run(runs / str(job), plan, rounds(plan, losses, [eps / 2, eps - 0.1], dp=unit), overrides,
                  owners_losses=losses)
    text, plots = report([runs], tmp_path / "out")
    frontier = plots["frontier.png"]
    assert frontier["crypten (owner-level Skellam)"] == [[1.9, 4.9], [7.9, 4.7]]
    assert frontier["crypten (sample-level DP-SGD)"] == [[1.9, 5.4], [7.9, 5.2]]
    assert [re.split(r"\s{2,}", line.strip())[2] for line in text.splitlines()[1:5]] == \
        ["owner_level", "owner_level", "sample_level", "sample_level"]
