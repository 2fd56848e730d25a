"""Attacks on the deployment's trust boundaries that must fail: the party service, pinned party
keys, key files. Each test names what the attack achieved before. The SuperLink's Control API
(a stranger registering a SuperNode key) and the pinned app (a modified app refused by the
SuperNodes) need a running deployment: ``tests/deploy/test_deploy.py``.
"""

import os
import stat
import subprocess
import sys

import grpc
import pytest

from fedveil.core.errors import UserError
from fedveil.core.pki import make_ca, make_cert, make_node_key, write_private
from fedveil.privacy.secagg.crypten.backend import (CryptenBackend, CryptenConfig, PINNED_PARTY_KEYS,
                                                    write_pinned_party_keys)
from fedveil.privacy.secagg.crypten.party import TlsFiles, call

pytestmark = pytest.mark.adversary  # and slow, per test, where it starts processes


# --- the party service: TLS, and the coordinator is the only caller ------------------------------

@pytest.fixture(scope="module")
def parties(tmp_path_factory):
    from fedveil.privacy.secagg.crypten.launcher import coordinator_tls_of, start_local_parties, stop_parties

    root = tmp_path_factory.mktemp("parties")
    addresses, procs = start_local_parties(3, root)
    try:
        yield root, addresses, coordinator_tls_of(root)
    finally:
        stop_parties(procs)


