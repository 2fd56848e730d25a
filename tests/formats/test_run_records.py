"""An existing run's metrics.jsonl and summary.json read through ``core/metrics.py``, byte for byte.

``run_v0/`` (the demo config: aggregation=auto -> tenseal, DP-SGD, 3 owners x 2 rounds) and
``run_v0_plain/`` (aggregation=plain dp=off) hold the files that fedveil wrote at commit 8ae5ef3,
before the metrics row had a type, copied unchanged with the report.md written beside them.
"""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from fedveil.core import metrics
from fedveil.core.metrics import MetricsRow, RunSummary
from fedveil.server.outputs import write_outputs

HERE = Path(__file__).parent
RUNS = [HERE / "run_v0", HERE / "run_v0_plain"]
RUN_FIELDS = ("backend", "dp", "seed", "rounds", "clients", "model_path", "layout_digest", "ledger_head",
              "final_adapter")


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_rows_and_summary_read_and_write_back_byte_for_byte(run, tmp_path):
    lines = (run / metrics.METRICS_FILE).read_text().splitlines()
    rows = metrics.read_rows(run)
    assert [r.round for r in rows] == [0, 1, 2]
    for line, row in zip(lines, rows):
        assert json.dumps(row.to_dict(), sort_keys=True) == line
    summary = metrics.read_summary(run)
    assert metrics.summary_bytes(summary) == (run / metrics.SUMMARY_FILE).read_bytes()
    for row in rows:  # the writer appends the same lines
        metrics.append_row(tmp_path, row)
    assert (tmp_path / metrics.METRICS_FILE).read_text().splitlines() == lines


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_the_summary_and_report_are_what_the_rows_give(run, tmp_path):
    """summarize over the fixture's rows gives its summary's totals; report.md comes out the same."""
    written = metrics.read_summary(run)
    rows = metrics.read_rows(run)
    again = metrics.summarize(rows, **{name: getattr(written, name) for name in RUN_FIELDS})
    assert again == replace(written, plan=None, planned_vs_measured=None, owners_eval_loss_by_round=None)
    shutil.copy(run / metrics.METRICS_FILE, tmp_path)
    write_outputs(tmp_path, written)
    assert (tmp_path / "report.md").read_bytes() == (run / "report.md").read_bytes()
    assert (tmp_path / metrics.SUMMARY_FILE).read_bytes() == (run / metrics.SUMMARY_FILE).read_bytes()


def test_the_typed_fields_hold_the_files_values():
    tenseal, plain = (metrics.read_rows(run) for run in RUNS)
    first = tenseal[1].per_client["client_0"]
    assert (first.bytes_update_up, first.epsilon, first.num_examples, first.eval_loss) == (
        131855, 6.49312628696504, None, None)  # under DP: no count, no loss, only the DP record and bytes
    assert tenseal[0].dp is None and tenseal[0].seconds.train is None and tenseal[1].seconds.protect is None
    assert plain[2].eval_loss == 4.9432220458984375 and plain[2].seconds.of("train") > 0
    assert plain[1].per_client["client_2"].update_norm == pytest.approx(3.0915, abs=1e-4)
    summary = metrics.read_summary(RUNS[0])
    assert summary.owners_eval_loss_by_round == {0: 5.581216504268611, 1: 5.320628135666785, 2: 5.181945107199929}
    assert summary.ratio(metrics.EPSILON_FIGURE) == 1.0 and summary.final_eval_loss is None
    assert summary.plan["pick"] == "tenseal"
    assert metrics.read_summary(RUNS[1]).eval_loss_by_round[2] == plain[2].eval_loss


def test_owner_row_dp_fields_are_the_names_the_wire_maps_to():
    from dataclasses import fields

    from fedveil.core import wire

    assert set(wire.DP_FIELDS.values()) <= {f.name for f in fields(metrics.OwnerRow)}


def test_round_zero_rows_leave_out_what_only_a_trained_round_has():
    row = MetricsRow(round=0, backend="plain", eval_loss=None, per_client={"client_0": metrics.OwnerRow()},
                     seconds=metrics.Seconds(evaluate=0.5))
    assert row.to_dict() == {"round": 0, "backend": "plain", "clients": [], "evaluated": [], "eval_loss": None,
                             "per_client": {"client_0": {}}, "seconds": {"round": 0.0, "evaluate": 0.5}}
    trained = replace(row, round=1, dp="off").to_dict()
    assert trained["excluded"] == {} and trained["max_epsilon"] is None and trained["train_loss"] is None
    assert trained["per_client"]["client_0"] == {"bytes_down": None, "bytes_up": None, "bytes_update_up": None,
                                                 "num_examples": None, "train_loss": None}
    assert set(trained["seconds"]) == set(metrics.PHASES)


def test_a_summary_file_that_is_not_there_reads_as_none(tmp_path):
    assert metrics.read_summary(tmp_path) is None and metrics.read_rows(tmp_path) == []
    assert RunSummary.from_dict({"backend": "plain", "unknown_key": 1}).backend == "plain"
