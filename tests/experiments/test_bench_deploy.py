"""bench_deploy: the same model in simulation and in deployment, every setting in one invocation, goals in a table."""

import os

import pytest

from fedveil.core.metrics import MetricsRow
from fedveil.experiments.bench_deploy import (
    Measured,
    deploy_model_env,
    parse_args,
    parse_rate,
    settings,
    steady,
    table,
    transfer_seconds,
)
from fedveil.experiments.bench_secagg import MODELS


def test_the_deployment_builds_the_model_the_simulation_overrides_name():
    assert deploy_model_env(MODELS["tiny"]) == {}  # demo.sh's own tiny model
    assert deploy_model_env(MODELS["mid"]) == {"TINY_SHAPE": "512 4 8"}  # data.max_length=128: the owners' own
    assert deploy_model_env(["model.tiny.layers=6"]) == {"TINY_SHAPE": "64 6 4"}
    with pytest.raises(SystemExit, match="data.max_length=64 is not what the deployed owners use"):
        deploy_model_env(["data.max_length=64"])


def test_the_first_round_is_left_out_of_the_mean_when_there_are_more():
    assert steady([9.0, 1.0, 3.0]) == 2.0 and steady([4.0]) == 4.0


def test_one_invocation_measures_tiny_and_mid_both_states_on_loopback_and_hosts(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert settings(parse_args([])) == [(m, n, s) for m in ("tiny", "mid") for n in ("loopback", "hosts")
                                        for s in ("file", "memory")]
    assert settings(parse_args(["--model", "mid", "--net", "loopback", "--superlink-state", "file"])) == [
        ("mid", "loopback", "file")]


def test_hosts_need_root_and_say_so_before_anything_runs(monkeypatch, capsys):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert parse_args(["--net", "loopback"]).net == "loopback"
    for argv in ([], ["--net", "hosts"], ["--rounds", "0", "--net", "loopback"]):
        with pytest.raises(SystemExit) as exit_:
            parse_args(argv)
        assert exit_.value.code == 2
    assert "--net hosts needs root" in capsys.readouterr().err


def test_the_shaped_links_time_is_the_busiest_owners_bytes_at_the_owner_rate():
    assert parse_rate("100mbit") == 1e8 and parse_rate("1.5gbit") == 1.5e9
    with pytest.raises(SystemExit, match="OWNER_RATE='10mbps'"):  # tc's bps is bytes per second: not guessed
        parse_rate("10mbps")

    def row(n, owners):
        return MetricsRow.from_dict({"round": n, "per_client": {k: {"bytes_down": d, "bytes_up": u}
                                                                  for k, (d, u) in owners.items()}})
    rows = [row(0, {}), row(1, {"a": (10**9, 0)}),  # round 1 (warm-up) is left out when there are more
            row(2, {"a": (600_000, 250_000), "b": (600_000, 150_000)}),
            row(3, {"a": (1_000_000, 250_000), "b": (600_000, 150_000)})]
    assert transfer_seconds(rows, 1e8) == pytest.approx(((850_000 + 1_250_000) / 2) * 8 / 1e8)


def test_the_table_reports_each_goal_and_whether_it_is_met():
    tiny = Measured("tiny", "loopback", "file", simulation_s=0.5, deployment_s=0.9, transfer_s=None, rounds=[2.0, 0.9])
    slow = Measured("tiny", "hosts", "file", simulation_s=0.5, deployment_s=1.2, transfer_s=0.01, rounds=[1.2])
    mid = Measured("mid", "hosts", "memory", simulation_s=5.0, deployment_s=6.3, transfer_s=0.4, rounds=[6.3])
    lines = table([tiny, slow, mid]).splitlines()
    assert lines[2] == "| tiny | loopback | file | 0.50 | 0.90 | x1.80 | +0.40 | - | overhead <= 0.5 s | yes |"
    assert lines[3].endswith("| +0.70 | 0.01 | overhead <= 0.5 s | no |")
    assert lines[4] == ("| mid | hosts | memory | 5.00 | 6.30 | x1.26 | +1.30 | 0.40 | "
                        "<= 6.40 s (1.2x sim + transfer) | yes |")
    assert Measured("mid", "loopback", "file", 5.0, 6.1, None, [6.1]).goal() == ("<= 6.00 s (1.2x sim)", False)
