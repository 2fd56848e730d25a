"""Files an existing run left on disk still load and verify, byte for byte.

``run_v0/`` was written once by fedveil as of commit 9feb944 (before the epsilon ledger and the round
chain shared one hash chain): a coordinator's ``round_ledger.jsonl`` and two owners' ε ledgers, one
version 2 and one version 1 (no chain). The hashes below are what that code computed; a refactor
that changes a byte of the canonical form, the genesis or the link breaks this test.
"""

import json
import shutil
from pathlib import Path

import pytest

from fedveil.privacy.dp import epsilon_ledger
from fedveil.privacy.dp.epsilon_ledger import LedgerError, Step, reserve
from fedveil.server import round_chain
from fedveil.server.cli import main as fedveil

RUN = Path(__file__).parent / "run_v0"
CHAIN_HEAD = "2507c676a2d424d13a92cb5374233391349f5dc3ae71c9a9ad4896f8186faa7c"
LEDGER_HEAD = "c966b5b9a11601bd7070272b87779e680967ad92496c5fcd4989b8f482687966"  # client_0, version 2
MIGRATED_HEAD = "43f79284a06715c58bad95bb07a8429a9f2ed6e3a8f58d42954daf4998aee570"  # client_1's v1 history, chained
APPENDED = "864d594060ed6e7a7b8f0a8577f4b8fe705507dacba431d8b177b9baf276421b"  # round 4 appended to the chain


@pytest.fixture
def run(tmp_path):
    shutil.copytree(RUN, tmp_path / "run")
    return tmp_path / "run"


def test_version_2_ledger_loads_and_is_saved_back_byte_for_byte(run):
    state = run / "state" / "client_0"
    led = epsilon_ledger.load(state)
    assert [(s.run, s.round) for s in led.history] == [("run-a", 1), ("run-a", 2), ("run-a", 3), ("run-b", 1),
                                                         ("run-b", 2)]
    assert (led.budget_epsilon, led.delta, led.accountant) == (8.0, 1e-5, "rdp")
    assert led.spent_epsilon == pytest.approx(2.9999583106190317, rel=1e-12)
    assert set(led.plans) == {"run-a", "run-b"}
    epsilon_ledger.save(state, led)
    assert (state / epsilon_ledger.FILENAME).read_bytes() == (RUN / "state/client_0/privacy_ledger.json").read_bytes()
    assert json.loads((state / epsilon_ledger.FILENAME).read_text())["head"] == LEDGER_HEAD
    before = led.spent_epsilon
    assert reserve(state, led, Step("run-c", 1, 1.0, 0.05, 20, time=1.0)) > before
    written = json.loads((state / epsilon_ledger.FILENAME).read_text())
    assert written["history"][-1]["prev"] == LEDGER_HEAD and written["entry_count"] == 6


def test_version_1_ledger_loads_and_is_written_back_as_version_2_with_the_same_chain(run):
    state = run / "state" / "client_1"
    led = epsilon_ledger.load(state)
    assert (len(led.history), led.budget_epsilon, led.delta, led.accountant) == (3, 4.0, 1e-6, "prv")
    assert led.spent_epsilon == pytest.approx(3.998039351151666, rel=1e-12)
    epsilon_ledger.save(state, led)
    migrated = json.loads((state / epsilon_ledger.FILENAME).read_text())
    assert (migrated["version"], migrated["entry_count"], migrated["head"]) == (2, 3, MIGRATED_HEAD)
    assert epsilon_ledger.load(state).history == led.history


def test_an_edited_fixture_ledger_is_refused(run):
    path = run / "state" / "client_0" / epsilon_ledger.FILENAME
    data = json.loads(path.read_text())
    data["history"][1]["steps"] = 10
    data["steps_total"] -= 10
    path.write_text(json.dumps(data))
    with pytest.raises(LedgerError, match="does not link"):
        epsilon_ledger.load(path.parent)


def test_round_chain_verifies_and_extends_with_the_same_hashes(run, capsys):
    path = run / round_chain.FILENAME
    assert round_chain.verify(path, CHAIN_HEAD) == (True, f"{path}: 3 entries, chain intact, head {CHAIN_HEAD}")
    assert fedveil(["verify-ledger", str(run), "--head", CHAIN_HEAD]) == 0
    assert "chain intact" in capsys.readouterr().out
    assert round_chain.head(path) == CHAIN_HEAD
    first = json.loads(path.read_text().splitlines()[0])
    assert first["config_hash"] == round_chain.sha256_of(b"config")
    assert first["aggregated_digest"] == round_chain.sha256_of(b"agg 1", b"\x00\xff")
    entry = round_chain.append(path, {"round": 4, "backend": "tenseal", "epsilon": {"client_0": 1.0},
                                      "note": "owner caf\u00e9"})
    assert (entry["prev_hash"], entry["hash"]) == (CHAIN_HEAD, APPENDED)
    assert round_chain.verify(path, APPENDED)[0]


def test_an_edited_fixture_chain_is_refused(run):
    path = run / round_chain.FILENAME
    rows = path.read_text().splitlines()
    rows[1] = rows[1].replace('"client_1": 1.0', '"client_1": 0.1')
    path.write_text("\n".join(rows) + "\n")
    ok, why = round_chain.verify(path, CHAIN_HEAD)
    assert not ok and f"{path}:2: entry hash does not match" in why
