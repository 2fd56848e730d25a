"""What an owner pays to open a round under ``tenseal``, cut without skipping a check: its contexts
deserialized once per process for the same bytes (``context.cached_context``), and a pending round's
sum taken from the very plaintexts it range-checked (``checks.checked_sum``), equal to Dec(sum)."""

import os

import numpy as np
import pytest

from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError, RoundContext
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.tenseal import bfv, checks, context
from fedveil.privacy.secagg.tenseal.backend import SIGNATURE, TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import ROUND_UPDATES, EncryptedGlobal, RoundUpdates
from fedveil.privacy.secagg.tenseal.keys import PUBLIC_FILE, SECRET_FILE, run_dir

CFG = TensealConfig(max_owners=3, max_weight=2.0, value_bound=6.0, norm_bound=8.0, global_bound=10.0)
CKKS = TensealConfig(scheme="ckks", max_owners=3, max_weight=2.0, value_bound=6.0, norm_bound=8.0)
SIZE, RUN, OWNERS = 41, "/runs/c#00000001", ("client_0", "client_1", "client_2")


def side(keys, owner, cfg=CFG):
    return backend_spec("tenseal").owner(cfg, SIZE, keys[owner], {}, run=RUN)


def pending_round(keys, made, cfg, sides, rng):
    payloads = {o: b.protect(rng.uniform(-0.05, 0.05, SIZE), float(rng.uniform(0.5, 2.0)), RoundContext(1, "L", o))
                for o, b in sides.items()}
    server = TensealServer(cfg, SIZE, public=made.public, run=RUN,
                           signers={o: keys[o].member().verify_key for o in OWNERS})
    return EncryptedGlobal(None, [server.combine(payloads, RoundContext(1, "L")).payload.blobs[ROUND_UPDATES]])


def test_owner_sides_of_the_same_bytes_share_one_deserialized_context(tmp_path, tenseal_keyed, monkeypatch):
    keys, _ = tenseal_keyed(tmp_path, CFG, RUN, OWNERS)
    first = side(keys, "client_0")
    loads = []
    monkeypatch.setattr(context, "load_context", lambda data: loads.append(data) or pytest.fail("deserialized again"))
    again = [side(keys, o) for o in OWNERS]  # every owner of the federation holds byte-identical contexts
    assert loads == [] and all(b._secret is first._secret and b._public is first._public for b in again)


def test_a_context_used_before_gives_the_next_owner_the_keys_a_fresh_load_gives(tmp_path, tenseal_keyed):
    # TenSEAL serializes a context that has encrypted differently: keys derived from that would seal
    # weights nobody else can open. The cache keeps the serialization taken at load, before any use.
    keys, made = tenseal_keyed(tmp_path, CFG, RUN, OWNERS)
    rng = np.random.default_rng(0)
    sides = {o: side(keys, o) for o in OWNERS}
    arrays = pending_round(keys, made, CFG, sides, rng).arrays()  # the shared context has encrypted
    fresh_key = bfv.count_key(context.secret_bytes(context.load_context(made_secret(keys))))
    later = side(keys, "client_1")
    assert later._weight_key == fresh_key
    np.testing.assert_array_equal(later.open_global(arrays, np.zeros(SIZE, np.float32), 1),
                                  sides["client_2"].open_global(arrays, np.zeros(SIZE, np.float32), 1))


def made_secret(keys, owner="client_0"):
    return (run_dir(keys[owner].state_dir, RUN) / SECRET_FILE).read_bytes()


def test_a_warm_cache_skips_none_of_an_owners_checks_on_its_files(tmp_path, tenseal_keyed):
    keys, _ = tenseal_keyed(tmp_path, CFG, RUN, OWNERS)
    side(keys, "client_1")  # the process holds the federation's contexts now
    folder = run_dir(keys["client_1"].state_dir, RUN)
    os.chmod(folder / SECRET_FILE, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        side(keys, "client_1")
    os.chmod(folder / SECRET_FILE, 0o600)
    other, _ = tenseal_keyed(tmp_path / "other", CFG, RUN, OWNERS)  # another federation's context
    (folder / PUBLIC_FILE).write_bytes((run_dir(other["client_1"].state_dir, RUN) / PUBLIC_FILE).read_bytes())
    with pytest.raises(UserError, match="is not the context"):
        side(keys, "client_1")
    own = side(other, "client_1")  # the other federation's bytes: its own contexts, never this one's
    assert own._secret is not side(keys, "client_0")._secret


@pytest.mark.parametrize("cfg", [CFG, CKKS], ids=["bfv", "ckks"])
def test_a_rounds_sum_from_the_checked_plaintexts_is_dec_of_the_ciphertexts_sum(tmp_path, tenseal_keyed, cfg):
    keys, made = tenseal_keyed(tmp_path, cfg, RUN, OWNERS)
    sides = {o: side(keys, o, cfg) for o in OWNERS}
    held = pending_round(keys, made, cfg, sides, np.random.default_rng(1))
    owner = sides["client_1"]
    payloads = owner._checked_round(RoundUpdates.decode(held.pending[0]))
    summed, dec = checks.checked_sum(owner, payloads, 1), owner.reveal(owner.combine(payloads).payload)
    if cfg.scheme == "bfv":  # exact: digits within the bounds add without wrapping
        np.testing.assert_array_equal(summed.weighted_sum, dec.weighted_sum)
        assert summed.total_weight == dec.total_weight
    else:
        np.testing.assert_allclose(summed.weighted_sum, dec.weighted_sum, atol=1e-6)
        assert summed.total_weight == pytest.approx(dec.total_weight, abs=1e-6)
    assert float(np.abs(summed.weighted_sum).max()) > 1e-3  # not a sum of nothing


def test_a_bfv_round_of_more_updates_than_max_owners_is_refused(tmp_path, tenseal_keyed):
    small = TensealConfig(max_owners=2, max_weight=2.0, value_bound=6.0, norm_bound=8.0, global_bound=10.0)
    keys, made = tenseal_keyed(tmp_path, small, RUN, OWNERS)
    sides = {o: side(keys, o, small) for o in OWNERS}
    sent = {o: b.protect(np.full(SIZE, 0.01), 1.0, RoundContext(1, "L", o)).blobs for o, b in sides.items()}
    # three signed updates in one round (an honest server leaves the third out; this one did not)
    three = RoundUpdates(1, {o: (blobs["ciphertext"], blobs[SIGNATURE]) for o, blobs in sent.items()})
    payloads = sides["client_0"]._checked_round(three)
    with pytest.raises(PayloadError, match="over aggregation.max_owners=2 updates in one sum"):
        checks.checked_sum(sides["client_0"], payloads, 1)
