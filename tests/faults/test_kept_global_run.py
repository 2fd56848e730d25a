"""tenseal owners keep the global they opened (``tenseal/kept.py``): after round 2 the coordinator sends each
owner the round before's updates without the signed base, and the run is the run it was with the base sent
every round, bit for bit (every owner's final adapter, every loss), for fewer bytes down."""

import json

import numpy as np
import pytest
from harness import assert_nothing_half_written, experiment, in_process

from fedveil.privacy import planner
from fedveil.privacy.secagg.tenseal import cost as tenseal_cost
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import EncryptedGlobal

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def owner_adapter(out, k):
    from safetensors.numpy import load_file

    return load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")


def test_a_run_with_kept_globals_is_the_run_with_the_base_every_round_for_fewer_bytes(tmp_path, tiny_gpt2,
                                                                                       owners_data, monkeypatch):
    kept, based = tmp_path / "kept", tmp_path / "based"
    agg = {"name": "tenseal", "download": "every"}  # the kept global alone (a committee is drawn anew each run)
    in_process(experiment(kept, tiny_gpt2, owners_data, agg, rounds=3))
    with monkeypatch.context() as mp:  # the holder as before: the whole of it, base included, to every owner
        mp.setattr(EncryptedGlobal, "arrays_for", lambda self, owner: None)
        in_process(experiment(based, tiny_gpt2, owners_data, agg, rounds=3))
    assert_nothing_half_written(kept)
    for k in range(3):
        a, b = owner_adapter(kept, k), owner_adapter(based, k)
        assert sorted(a) == sorted(b) and all(np.array_equal(a[n], b[n]) for n in a), k
    rk, rb = rows(kept), rows(based)
    assert [r["eval_loss"] for r in rk] == [r["eval_loss"] for r in rb]
    assert [r.get("train_loss") for r in rk] == [r.get("train_loss") for r in rb]
    # rounds 1-2 send no base either way; round 3's train message leaves it out, and so does the last round's
    # evaluate message
    base = tenseal_cost.base_bytes(TensealConfig(), 16_384, planner.calibration())
    for n, bases in ((1, 0), (2, 0), (3, 2)):
        for w, o in rk[n]["per_client"].items():
            saved = rb[n]["per_client"][w]["bytes_down"] - o["bytes_down"]
            assert 0 <= saved - bases * base <= 500 * bases + 10, (n, w, saved)  # + Flower's framing of 3 arrays
