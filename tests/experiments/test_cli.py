"""The runner's answer to a user's mistake: one line on stderr, exit 2, no traceback."""

import subprocess
import sys

import pytest


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={cwd}/out", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["nosuchkey=1"], "unknown config key 'nosuchkey'"),
    (["rounds=abc"], "config key 'rounds': Value 'abc'"),
    (["model=nope"], "Could not find 'model/nope'"),
    (["model.path=/does/not/exist"], "model.path '/does/not/exist' is not a directory"),
    (["data=files"], "data=files needs data.client_dirs"),
    (["num_clients=1", "data.client_dirs=[/no/such/dir]"], "/no/such/dir: no such file or directory"),
    (["dp=sample_level", "dp.target_epsilon=0"], "dp.target_epsilon must be > 0"),
    (["dp=sample_level", "dp.delta=1.0"], "dp.delta must be in (0, 1)"),
    (["dp=sample_level", "dp.target_epsilon=0.01", "dp.max_noise_multiplier=5"], "is unreachable in 60 steps"),
    (["dp=sample_level", "dp.accountant=magic"], "dp.accountant 'magic' is unknown"),
    (["dp=sample_level", "dp.delta=0.5"], "dp.delta=0.5 is not below 1/n"),
    (["dp=sample_level", "dp.sample_rate=0"], "dp.sample_rate must be in (0, 1]"),
    (["owner_policy.require_dp=true", "dp=off"], "owner policy require_dp=true: the server asked for dp=off"),
    (["aggregation=plain", "owner_policy.allowed_backends=[tenseal]"],
     "owner policy allowed_backends=['tenseal']: the server asked for aggregation=plain"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedveil: error: ") and message in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_empty_data_file_and_unknown_record(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.jsonl").write_text("")
    proc = run_cli("num_clients=1", f"data.client_dirs=[{tmp_path}/empty]", cwd=tmp_path)
    assert proc.returncode == 2 and "contains no records" in proc.stderr
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "a.jsonl").write_text('{"question": "x"}\n')
    proc = run_cli("num_clients=1", f"data.client_dirs=[{tmp_path}/odd]", cwd=tmp_path)
    assert proc.returncode == 2 and "is in no known format" in proc.stderr
