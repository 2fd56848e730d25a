import numpy as np
import pytest

from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg.plain import PlainBackend


def test_fedavg_equals_hand_computed_weighted_average():
    backend = PlainBackend(size=3)
    deltas = [np.array([1.0, 2.0, 3.0]), np.array([4.0, 0.0, -2.0]), np.array([0.5, 0.5, 0.5])]
    weights = [10, 30, 60]
    combined = backend.combine(
        {f"owner_{i}": backend.protect(d, w) for i, (d, w) in enumerate(zip(deltas, weights))}
    ).payload
    revealed = backend.reveal(combined)
    # (10*[1,2,3] + 30*[4,0,-2] + 60*[.5,.5,.5]) / 100
    np.testing.assert_allclose(revealed.mean, [1.6, 0.5, -0.0], atol=1e-6)
    assert revealed.total_weight == 100


@pytest.mark.parametrize("arrays, match", [
    ({"delta": np.zeros(4, np.float32), "weight": np.array([1.0])}, "layout has 3"),
    ({"delta": np.array([0, np.nan, 0], np.float32), "weight": np.array([1.0])}, "NaN"),
    ({"delta": np.zeros(3, np.float32), "weight": np.array([-1.0])}, "non-negative"),
    ({"delta": np.zeros(3, np.float32)}, "lacks 'weight'"),
])
def test_malformed_payloads_are_refused(arrays, match):
    from fedveil.core.payload import Protected

    with pytest.raises(PayloadError, match=match):
        PlainBackend(size=3).validate(Protected(arrays=arrays))


def test_zero_total_weight_is_an_error():
    backend = PlainBackend(size=2)
    revealed = backend.reveal(backend.combine({"owner_0": backend.protect(np.ones(2), 0.0)}).payload)
    with pytest.raises(PayloadError, match="zero total weight"):
        revealed.mean
