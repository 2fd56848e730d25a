"""Real aggregator party processes (gloo + TTP) behind their gRPC service."""

import numpy as np
import pytest

from fedveil.core.payload import Protected, RoundContext
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig, PartyFailure
from fedveil.privacy.secagg.crypten.launcher import coordinator_tls_of, start_local_parties, stop_parties, tls_dir_of
from fedveil.privacy.secagg.crypten.party import call
from fedveil.privacy.secagg.identity import OwnerKeys

pytestmark = pytest.mark.slow
SIZE = 300


def test_parties_aggregate_check_norms_refuse_bad_shares_and_fail_clearly(tmp_path):
    owners = {f"client_{k}": OwnerKeys(f"client_{k}", str(tmp_path / "owners" / f"client_{k}")) for k in range(4)}
    addresses, procs = start_local_parties(3, tmp_path, owners={o: k.member().verify_key for o, k in owners.items()})
    try:
        keys = [call(a, "PublicKey", b"", timeout=10, tls=coordinator_tls_of(tmp_path)) for a in addresses]
        cfg = CryptenConfig(norm_bound=5.0, party_addresses=addresses, party_timeout_s=20, min_owners=2,
                            tls_dir=str(tls_dir_of(tmp_path)))
        rng = np.random.default_rng(0)
        deltas = {"client_0": rng.normal(scale=0.05, size=SIZE), "client_1": rng.normal(scale=50.0, size=SIZE),
                  "client_2": rng.normal(scale=0.05, size=SIZE), "client_3": rng.normal(scale=0.05, size=SIZE)}
        counts = {"client_0": 216, "client_1": 54, "client_2": 100, "client_3": 10}

        unclipped = CryptenConfig(**{**cfg.__dict__, "norm_bound": None})  # client_1 skips the owner's own clip

        def protect(client, size=SIZE):
            owner = CryptenBackend(
                unclipped if client == "client_1" else cfg, size, party_keys=keys, keys=owners[client]
            )
            return owner.protect(deltas[client][:size] if size <= SIZE else np.zeros(size), counts[client],
                                 RoundContext(1, "L", client))

        payloads = [protect("client_0"), protect("client_1"), protect("client_2")]
        bad = protect("client_3", size=SIZE - 1)  # wrong length: every party refuses to open it
        server = CryptenBackend(cfg, SIZE)
        result = server.combine({"client_0": payloads[0], "client_1": payloads[1], "client_2": payloads[2],
                                 "client_3": Protected(blobs=bad.blobs)}, RoundContext(1, "L"))
        assert result.excluded == {"client_1": "dropped by the aggregator parties: over-bound",
                                   "client_3": "dropped by the aggregator parties: malformed"}
        revealed = server.reveal(result.payload)
        expected = (216 * deltas["client_0"] + 100 * deltas["client_2"]) / 316
        assert revealed.total_weight == 316
        assert np.abs(revealed.mean - expected).max() < 2**-16

        procs[1].kill()  # a party dies
        procs[1].wait()
        with pytest.raises(PartyFailure, match=r"party 1 at .* failed or did not answer"):
            server.combine(dict(zip(["client_0", "client_1", "client_2"], payloads)), RoundContext(2, "L"))
    finally:
        stop_parties(procs)
    assert all(p.poll() is not None for p in procs)  # every party and the dealer are gone
