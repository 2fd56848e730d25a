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
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
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


def one_error_line(proc, message):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedveil: error: ") and message in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_a_rerun_into_an_earlier_runs_directory_is_refused_and_touches_nothing(tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "round_0001.safetensors").write_bytes(b"trained")
    (out / "metrics.jsonl").write_text('{"round": 0}\n')
    (out / "summary.json").write_text("{}")
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    proc = run_cli("rounds=1", cwd=tmp_path)
    one_error_line(proc, f"{out} holds a finished run (summary.json, metrics.jsonl, checkpoints): pass resume=true")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # not even Hydra's .hydra/
    assert (out / "checkpoints" / "round_0001.safetensors").read_bytes() == b"trained"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_refused_up_front(tmp_path):
    one_error_line(run_cli("model.device=cuda", cwd=tmp_path), "model.device=cuda but no CUDA device is visible")
    assert not (tmp_path / "out").exists()


def test_every_sweep_job_is_checked_before_the_first_starts(tmp_path):
    def sweep(*args):
        return subprocess.run([sys.executable, "-m", "fedveil.experiments.run", "-m", f"hydra.sweep.dir={tmp_path}/sw",
                               *args], cwd=tmp_path, capture_output=True, text=True, timeout=300)

    one_error_line(sweep("seed=0,1", "rouds=1,2"), "sweep job 0 (seed=0 rouds=1): unknown config key 'rouds'")
    # job 0 is fine; job 1's value is not: nothing starts
    one_error_line(sweep("rounds=1,0"), "sweep job 1 (rounds=0): rounds must be >= 1")
    assert not (tmp_path / "sw").exists()
