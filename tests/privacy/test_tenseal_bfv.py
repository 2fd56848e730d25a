"""BFV encoding of ``tenseal`` (the default scheme): exact fixed point, no overflow, refusals."""

import hashlib

import numpy as np
import pytest
import tenseal as ts

from fedveil.configs.schema import from_dict
from fedveil.core.errors import UserError
from fedveil.core.io import pack, unpack
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg.tenseal import bfv
from fedveil.privacy.secagg.tenseal.backend import TensealOwner, TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig, clamp_notice
from fedveil.privacy.secagg.tenseal.context import make_context, public_bytes, secret_bytes
from fedveil.privacy.secagg.tenseal.cost import update_bytes

N, BITS = 4096, 46
SIZE = 2 * N + 5  # two ciphertexts: one full (8,192 values), one holding 5


@pytest.fixture(scope="module")
def fifty():
    """A context for up to 50 owners, weights up to 4, values within +-0.5; an owner and the server side."""
    cfg = TensealConfig(max_owners=50, max_weight=4.0, value_bound=0.5)
    ctx = make_context(cfg)
    pub, sec = public_bytes(ctx), secret_bytes(ctx)
    return cfg, TensealOwner(cfg, SIZE, public=pub, secret=sec), TensealServer(cfg, SIZE, public=pub), (pub, sec)


def test_known_answers_of_the_digit_packing_negative_values_and_digit_boundaries():
    t, r = bfv.plain_modulus(N, BITS), bfv.radix(N, BITS)
    assert (t, r) == (70368743669761, 8388607) and t % (2 * N) == 1 and r * r <= t < (r + 1) ** 2
    half = (r - 1) // 2  # 4,194,303: the largest |digit|
    q = np.array([0, 0, 1, -1, half, -half, -half, half, 7, -3, 5], np.int64)
    slots = bfv.pack_slots(q, r)
    np.testing.assert_array_equal(slots, [0, 1 - r, half - half * r, -half + half * r, 7 - 3 * r, 5])
    assert np.abs(slots).max() <= (t - 1) // 2  # the centred slot never wraps mod t
    # SEAL may hand back any representative mod t (e.g. t - 1 for -1): the digits come back the same
    np.testing.assert_array_equal(bfv.unpack_slots(slots % t, r, t, q.size), q)
    np.testing.assert_array_equal(bfv.unpack_slots(slots, r, t, q.size), q)
    np.testing.assert_array_equal(bfv.quantize([0.26, -0.26, 9.0, -9.0, 0.249], 0.5, 10), [1, -1, 10, -10, 0])
    assert bfv.ciphertexts(SIZE, N) == [N, 3]  # 8,197 values in 4,099 slots
    with pytest.raises(UserError, match="NaN or infinite"):
        bfv.quantize([0.1, np.nan], 0.5, 10)


def test_fifty_owners_at_the_largest_values_and_weights_sum_without_overflow(fifty):
    cfg, owner, server, _ = fifty
    assert cfg.levels == 4194303 // 50 and cfg.step == pytest.approx(4.0 * 0.5 / cfg.levels)
    rng = np.random.default_rng(3)
    deltas = [rng.uniform(-0.5, 0.5, SIZE) for _ in range(48)]
    deltas += [np.full(SIZE, 0.5), np.full(SIZE, -0.5)]
    for d in deltas:  # every owner at the bound: these digits of the sum are at their limit, both signs
        d[:20], d[20:40] = 0.5, -0.5
    weights = [4.0] * 50  # the largest weight the parameters allow
    payloads = {f"o{i}": owner.protect(d, w) for i, (d, w) in enumerate(zip(deltas, weights))}
    combined = server.combine(payloads)
    assert combined.excluded == {}
    revealed = owner.reveal(combined.payload)
    expected = sum(w * d for w, d in zip(weights, deltas))
    assert revealed.total_weight == 200.0
    # exact to the step: each owner rounds by at most step / 2 per value
    assert np.abs(revealed.weighted_sum - expected).max() <= 50 * cfg.step / 2 + 1e-9
    np.testing.assert_allclose(revealed.mean[:40], np.repeat([0.5, -0.5], 20), atol=1e-5)
    # the same owners beyond the bound: clamped by each owner, so the sum is still the bound's
    clamped = owner.reveal(
        server.combine({f"o{i}": owner.protect(np.full(SIZE, 9.0), 99.0) for i in range(50)}).payload
    )
    assert clamped.total_weight == 200.0 and np.abs(clamped.mean - 0.5).max() <= cfg.step


