"""A new run never writes over an earlier one's outputs; the console stays short with many owners."""

import json

import pytest

from fedveil.core.errors import UserError
from fedveil.server.outputs import check_run_dir, clear_earlier_run, earlier_run


def earlier(out, finished):
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "round_0001.safetensors").write_bytes(b"trained")
    (out / "metrics.jsonl").write_text('{"round": 0}\n{"round": 1}\n')
    (out / "clients" / "client_0").mkdir(parents=True)
    (out / "clients" / "client_0" / "privacy_ledger.json").write_text("{}")
    if finished:
        (out / "summary.json").write_text("{}")
        (out / "final_adapter").mkdir()


@pytest.mark.parametrize("finished", [True, False])
def test_an_earlier_run_is_refused_unless_resumed_or_overwritten(tmp_path, finished):
    out = tmp_path / "run"
    earlier(out, finished)
    with pytest.raises(UserError, match=f"holds a {'finished' if finished else 'partial'} run .*pass resume=true "
                                        "to continue it, overwrite=true to replace it"):
        check_run_dir(out, resume=False, overwrite=False)
    check_run_dir(out, resume=True, overwrite=False)
    check_run_dir(out, resume=False, overwrite=True)
    with pytest.raises(UserError, match="contradict"):
        check_run_dir(out, resume=True, overwrite=True)
    assert (out / "checkpoints" / "round_0001.safetensors").read_bytes() == b"trained"  # checking touched nothing


def test_overwrite_clears_the_coordinators_outputs_and_keeps_the_owners_state(tmp_path):
    out = tmp_path / "run"
    earlier(out, finished=True)
    (out / "base_model").mkdir()
    clear_earlier_run(out)
    assert earlier_run(out) == []
    assert (out / "clients" / "client_0" / "privacy_ledger.json").is_file()  # spent budget stays spent
    assert (out / "base_model").is_dir()
    check_run_dir(out, resume=False, overwrite=False)  # now a fresh directory
    check_run_dir(tmp_path / "never_used", resume=False, overwrite=False)


def test_many_owners_get_one_console_line_and_a_file(tmp_path, capsys):
    from fedveil.server.prepare import OWNER_DATA_FILE, report_owner_data

    owners = [{"owner": f"client_{k}", "train": 10 + k, "held_out": 2, "source": f"/d/{k}"} for k in range(100)]
    report_owner_data(owners, tmp_path)
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"[fedveil] 100 owners: 10 / 59.5 / 109 train examples (min / median / max), 200 held-out in all; "
                     f"per owner: {tmp_path / OWNER_DATA_FILE}"]
    assert [json.loads(line) for line in (tmp_path / OWNER_DATA_FILE).read_text().splitlines()] == owners
    report_owner_data(owners[:3], tmp_path)
    assert capsys.readouterr().out.splitlines()[0] == "[fedveil] client_0: 10 train / 2 held-out examples from /d/0"


def test_excluded_owners_are_one_line_per_reason(capsys):
    from fedveil.server.federation import report_excluded

    report_excluded({**{f"client_{k}": "privacy budget: over" for k in range(50)}, "client_99": "timed out"})
    assert capsys.readouterr().out.splitlines() == [
        "[fedveil]   excluded client_0, client_1, client_10 and 47 more (metrics.jsonl): privacy budget: over",
        "[fedveil]   excluded client_99: timed out"]
