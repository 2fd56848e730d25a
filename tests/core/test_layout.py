import numpy as np
import pytest

from fedveil.core.layout import AdapterLayout, LayoutMismatch


def tensors(rank=2):
    rng = np.random.default_rng(0)
    return {"a.lora_A": rng.normal(size=(rank, 5)).astype(np.float32),
            "a.lora_B": rng.normal(size=(5, rank)).astype(np.float32)}


def test_flatten_unflatten_round_trip():
    t = tensors()
    layout = AdapterLayout.of(t)
    vec = layout.flatten(t)
    assert vec.shape == (20,) and layout.size == 20
    back = layout.unflatten(vec)
    assert list(back) == list(t)
    for k in t:
        np.testing.assert_array_equal(back[k], t[k])


def test_digest_depends_on_names_shapes_and_order():
    base = AdapterLayout.of(tensors())
    assert base.digest == AdapterLayout.of(tensors()).digest
    assert base.digest != AdapterLayout.of(tensors(rank=3)).digest
    reordered = dict(reversed(list(tensors().items())))
    assert base.digest != AdapterLayout.of(reordered).digest


def test_mismatch_is_refused_not_reshaped():
    layout = AdapterLayout.of(tensors())
    with pytest.raises(LayoutMismatch, match="same base model"):
        layout.check(AdapterLayout.of(tensors(rank=3)).digest, "client_1")
    with pytest.raises(LayoutMismatch, match=r"needs \(20,\)"):
        layout.unflatten(np.zeros(21, np.float32))
    with pytest.raises(LayoutMismatch):
        layout.flatten(tensors(rank=3))