def test_a_51st_update_is_left_out_and_an_out_of_range_sum_is_refused(fifty):
    cfg, owner, server, _ = fifty
    payloads = {f"o{i:02d}": owner.protect(np.full(SIZE, 0.1), 1.0) for i in range(51)}
    combined = server.combine(payloads)
    assert list(combined.excluded) == ["o50"] and "max_owners=50" in combined.excluded["o50"]
    # an owner that skips the clamp (a malicious one: it holds the secret context) is caught at decryption
    q = np.full(SIZE, cfg.levels * 30, np.int64)  # 30x the per-owner bound
    slots = bfv.pack_slots(q, bfv.radix(N, BITS))
    rogue = pack([bfv.header(b"u", cfg.step), *(ts.bfv_vector(owner._secret, slots[i:i + N].tolist()).serialize()
                                                for i in range(0, slots.size, N)),
                  bfv.seal_weight(owner._weight_key, 1.0)])
    total = server.combine({"honest": owner.protect(np.full(SIZE, 0.1), 1.0), "rogue": owner.payload_of(rogue)})
    assert total.excluded == {}
    with pytest.raises(PayloadError, match="encoded out of range"):
        owner.reveal(total.payload)


def test_a_wrong_step_or_unsealed_weight_is_refused(fifty):
    cfg, owner, server, (pub, sec) = fifty
    other = TensealConfig(max_owners=50, max_weight=8.0, value_bound=0.5)  # another step, same context
    coarse = TensealOwner(other, SIZE, public=pub, secret=sec)
    with pytest.raises(PayloadError, match="encodes at step"):
        server.validate(coarse.protect(np.ones(SIZE), 1.0))
    with pytest.raises(UserError, match="keyed with"):  # a config whose t is not the context's: refused at once
        TensealServer(TensealConfig(max_owners=50, plain_modulus_bits=44), SIZE, public=pub)
    good = owner.protect(np.ones(SIZE) * 0.2, 2.0)
    parts = unpack(good.blobs["ciphertext"])
    forged = pack([*parts[:-1], bytes(bfv.COUNT_BOX)])  # a weight not sealed with the federation's key
    with pytest.raises(PayloadError, match="does not open"):
        owner.reveal(owner.payload_of(forged))
    with pytest.raises(PayloadError, match="not 2 ciphertexts"):
        server.validate(owner.payload_of(pack(parts[:-1])))
    assert good.blobs["sha256"] == hashlib.sha256(good.blobs["ciphertext"]).digest()
    assert owner.reveal(good).total_weight == 2.0  # sealed: the server never sees it


def test_the_global_uses_a_public_step_so_its_header_says_nothing_of_the_global(fifty):
    cfg, owner, _, _ = fifty
    assert cfg.global_step == cfg.global_limit / 4194303  # the bound over the whole digit: public values only
    small = np.random.default_rng(0).normal(0, 0.01, SIZE)
    large = np.random.default_rng(1).normal(0, 0.3, SIZE)
    large[7] = 3.0  # far beyond value_bound: a global is never clamped
    headers = set()
    for vector in (small, large):
        blob = owner._encrypt_bfv(vector, 1.0, kind=b"g")
        headers.add(unpack(blob)[0])
        revealed = owner.reveal(owner.payload_of(blob))
        assert revealed.total_weight == 1.0
        assert np.abs(revealed.weighted_sum - vector).max() <= cfg.global_step / 2 + 1e-12
    assert headers == {bfv.header(b"g", cfg.global_step)}  # max|v| 0.04 or 3: the same bytes
    with pytest.raises(UserError, match="beyond aggregation.global_bound"):
        owner._encrypt_bfv(np.full(SIZE, 2 * cfg.global_limit), 1.0, kind=b"g")


