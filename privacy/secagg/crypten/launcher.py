"""Aggregator parties on this machine: start K ``fedveil-party`` processes and the TTP dealer, stop them.

Used by the simulation (``BACKENDS["crypten"].local_services``) and the tests; a deployment
starts each party on its own host instead (``deploy/start-parties.sh``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from fedveil.core.console import progress
from fedveil.privacy.secagg.crypten.party import call

PARTY_MODULE = "fedveil.privacy.secagg.crypten.party"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_parties(world: int, state_root: Path, timeout: float = 120.0, min_owners: int = 2,
                        max_weight: float | None = None):
    """Start K parties and the TTP on this machine; returns (addresses, processes) once all are ready.

    ``min_owners`` and ``max_weight`` are the parties' own floors (``--min-owners``, ``--max-weight``),
    on top of what each request asks."""
    rendezvous = f"tcp://127.0.0.1:{free_port()}"
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(world)]
    logs = Path(state_root)
    logs.mkdir(parents=True, exist_ok=True)
    base = [sys.executable, "-m", PARTY_MODULE, "--world", str(world), "--rendezvous", rendezvous]
    procs = []
    for rank in range(world):
        log = open(logs / f"party_{rank}.log", "w")
        limits = ["--min-owners", str(min_owners)] + (["--max-weight", str(max_weight)] if max_weight is not None else [])
        procs.append(subprocess.Popen([*base, "--rank", str(rank), "--listen", addresses[rank], *limits,
                                       "--state-dir", str(logs / f"party_{rank}")], stdout=log, stderr=subprocess.STDOUT))
    log = open(logs / "ttp.log", "w")
    procs.append(subprocess.Popen([*base, "--ttp"], stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    for rank, address in enumerate(addresses):
        while True:
            if any(p.poll() is not None for p in procs):
                stop_parties(procs)
                raise RuntimeError(f"an aggregator party exited during start-up; see {logs}/party_*.log and ttp.log")
            try:
                if call(address, "Ready", b"", timeout=2) == b"1":
                    break
            except Exception:
                pass
            if time.monotonic() > deadline:
                stop_parties(procs)
                raise RuntimeError(f"aggregator party {rank} was not ready within {timeout:g} s; see {logs}/party_{rank}.log")
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


@contextmanager
def local_parties(cfg, out_dir: Path) -> Iterator[None]:
    """Run the federation with K local parties unless ``cfg.party_addresses`` names running ones."""
    if cfg.party_addresses:
        yield
        return
    progress(f"crypten: starting {cfg.parties} aggregator parties and a TTP dealer")
    cfg.party_addresses, procs = start_local_parties(cfg.parties, Path(out_dir) / "parties",
                                                        min_owners=cfg.min_owners, max_weight=cfg.max_weight)
    try:
        yield
    finally:
        stop_parties(procs)
