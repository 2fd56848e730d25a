"""The CrypTen 0.4.1 / torch 2.13 shim: each fix pinned by a regression test."""

import numpy as np
import pytest
import torch

from fedveil.privacy.secagg.crypten.compat import import_crypten

SCALE = 2**16


@pytest.fixture(scope="module")
def crypten():
    return import_crypten()


def test_import_works_and_onnx_conversion_fails_clearly(crypten):
    import sys

    registry = sys.modules["torch.onnx._internal.registration"].registry
    with pytest.raises(RuntimeError, match="fedveil does not use it"):
        registry.anything


@pytest.mark.parametrize("t", [-3 * SCALE + 1, -5 * SCALE + 3, -7 * SCALE + 6, -1, -SCALE, 0, 5, 123 * SCALE + 7])
def test_decode_is_exact_where_crypten_was_one_off(crypten, t):
    from crypten.encoder import FixedPointEncoder

    # CrypTen's own formula, for the record: it divides negatives by SCALE - 1
    buggy = torch.tensor(t).div(SCALE - (t < 0), rounding_mode="floor").item()
    decoded = FixedPointEncoder().decode(torch.tensor([t])).double().item()
    assert decoded == pytest.approx(t / SCALE, rel=1e-7, abs=1e-9)  # float32 output, as CrypTen returns
    if t < 0 and 0 < t % SCALE < abs(t // SCALE):
        assert buggy + (t % SCALE) / SCALE == pytest.approx(t / SCALE - 1.0)  # exactly 1.0 too low before


def test_encode_rounds_and_weighted_sums_round_trip(crypten):
    from crypten.encoder import FixedPointEncoder

    enc = FixedPointEncoder()
    assert enc.encode(torch.tensor([0.9 / SCALE])).item() == 1  # truncation gave 0
    assert enc.encode(-1.49999).item() == round(-1.49999 * SCALE)
    x = torch.tensor([-1.49999, -0.7, 0.3, 2.0])
    assert torch.allclose(enc.decode(enc.encode(x)), x, atol=2**-17)
    rng = np.random.default_rng(0)
    deltas = [torch.tensor(rng.normal(scale=0.05, size=64)) for _ in range(3)]
    weights = [216, 54, 1000]
    encoded = sum(enc.encode(d * w) for d, w in zip(deltas, weights))  # sum of shares' encodings
    expected = sum(d * w for d, w in zip(deltas, weights))
    assert torch.allclose(enc.decode(encoded).double(), expected, atol=len(weights) * 2**-17)


def test_cryptensor_round_trip(crypten):
    crypten.init()
    try:
        x = torch.tensor([1.5, -2.25, -1.49999, 1e-3])
        assert torch.allclose(crypten.cryptensor(x).get_plain_text(), x, atol=2**-16)
    finally:
        crypten.uninit()