def test_the_run_bounds_the_global_by_its_rounds():
    cfg = from_dict({"rounds": 5, "aggregation": {"name": "tenseal"}, "dp": {"name": "off"},
                     "train": {"update_clip_norm": 0.5}}).aggregation
    assert (cfg.global_bound, cfg.norm_bound, cfg.value_bound) == (1.0 + 5 * 0.5, 0.5, 0.5)


@pytest.mark.parametrize(("over", "match"), [
    (dict(plain_modulus_bits=46, max_owners=65), "at most 64 owners"),  # noise: 60 - 46 - 8 = 6 bits of headroom
    (dict(plain_modulus_bits=46, max_owners=5000), "at most 64 owners"),
    (dict(max_owners=600_000), "at most 370,727 owners"),  # no 128-bit set of bfv.PARAMETER_SETS holds it
    (dict(plain_modulus_bits=40, max_owners=2000), "fixed-point levels per owner"),
    (dict(plain_modulus_bits=56), "noise budget"),
    (dict(coeff_mod_bit_sizes=[60, 50]), "below 128-bit security"),
    (dict(scheme="paillier"), "aggregation.scheme must be one of"),
    (dict(max_weight=0), "max_weight must be > 0"),
])
def test_parameters_that_break_overflow_safety_or_128_bit_security_are_refused(over, match):
    with pytest.raises(UserError, match=match):
        TensealConfig(**over)
    TensealConfig(max_owners=64)  # the limit itself is fine


def test_the_run_resolves_the_encoding_and_refuses_too_few_max_owners():
    def agg(clip=None, **over):
        train = {"train": {"update_clip_norm": clip}} if clip else {}
        return from_dict({"num_clients": 4, "aggregation": {"name": "tenseal", **over}, "dp": {"name": "off"},
                          **train}).aggregation

    cfg = agg()
    assert (cfg.scheme, cfg.max_owners, cfg.max_weight, cfg.value_bound) == ("bfv", 4, 1024.0, 1.0)
    assert agg(clip=0.25).value_bound == 0.25
    assert agg(scheme="ckks").max_owners == 4
    with pytest.raises(UserError, match="max_owners=3 is below the 4 owners that train per round"):
        agg(max_owners=3)


def test_bytes_per_value_are_about_8_on_the_tiny_and_mid_adapters():
    for values in (16_384, 262_144):
        assert update_bytes(TensealConfig(), values) / values <= 8.04
    assert update_bytes(TensealConfig(scheme="ckks"), 262_144) / 262_144 > 32


def test_an_owner_is_told_when_the_bounds_change_its_update(fifty, capsys):
    cfg, owner, _, _ = fifty
    inside = np.full(SIZE, 0.5)
    assert clamp_notice(4.0, inside, cfg) is None  # at the bounds: sent as it is, nothing said
    outside = inside.copy()
    outside[:3] = [0.7, -2.0, 9.0]
    line = clamp_notice(1000.0, outside, cfg)
    assert line == ("tenseal (bfv): its weight 1000 counts as aggregation.max_weight=4; 3 of 8,197 update values "
                    "beyond aggregation.value_bound=0.5 are clamped to it (raise the bound, or clip with "
                    "train.update_clip_norm)")
    capsys.readouterr()
    owner.protect(outside, 1000.0)  # protect says it too, on the owner's console
    assert "counts as aggregation.max_weight=4" in capsys.readouterr().out


@pytest.mark.parametrize("cohort", [1000, 2000], ids=["4096-42-bit", "8192-59-bit"])
def test_parameters_chosen_for_a_large_cohort_sum_exactly(cohort):
    cfg = TensealConfig(max_owners=cohort, max_weight=4.0, value_bound=0.5)
    ctx = make_context(cfg)
    pub, sec = public_bytes(ctx), secret_bytes(ctx)
    owner, server = TensealOwner(cfg, SIZE, public=pub, secret=sec), TensealServer(cfg, SIZE, public=pub)
    deltas = [np.random.default_rng(i).uniform(-0.5, 0.5, SIZE) for i in range(3)]
    revealed = owner.reveal(server.combine({f"o{i}": owner.protect(d, 4.0) for i, d in enumerate(deltas)}).payload)
    assert revealed.total_weight == 12.0
    assert np.abs(revealed.weighted_sum - 4.0 * sum(deltas)).max() <= 3 * cfg.step / 2 + 1e-12
