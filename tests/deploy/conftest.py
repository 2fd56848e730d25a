"""Fixtures shared by the deployment tests."""

import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def deploy_dir():
    """A fresh DEPLOY_DIR with a short path: the owners' Unix sockets live under it (Linux caps a socket
    path at 107 bytes; deploy/start-supernode.sh refuses a deeper one), and pytest's tmp_path under xdist,
    with a long test name, is already ~90 bytes deep."""
    short = Path(tempfile.mkdtemp(prefix="fvd-", dir="/tmp"))
    yield short / "deploy"
    shutil.rmtree(short, ignore_errors=True)
