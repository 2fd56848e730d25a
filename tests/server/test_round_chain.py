"""The round chain (round_ledger.jsonl): intact verifies; any edit, deletion or reordering is found."""

import json

import pytest

from fedveil.server import round_chain
from fedveil.server.cli import main as fedveil


@pytest.fixture
def chain(tmp_path):
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


def test_intact_chain_verifies_with_its_head(chain, capsys):
    head = json.loads(lines(chain)[-1])["hash"]
    assert round_chain.verify(chain, head) == (True, f"{chain}: 4 entries, chain intact, head {head}")
    assert fedveil(["verify-chain", str(chain.parent), "--head", head]) == 0
    assert "chain intact" in capsys.readouterr().out
    assert fedveil(["verify-ledger", str(chain.parent), "--head", head]) == 0  # the name deployments type
    assert "chain intact" in capsys.readouterr().out


def test_edited_entry_is_found(chain, capsys):
    rows = lines(chain)
    entry = json.loads(rows[1])
    entry["epsilon"]["client_0"] = 0.01  # someone lowers a reported epsilon
    rows[1] = json.dumps(entry, sort_keys=True)
    write(chain, rows)
    assert fedveil(["verify-chain", str(chain)]) == 1
    assert f"{chain}:2: entry hash does not match its content" in capsys.readouterr().err


def test_rehashed_edit_still_breaks_the_chain(chain):
    rows = lines(chain)
    entry = json.loads(rows[1])
    entry["participants"] = ["client_0"]
    entry["hash"] = round_chain.entry_hash(entry)  # a careful forger recomputes the hash
    rows[1] = json.dumps(entry, sort_keys=True)
    write(chain, rows)
    ok, message = round_chain.verify(chain)
    assert not ok and ":3: prev_hash does not match line 2" in message


@pytest.mark.parametrize("mutate, where", [
    (lambda rows: rows[:1] + rows[2:], ":2: prev_hash"),            # middle entry deleted
    (lambda rows: [rows[0], rows[2], rows[1], rows[3]], ":2: prev_hash"),  # reordered
    (lambda rows: rows[:2] + ['{"round": 3'] + rows[3:], ":3: not valid JSON"),  # truncated line
])
def test_deletion_reordering_and_damage_are_found(chain, mutate, where):
    write(chain, mutate(lines(chain)))
    ok, message = round_chain.verify(chain)
    assert not ok and where in message


def test_deleting_the_newest_entry_shows_against_the_head(chain):
    head = json.loads(lines(chain)[-1])["hash"]
    write(chain, lines(chain)[:-1])
    assert round_chain.verify(chain)[0]  # a chain alone cannot see a cut at the end ...
    ok, message = round_chain.verify(chain, head)  # ... its recorded head can
    assert not ok and "removed from the end" in message
