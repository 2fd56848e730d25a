"""Fixtures of the fault-injection tests (``-m faults``); the harness and checks are in harness.py.

A killed run is a real process (``harness.py``'s federation, or an owner worker) sent SIGKILL by a
failpoint (``FEDVEIL_FAULT``, ``core/faults.py``); what the operator does next (restart,
``resume=true``) is played by the test. Everything runs on a tiny model with few steps.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def owners_data(tmp_path_factory):
    from fedveil.task.demo_data import write_demo_data

    return [str(d) for d in write_demo_data(tmp_path_factory.mktemp("faults-data"), 3, 60, seed=0)]
