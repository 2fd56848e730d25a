"""The ServerApp writes the run's outputs once, or hands the summary to the runner that started it."""

from dataclasses import replace

import pytest
from flwr.app import Context, RecordDict

from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import metrics
from fedveil.server import app as server_app_module

SUMMARY = metrics.RunSummary(backend="plain", dp="off", rounds_completed=1, final_eval_loss=4.5)


@pytest.fixture
def federation(monkeypatch, tmp_path):
    """The ServerApp around a stand-in federation that logs one round and returns SUMMARY."""
    def run_federation(grid, cfg):
        metrics.append_row(cfg.output_dir, metrics.MetricsRow(round=1, backend="plain", dp="off", eval_loss=4.5))
        return SUMMARY

    monkeypatch.setattr(server_app_module, "run_federation", run_federation)
    monkeypatch.setattr(server_app_module, "prepare", lambda cfg, **kwargs: replace(cfg, output_dir=str(tmp_path)))
    cfg = from_dict({"aggregation": {"name": "plain"}, "dp": {"name": "off"}})
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=to_run_config(cfg))


def test_the_server_app_writes_report_and_summary(federation, tmp_path):
    server_app_module.server_app()(None, federation)  # as flwr run calls server_app_module.app
    assert metrics.read_summary(tmp_path) == SUMMARY
    assert "| 1 | n/a | 4.5000 | 0 |" in (tmp_path / "report.md").read_text()


def test_the_runners_server_app_hands_the_summary_back_and_writes_none(federation, tmp_path):
    kept = []
    server_app_module.server_app(kept.append)(None, federation)
    assert kept == [SUMMARY]
    assert not (tmp_path / metrics.SUMMARY_FILE).exists() and not (tmp_path / "report.md").exists()
