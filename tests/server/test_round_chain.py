"""The round ledger's hash chain: intact verifies; any edit, deletion or reordering is found."""

import json

import pytest

from fedveil.server import round_chain
from fedveil.server.cli import main as fedveil


@pytest.fixture
def ledger(tmp_path):
    path = tmp_path / round_chain.FILENAME
    for r in range(1, 5):
        round_chain.append(
            path,
            {
                "round": r,
                "participants": ["client_0", "client_1"],
                "epsilon": {"client_0": 0.5 * r},
                "aggregated_digest": f"{r:064x}",
            },
        )
    return path


def lines(path):
    return path.read_text().splitlines()


def write(path, rows):
    path.write_text("".join(r + "\n" for r in rows))


def test_intact_ledger_verifies_with_its_head(ledger, capsys):
    head = json.loads(lines(ledger)[-1])["hash"]
    assert round_chain.verify(ledger, head) == (True, f"{ledger}: 4 entries, chain intact, head {head}")
    assert fedveil(["verify-ledger", str(ledger.parent), "--head", head]) == 0
    assert "chain intact" in capsys.readouterr().out


def test_edited_entry_is_found(ledger, capsys):
    rows = lines(ledger)
    entry = json.loads(rows[1])
    entry["epsilon"]["client_0"] = 0.01  # someone lowers a reported epsilon
    rows[1] = json.dumps(entry, sort_keys=True)
    write(ledger, rows)
    assert fedveil(["verify-ledger", str(ledger)]) == 1
    assert f"{ledger}:2: entry hash does not match its content" in capsys.readouterr().err


def test_rehashed_edit_still_breaks_the_chain(ledger):
    rows = lines(ledger)
    entry = json.loads(rows[1])
    entry["participants"] = ["client_0"]
    entry["hash"] = round_chain.entry_hash(entry)  # a careful forger recomputes the hash
    rows[1] = json.dumps(entry, sort_keys=True)
    write(ledger, rows)
    ok, message = round_chain.verify(ledger)
    assert not ok and ":3: prev_hash does not match line 2" in message


@pytest.mark.parametrize("mutate, where", [
    (lambda rows: rows[:1] + rows[2:], ":2: prev_hash"),            # middle entry deleted
    (lambda rows: [rows[0], rows[2], rows[1], rows[3]], ":2: prev_hash"),  # reordered
    (lambda rows: rows[:2] + ['{"round": 3'] + rows[3:], ":3: not valid JSON"),  # truncated line
])
def test_deletion_reordering_and_damage_are_found(ledger, mutate, where):
    write(ledger, mutate(lines(ledger)))
    ok, message = round_chain.verify(ledger)
    assert not ok and where in message


def test_deleting_the_newest_entry_shows_against_the_head(ledger):
    head = json.loads(lines(ledger)[-1])["hash"]
    write(ledger, lines(ledger)[:-1])
    assert round_chain.verify(ledger)[0]  # a chain alone cannot see a cut at the end ...
    ok, message = round_chain.verify(ledger, head)  # ... its recorded head can
    assert not ok and "removed from the end" in message
