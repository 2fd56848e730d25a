"""``aggregation.scheme=ckks`` runs end to end in a fresh process, as every scheme the config accepts must."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_a_ckks_federation_trains_and_every_owner_ends_on_the_same_adapter(tmp_path):
    from safetensors.numpy import load_file

    out = tmp_path / "ckks"
    cmd = [sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", "aggregation=tenseal",
           "aggregation.scheme=ckks", "dp=off", "seed=3", "rounds=1", "num_clients=3", "train.local_steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("round", 0) > 0]
    assert [r["clients"] for r in trained] == [["client_0", "client_1", "client_2"]]  # no owner left out
    adapters = [load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")
                for k in range(3)]
    for other in adapters[1:]:
        assert max(float(np.abs(other[n] - adapters[0][n]).max()) for n in adapters[0]) < 1e-5
