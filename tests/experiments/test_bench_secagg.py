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
