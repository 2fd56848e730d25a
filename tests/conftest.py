"""Shared fixtures: tiny checkpoints built once per session through the real save/load path."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from fedveil.core.console import quiet_libraries  # noqa: E402

quiet_libraries()


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
