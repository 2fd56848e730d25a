"""``resume=true`` with nothing to resume: one line and a non-zero exit before any federation starts.

Before, the runner and the ServerApp started a fresh run in the (empty or missing) directory, so a
mistyped ``hydra.run.dir`` on a restart went unnoticed: the real run stayed unfinished and a new
one was trained and charged to every owner's epsilon ledger."""

import subprocess
import sys

import pytest

from fedveil.configs.schema import from_dict
from fedveil.core.errors import UserError
from fedveil.server import checkpoint
from fedveil.server.outputs import METRICS_FILE
from fedveil.server.prepare import prepare

NOTHING = (
    "holds no checkpoint and no earlier run to resume: drop resume=true to start a fresh run, or point hydra.run.dir"
)


@pytest.mark.parametrize("existing", [False, True], ids=["missing", "empty"])
def test_the_runner_refuses_resume_with_nothing_to_resume_in_one_line(tmp_path, existing):
    out = tmp_path / "run"
    if existing:
        out.mkdir()
    proc = subprocess.run([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", "resume=true",
                           "aggregation=plain", "dp=off"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == [
        f"fedveil: error: resume=true but {out} {NOTHING} (output_dir under flwr run) at the run to resume"
    ]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if existing else [])  # nothing written
    assert not existing or not list(out.iterdir())


def test_the_serverapp_path_refuses_it_before_writing_anything(tmp_path):
    # prepare() is what the ServerApp calls first under `flwr run ... resume=true`
    cfg = from_dict({"resume": True, "output_dir": str(tmp_path / "run"), "aggregation": {"name": "plain"},
                     "dp": {"name": "off"}})
    with pytest.raises(UserError, match=NOTHING):
        prepare(cfg, report_data=False, check_dp=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=NOTHING):  # no output_dir: a fresh directory, nothing in it either
        prepare(from_dict({"resume": True, "aggregation": {"name": "plain"}, "dp": {"name": "off"}}), report_data=False)


def test_a_run_killed_before_its_first_checkpoint_is_still_resumable(tmp_path):
    # killed in round 1: round 0's row only (tests/faults resumes exactly this), or a checkpoint
    (tmp_path / METRICS_FILE).write_text('{"round": 0}\n')
    checkpoint.check_resumable(tmp_path)
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    checkpoint.check_resumable(other)
    with pytest.raises(UserError, match=NOTHING):
        checkpoint.check_resumable(tmp_path / "elsewhere")
