"""CKKS backend core (``aggregation.scheme=ckks``; BFV, the default: test_tenseal_bfv.py): sums decrypt right,
the server side cannot decrypt, bad ciphertexts are refused."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg.sealing import seal, unseal
from fedveil.privacy.secagg.tenseal.backend import TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.context import make_context, public_bytes, secret_bytes

SIZE = 300
CKKS = TensealConfig(scheme="ckks", max_weight=5000.0, value_bound=10.0)  # the weights and values played here


@pytest.fixture(scope="module")
def keys():
    ctx = make_context(CKKS)
    return public_bytes(ctx), secret_bytes(ctx)


def owner(keys, size=SIZE):
    return TensealOwner(CKKS, size, public=keys[0], secret=keys[1])


def server(keys, size=SIZE):
    return TensealServer(CKKS, size, public=keys[0])


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 5000), st.floats(-1.0, 1.0)), min_size=1, max_size=4), st.integers(0, 2**32 - 1)
)
def test_decrypt_of_sum_is_the_weighted_sum(keys, clients, seed):
    rng = np.random.default_rng(seed)
    deltas = [rng.normal(scale=abs(s) + 1e-3, size=SIZE) for _, s in clients]
    weights = [n for n, _ in clients]
    o = owner(keys)
    combined = (
        server(keys).combine({f"owner_{i}": o.protect(d, w) for i, (d, w) in enumerate(zip(deltas, weights))}).payload
    )
    revealed = o.reveal(combined)
    expected = sum(w * d for w, d in zip(weights, deltas))
    assert revealed.total_weight == pytest.approx(sum(weights), abs=1e-3)
    np.testing.assert_allclose(revealed.weighted_sum, expected, atol=1e-4 * max(1, sum(weights)))
    np.testing.assert_allclose(revealed.mean, expected / sum(weights), atol=1e-5)


def test_server_holds_no_secret_and_cannot_decrypt_or_encrypt(keys):
    o, s = owner(keys), server(keys)
    combined = s.combine({"owner_0": o.protect(np.ones(SIZE), 3)}).payload
    with pytest.raises(UserError, match="cannot decrypt"):
        s.reveal(combined)
    with pytest.raises(UserError, match="cannot encrypt"):
        s.protect(np.ones(SIZE), 1)
    # the server's payloads contain no plaintext: the update's bytes do not appear in them
    update = np.full(SIZE, 0.123456, np.float32)
    blob = o.protect(update, 7).blobs["ciphertext"]
    assert (update * 7).astype(np.float64).tobytes()[:16] not in blob and update.tobytes()[:16] not in blob


def test_public_context_with_secret_is_refused(keys):
    with pytest.raises(PayloadError, match="holds a secret key"):
        TensealServer(CKKS, SIZE, public=keys[1])


def test_tampered_truncated_foreign_and_wrong_length_ciphertexts_are_refused(keys):
    o, s = owner(keys), server(keys)
    good = o.protect(np.ones(SIZE), 2)
    tampered = dict(good.blobs)
    blob = bytearray(tampered["ciphertext"])
    blob[len(blob) // 2] ^= 0xFF
    tampered["ciphertext"] = bytes(blob)
    with pytest.raises(PayloadError, match="do not match their SHA-256"):
        s.validate(type(good)(blobs=tampered))
    import hashlib

    truncated = {**good.blobs, "ciphertext": good.blobs["ciphertext"][:1000]}
    truncated["sha256"] = hashlib.sha256(truncated["ciphertext"]).digest()
    with pytest.raises(PayloadError, match="truncated"):
        s.validate(type(good)(blobs=truncated))
    cut = {**good.blobs, "ciphertext": good.blobs["ciphertext"][:-10]}
    cut["sha256"] = hashlib.sha256(cut["ciphertext"]).digest()
    with pytest.raises(PayloadError, match="truncated"):
        s.validate(type(good)(blobs=cut))
    other_ctx = make_context(CKKS)
    foreign = TensealOwner(CKKS, SIZE, public=public_bytes(other_ctx), secret=secret_bytes(other_ctx))
    with pytest.raises(PayloadError, match="another CKKS context"):
        s.validate(foreign.protect(np.ones(SIZE), 1))
    with pytest.raises(PayloadError, match="layout needs 300"):
        s.validate(owner(keys, size=SIZE + 1).protect(np.ones(SIZE + 1), 1))


def test_bytes_per_value_and_insecure_parameters():
    cfg = CKKS
    ctx = make_context(cfg)
    size = 16383  # + the count slot = 8 ciphertexts of 2048 slots
    o = TensealOwner(cfg, size, public=public_bytes(ctx), secret=secret_bytes(ctx))
    per_value = len(o.protect(np.zeros(size), 1).blobs["ciphertext"]) / size
    assert 30 <= per_value <= 8 * 4 + 0.1  # ~32 bytes a value: <= 8x fp32
    with pytest.raises(UserError, match="below 128-bit security"):
        TensealConfig(poly_modulus_degree=4096, coeff_mod_bit_sizes=[60, 60])
    with pytest.raises(UserError, match="at least two primes"):
        TensealConfig(coeff_mod_bit_sizes=[60])


def test_secret_context_sealed_to_each_owner_opens_only_for_it(keys):
    from nacl.public import PrivateKey

    alice, bob = PrivateKey.generate(), PrivateKey.generate()
    sealed = seal(keys[1], bytes(alice.public_key))
    assert unseal(sealed, bytes(alice), "sealed CKKS secret") == keys[1] and keys[1] not in sealed
    with pytest.raises(PayloadError, match="sealed to someone else"):
        unseal(sealed, bytes(bob), "sealed CKKS secret")
