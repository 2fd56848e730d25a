"""Failpoint specs: which point, round and process a FEDVEIL_FAULT value names (core/faults.py)."""

import os
import subprocess
import sys

from fedveil.core.faults import matches, maybe_die


def test_a_spec_names_a_point_and_optionally_its_round_and_who():
    assert matches("aggregate", "aggregate") and matches("aggregate", "aggregate", 3, "x")
    assert matches("aggregate:2", "aggregate", 2) and not matches("aggregate:2", "aggregate", 3)
    assert not matches("aggregate:2", "aggregate")  # a round-bound spec needs the round
    assert matches("crypten-party-mpc:2@1", "crypten-party-mpc", 2, "1")
    assert not matches("crypten-party-mpc:2@1", "crypten-party-mpc", 2, "0")
    assert matches("ledger-write@client_0", "ledger-write", None, "client_0")
    assert not matches("ledger-write@client_0", "ledger-write", None, "client_1")
    assert matches("aggregate:1, before-checkpoint:2", "before-checkpoint", 2)
    assert not matches("before-checkpoint", "after-checkpoint", 2) and not matches("", "aggregate")


def test_a_process_dies_of_sigkill_at_the_point_named_and_only_there(monkeypatch):
    code = ("from fedveil.core.faults import maybe_die\n"
            "maybe_die('aggregate', 1)\nprint('past 1')\nmaybe_die('aggregate', 2)\nprint('past 2')")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "FEDVEIL_FAULT": "aggregate:2"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and proc.stdout == "past 1\n"
    monkeypatch.delenv("FEDVEIL_FAULT", raising=False)
    maybe_die("aggregate", 2)  # unset: nothing happens
