"""bench_secagg's runs: crypten's share layouts side by side, and the final adapter it compares."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from fedveil.core import wire
from fedveil.experiments.bench_secagg import VARIANT_KEYS, expand_backends, final_adapter, first_aggregate


def test_crypten_runs_in_the_layouts_asked_for_beside_the_other_backends():
    assert expand_backends("tenseal,crypten", "both") == ["tenseal", "crypten", "crypten-full"]
    assert expand_backends("crypten", "seeded") == ["crypten"]
    assert expand_backends("crypten,tenseal-ckks", "full") == ["crypten-full", "tenseal-ckks"]
    assert VARIANT_KEYS == {"tenseal": "scheme", "crypten": "shares"}  # crypten-full -> aggregation.shares=full


def test_the_final_adapter_is_read_from_the_server_or_owner_0(tmp_path):
    tensors = {"b": np.full(3, 2.0, np.float32), "a": np.arange(2, dtype=np.float32)}
    for folder in (tmp_path / "server" / "final_adapter", tmp_path / "owner" / "clients" / "client_0" / "final_adapter"
                   ):
        folder.mkdir(parents=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    for out in (tmp_path / "server", tmp_path / "owner"):
        assert final_adapter(out).tolist() == [0.0, 1.0, 2.0, 2.0, 2.0]  # name order
    with pytest.raises(FileNotFoundError):
        final_adapter(tmp_path / "neither")


def test_round_one_aggregate_is_read_from_the_clear_checkpoint_only(tmp_path):
    for name, arrays in (("clear", {wire.CLEAR_GLOBAL: np.arange(4, dtype=np.float32)}),
                         ("sealed", {"ciphertexts": np.zeros(8, np.uint8)})):
        (tmp_path / name / "checkpoints").mkdir(parents=True)
        save_file(arrays, str(tmp_path / name / "checkpoints" / "round_0001.safetensors"))
    assert first_aggregate(tmp_path / "clear").tolist() == [0.0, 1.0, 2.0, 3.0]
    assert first_aggregate(tmp_path / "sealed") is None


def test_tenseal_runs_in_each_download_form_asked_for():
    from fedveil.experiments.bench_secagg import TENSEAL_FORMS

    assert TENSEAL_FORMS == ("every", "committee", "sum")
    assert expand_backends("tenseal,crypten", "seeded", "all") == ["tenseal:every", "tenseal:committee",
                                                                   "tenseal:sum", "crypten"]
    assert expand_backends("tenseal-ckks", "both", "sum") == ["tenseal-ckks:sum"]
    assert expand_backends("tenseal", "both", None) == ["tenseal"]  # the run's own form (aggregation.download=auto)


def test_a_forms_download_is_compared_with_the_planners_price_in_the_rounds_between_the_first_and_the_last():
    """Rows built from the planner's own figures read back as ratio 1, members and outsiders told apart by
    what they downloaded; the first and last rounds are left out."""
    from fedveil.configs.schema import from_dict
    from fedveil.core.metrics import MetricsRow, OwnerRow
    from fedveil.experiments.bench_secagg import download_vs_plan
    from fedveil.privacy.planner import calibration
    from fedveil.privacy.secagg.tenseal import cost

    cfg = from_dict({"rounds": 4, "num_clients": 5, "dp": {"name": "off"}, "aggregation": {"name": "tenseal"}})
    planned = cost.variant(cfg.aggregation, 1000, 5, calibration(), dp_on=False, form="committee", carried=True)
    outside = {r: planned.down_in(r, 4) for r in (1, 2, 3, 4)}
    member = {r: d + planned.committee_down - planned.global_down for r, d in outside.items()}
    # clients 1 and 3 on every round's committee: from round 2 on, each gets the round before without its sum
    again = {r: member[r] - (planned.member_kept if r > 1 else 0) for r in member}
    assert planned.member_kept > 0
    rows = [MetricsRow(round=r, clients=[f"client_{k}" for k in range(5)], per_client={
        f"client_{k}": OwnerRow(bytes_down=(again if k in (1, 3) else outside)[r] + (10**7 if r in (1, 4) else 0))
        for k in range(5)}) for r in (1, 2, 3, 4)]
    figures = download_vs_plan(cfg, rows, 1000, "committee")
    assert {k: f["ratio"] for k, f in figures.items()} == {"mean": 1.0, "max": 1.0, "outside": 1.0}
    assert figures["outside"]["measured"] == (outside[2] + outside[3]) / 2
    assert figures["max"]["measured"] == (again[2] + again[3]) / 2
