"""Aggregator parties on this machine: start K ``fedveil-party`` processes and the TTP dealer, stop them.

Used by the simulation (``BACKENDS["crypten"].local_services``) and the tests; a deployment
starts each party on its own host instead (``deploy/start-parties.sh``).

The local parties get a throwaway CA in ``<state_root>/tls/`` (``ca.crt``, ``party-R.pem/key``,
and the coordinator's client certificate ``coordinator.pem/key``): they serve TLS and accept only
the coordinator; gloo is bound to the loopback interface. Their X25519 public keys are written to
``<state_root>/party-keys.json``, the file owners pin (``local_parties`` copies it into every
simulated owner's state directory). The launcher plays the operator too: it makes a roster key
(``<state_root>/operator/roster-operator.key``) and signs the roster of the owners it is given
(``<state_root>/owner-roster.json``); the parties pin its verify key and open no other owner's shares.
"""

from __future__ import annotations

import ctypes
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import os
import shutil

from fedveil.core.console import progress
from fedveil.core.disk import owner_id, owner_state_dir
from fedveil.core.pki import make_party_tls
from fedveil.privacy.secagg.crypten.backend import PINNED_PARTY_KEYS, write_pinned_party_keys
from fedveil.privacy.secagg.crypten.party import TlsFiles, call
from fedveil.privacy.secagg.identity import ROSTER_KEY_FILE, OwnerKeys, write_signed_roster

PARTY_MODULE = "fedveil.privacy.secagg.crypten.party"


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are read (one bound and closed at a
    time, the kernel handed the same port out twice in ~1 of 2,000 draws of 4, measured)."""
    with ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _prctl():
    return ctypes.CDLL(None, use_errno=True).prctl  # resolved here, never in a forked child (no dlopen after fork)


PRCTL = _prctl() if sys.platform.startswith("linux") else None


def die_with_parent() -> None:
    """In the child, before exec: Linux sends it SIGKILL when the process that started it dies, so
    local parties never outlive a coordinator that was killed (no ``finally`` runs on SIGKILL).
    Linux ties it to the starting *thread*: start parties from a thread that lives as long as they."""
    if PRCTL is not None:
        PRCTL(1, 9)  # PR_SET_PDEATHSIG, SIGKILL


def tls_dir_of(state_root: Path) -> Path:
    return Path(state_root) / "tls"


def coordinator_tls_of(state_root: Path) -> TlsFiles:
    """The coordinator's client certificate for the parties started in ``state_root``."""
    return TlsFiles.coordinator(tls_dir_of(state_root))