@pytest.mark.slow
def test_a_party_answers_only_the_coordinators_certificate(parties, tmp_path):
    # Before: plaintext gRPC (add_insecure_port), any caller: anyone who reached a party could read
    # its key, ask Ready, and submit Aggregate requests (rounds of a run id of its choice).
    root, addresses, coordinator = parties
    assert len(call(addresses[0], "PublicKey", b"", timeout=10, tls=coordinator)) == 32  # the coordinator gets in

    # 1. plaintext: the TLS handshake fails, nothing is served
    with pytest.raises(grpc.RpcError) as err:
        call(addresses[0], "PublicKey", b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # 2. TLS with a client certificate from another CA (same common name): the handshake fails
    make_ca(tmp_path / "other")
    make_cert(tmp_path / "other", "coordinator", "fedveil-coordinator", client=True)
    forged = TlsFiles(str(root / "tls" / "ca.crt"), str(tmp_path / "other" / "coordinator.pem"),
                      str(tmp_path / "other" / "coordinator.key"))
    with pytest.raises(grpc.RpcError) as err:
        call(addresses[0], "PublicKey", b"", timeout=5, tls=forged)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    # 3. a certificate from the federation CA, but not the coordinator's identity: UNAUTHENTICATED
    make_cert(root / "tls", "stranger", "fedveil-party-9", client=True)
    stranger = TlsFiles(
        str(root / "tls" / "ca.crt"), str(root / "tls" / "stranger.pem"), str(root / "tls" / "stranger.key")
    )
    for method in ("PublicKey", "Ready", "Aggregate"):
        with pytest.raises(grpc.RpcError) as err:
            call(addresses[0], method, b"", timeout=5, tls=stranger)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method
        assert "only the coordinator" in err.value.details()

    # 4. no client certificate at all (server-authenticated TLS only): the handshake fails
    channel = grpc.secure_channel(addresses[0], grpc.ssl_channel_credentials((root / "tls" / "ca.crt").read_bytes()))
    with channel, pytest.raises(grpc.RpcError) as err:
        channel.unary_unary("/fedveil.Party/PublicKey")(b"", timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_party_refuses_to_start_without_tls_unless_asked(tmp_path):
    # Before: the service always started in plaintext.
    proc = subprocess.run([sys.executable, "-m", "fedveil.privacy.secagg.crypten.party", "--world", "3", "--rank", "0",
                           "--rendezvous", "tcp://127.0.0.1:1", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no TLS files" in proc.stderr and "--insecure" in proc.stderr


def test_the_coordinator_refuses_to_call_parties_in_plaintext_unless_asked():
    with pytest.raises(UserError, match="aggregation.tls_dir is not set"):
        CryptenBackend.for_server(CryptenConfig(party_addresses=["127.0.0.1:1"] * 3), 8)
    with pytest.raises(UserError, match="exclusive"):
        CryptenConfig(insecure=True, tls_dir="/x")


# --- pinned party keys -------------------------------------------------------------------------

def test_a_swapped_party_key_is_refused_by_an_owner_with_pinned_keys(tmp_path):
    # Before: owners sealed their shares to whatever keys the server relayed; a coordinator (or anyone
    # on its path to the parties) that swapped party 1's key for its own opened party 1's share of
    # every owner, and with K-1 swaps recovered every update.
    from nacl.public import PrivateKey

    from fedveil.privacy.secagg import backend_spec
    from fedveil.core import wire

    real = [bytes(PrivateKey.generate().public_key) for _ in range(3)]
    evil = bytes(PrivateKey.generate().public_key)
    write_pinned_party_keys(tmp_path / PINNED_PARTY_KEYS, real)
    cfg = CryptenConfig()
    swapped = {wire.PARTY_KEYS: ",".join(k.hex() for k in [real[0], evil, real[2]])}
    honest = {wire.PARTY_KEYS: ",".join(k.hex() for k in real)}
    owner_side = backend_spec("crypten").owner  # what client/owner.py builds, with the owner's keys
    from fedveil.privacy.secagg.identity import OwnerKeys

    mine = OwnerKeys("client_0", str(tmp_path))  # the pin in its state directory
    with pytest.raises(UserError, match=r"differ from this owner's pinned keys .*parties \[1\]"):
        owner_side(cfg, 8, mine, swapped)
    assert owner_side(cfg, 8, mine, honest).party_keys == real

    # the node-config key party-keys='FILE' (deployment) reaches the owner's keys through the ClientApp
    from types import SimpleNamespace

    from fedveil.client.app import owner_identity

    elsewhere = tmp_path / "state"
    ctx = SimpleNamespace(
        node_id=1,
        node_config={
            "data-dir": str(tmp_path),
            "state-dir": str(elsewhere),
            "client-id": "client_0",
            "party-keys": str(tmp_path / PINNED_PARTY_KEYS),
        },
    )
    named = owner_identity(ctx, None, "").keys
    with pytest.raises(UserError, match="pinned keys"):
        owner_side(cfg, 8, named, swapped)
    assert owner_side(cfg, 8, named, honest).party_keys == real
    lost = OwnerKeys("client_0", str(elsewhere), party_keys_path=str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="cannot be read"):  # a pin the owner named but lost: refuse, never skip
        owner_side(cfg, 8, lost, honest)


# --- key files ---------------------------------------------------------------------------------

def test_private_keys_are_0600_from_creation(tmp_path, monkeypatch):
    # Before: deploy/keys.py wrote keys with the default mode (0644 under umask 022) and chmod-ed
    # them afterwards: between the two, any local user could read ca.key or a SuperNode's key.
    created = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    old = os.umask(0)  # the worst umask: nothing masked
    try:
        monkeypatch.setattr(os, "open", recording_open)
        make_ca(tmp_path)
        make_cert(tmp_path, "server", "127.0.0.1", ["127.0.0.1"])
        make_cert(tmp_path, "coordinator", "fedveil-coordinator", client=True)
        make_node_key(tmp_path, "client_0")
    finally:
        os.umask(old)
    keys = [p for p in created if p[0].endswith(".key")]
    assert {os.path.basename(p[0]) for p in keys} == {"ca.key", "server.key", "coordinator.key", "client_0.key"}
    for path, flags, mode in keys:
        assert mode == 0o600 and flags & os.O_EXCL, path  # created 0600, never over an existing file
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    for public in ("ca.crt", "server.pem", "client_0.pub"):
        assert stat.S_IMODE(os.stat(tmp_path / public).st_mode) == 0o644
    with pytest.raises(FileExistsError):  # a planted file (say, a symlink to elsewhere) is never written through
        write_private(tmp_path / "ca.key", b"x")


def test_deploy_keys_script_writes_0600_keys(tmp_path):
    env = {**os.environ}
    script = (
        "import os, runpy, sys; os.umask(0); sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for args in (["ca"], ["server", "127.0.0.1"], ["node", "client_0"], ["party", "0", "127.0.0.1"], ["coordinator"]):
        subprocess.run([sys.executable, "-c", script, f"{root}/deploy/keys.py", args[0], str(tmp_path), *args[1:]],
                       check=True, env=env, timeout=60)
    for key in ("ca.key", "server.key", "client_0.key", "party-0.key", "coordinator.key"):
        assert stat.S_IMODE(os.stat(tmp_path / key).st_mode) == 0o600, key
