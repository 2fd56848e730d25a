"""Shared fixtures: tiny checkpoints built once per session through the real save/load path."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# the coordinator's claim key (privacy/provenance.py): a scratch one, never the machine user's ~/.config
os.environ.setdefault("FEDVEIL_COORDINATOR_KEY", f"/tmp/fedveil-tests-{os.getuid()}/coordinator_ed25519.key")

import sys  # noqa: E402

import absl.logging  # noqa: E402
import pytest  # noqa: E402

from fedveil.core.console import quiet_libraries  # noqa: E402

quiet_libraries()
# absl (imported by dp-accounting, the owner-level accountant's) closes its handler's stream when logging is shut
# down (hydra reconfiguring it in an in-process run) unless that stream is the sys.stderr of the moment: under
# pytest its stream is the session's capture file, so a test with capsys closed it for every later test on the
# worker ("I/O operation on closed file"). The process's own stderr is never closed.
absl.logging.get_absl_handler().python_handler.stream = sys.__stderr__


@pytest.fixture(scope="session")
def tenseal_keyed():
    """``(root, cfg, run, owners) -> (keys, made)``: owners keyed for ``run`` by the real tenseal key set-up
    (each with its own state dir under ``root``, the roster pinned, ``owners[0]`` the key holder) and what
    the key holder made (``made.public`` for the server side)."""
    from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster  # lazy: only the tenseal tests need it
    from fedveil.privacy.secagg.tenseal import keys as setup  # lazy: as above

    def key(root, cfg, run, owners):
        keys = {o: OwnerKeys(o, str(root / o)) for o in owners}
        pin_roster({o: root / o for o in owners}, owners[0])
        made = setup.generate(cfg, keys[owners[0]], run, {o: setup.announce(k) for o, k in keys.items()})
        for o, k in keys.items():
            setup.install(k, run, public=made.public, statement=made.statement, signature=made.signature,
                          sealed=made.sealed[o])
        return keys, made

    return key


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    from fedveil.task.model import TinySpec
    from fedveil.task.tiny import build_tiny_model

    return build_tiny_model(TinySpec(arch="gpt2"), tmp_path_factory.mktemp("models") / "gpt2", seed=0)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    from fedveil.task.model import TinySpec
    from fedveil.task.tiny import build_tiny_model

    return build_tiny_model(TinySpec(arch="llama"), tmp_path_factory.mktemp("models") / "llama", seed=0)


@pytest.fixture
def ray_head():
    """A Ray head started as its own process (as an operator would, ``ray start --head``); yields its
    address and its temp dir; stopped afterwards by its process group (never ``ray stop``, which
    would stop every Ray on the machine)."""
    import shutil
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            f"--temp-dir={ray_tmp}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(ray_tmp.glob("session_*/logs/raylet.out")):
            assert head.poll() is None and time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(1)
        yield f"127.0.0.1:{port}", ray_tmp
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head and what it started: this fixture's process group
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