def start_local_parties(world: int, state_root: Path, timeout: float = 120.0, min_owners: int = 2,
                        max_weight: float | None = None, owners: dict[str, bytes] | None = None):
    """Start K parties and the TTP on this machine; returns (addresses, processes) once all are ready.

    ``min_owners`` and ``max_weight`` are the parties' own floors (``--min-owners``, ``--max-weight``),
    on top of what each request asks. ``owners`` (id -> Ed25519 verify key; None: nobody) is the
    roster the launcher signs as the operator: the parties open no other owner's shares. The
    parties serve TLS and accept only the coordinator's client certificate
    (:func:`coordinator_tls_of`); their public keys are in ``<state_root>/party-keys.json``."""
    first, *rest = free_ports(world + 1)
    rendezvous, addresses = f"tcp://127.0.0.1:{first}", [f"127.0.0.1:{port}" for port in rest]
    logs = Path(state_root)
    logs.mkdir(parents=True, exist_ok=True)
    tls_dir = tls_dir_of(logs)
    make_party_tls(tls_dir, world, ["127.0.0.1", "localhost"])
    tls = coordinator_tls_of(logs)
    env = {**os.environ, "GLOO_SOCKET_IFNAME": os.environ.get("GLOO_SOCKET_IFNAME", "lo")}
    roster, roster_key = write_signed_roster(logs, owners or {}, logs / "operator" / ROSTER_KEY_FILE)
    base = [sys.executable, "-m", PARTY_MODULE, "--world", str(world), "--rendezvous", rendezvous,
            "--tls-dir", str(tls_dir)]
    keys = []
    for rank in range(world):  # each party's X25519 key, made before it starts: what owners pin
        out = subprocess.run([sys.executable, "-m", PARTY_MODULE, "--print-public-key", "--state-dir",
                              str(logs / f"party_{rank}")], capture_output=True, text=True, check=True)
        keys.append(bytes.fromhex(out.stdout.strip()))
    write_pinned_party_keys(logs / PINNED_PARTY_KEYS, keys)
    procs = []
    for rank in range(world):
        log = open(logs / f"party_{rank}.log", "w")
        limits = ["--min-owners", str(min_owners)] + (
            ["--max-weight", str(max_weight)] if max_weight is not None else []
        )
        limits += ["--roster", str(roster), "--roster-key", roster_key.hex()]
        procs.append(
            subprocess.Popen(
                [
                    *base,
                    "--rank",
                    str(rank),
                    "--listen",
                    addresses[rank],
                    *limits,
                    "--state-dir",
                    str(logs / f"party_{rank}"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
        )
    log = open(logs / "ttp.log", "w")
    procs.append(subprocess.Popen([*base, "--ttp"], stdout=log, stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=die_with_parent))
    deadline = time.monotonic() + timeout
    for rank, address in enumerate(addresses):
        while True:
            if any(p.poll() is not None for p in procs):
                stop_parties(procs)
                raise RuntimeError(f"an aggregator party exited during start-up; see {logs}/party_*.log and ttp.log")
            try:
                if call(address, "Ready", b"", timeout=2, tls=tls) == b"1":
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                stop_parties(procs)
                raise RuntimeError(
                    f"aggregator party {rank} was not ready within {timeout:g} s; see {logs}/party_{rank}.log"
                )
            time.sleep(0.3)
    return addresses, procs


def stop_parties(procs) -> None:
    """Terminate, then kill what is left; returns when every process is gone."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except Exception:
            p.kill()
            p.wait()


def simulated_owners(out_dir: Path, owners: int) -> dict[str, Path]:
    """The simulated owners' state directories (made if missing), as ``server/prepare.py`` lays them out."""
    states = {owner_id(k): owner_state_dir(out_dir, k) for k in range(owners)}
    for state in states.values():
        state.mkdir(parents=True, exist_ok=True)
    return states


@contextmanager
def local_parties(cfg, out_dir: Path, owners: int = 0) -> Iterator[None]:
    """Run the federation with K local parties unless ``cfg.party_addresses`` names running ones.

    The parties' public keys are pinned in each of the ``owners`` simulated owners' state
    directories (``<out_dir>/clients/client_K/party-keys.json``, as ``client/app.py`` names them),
    the parties get a roster of those owners' Ed25519 keys (made there if missing, as
    ``server/prepare.py`` makes tenseal's), signed by a roster key the launcher makes as the
    operator, and ``cfg.tls_dir`` is set to the coordinator's throwaway TLS files."""
    if cfg.party_addresses:
        yield
        return
    progress(f"crypten: starting {cfg.parties} aggregator parties and a TTP dealer (TLS, coordinator only)")
    root = Path(out_dir) / "parties"
    roster = {o: OwnerKeys(o, str(state)).member().verify_key for o, state in simulated_owners(out_dir, owners).items()}
    cfg.party_addresses, procs = start_local_parties(cfg.parties, root, min_owners=cfg.min_owners,
                                                        max_weight=cfg.max_weight, owners=roster)
    if not cfg.insecure:
        cfg.tls_dir = str(tls_dir_of(root))
    for state in simulated_owners(out_dir, owners).values():
        shutil.copyfile(root / PINNED_PARTY_KEYS, state / PINNED_PARTY_KEYS)
    try:
        yield
    finally:
        stop_parties(procs)
