"""An owner's link goes down mid-round and comes back: the round waits at most ``sim.round_timeout_s``,
goes on with the owners that answered when they are at least the backend's floor, records why the
others are missing, and the owner rejoins with its ε ledger intact (``server/availability.py``).

The link is played by the harness's grid (``harness.LocalGrid``, ``down``): in round FIRST the
owner trains but its reply is lost; in the rounds after, until LAST, it is not connected.
"""

import json

import pytest
from harness import assert_nothing_half_written, experiment, in_process, rounds_logged

from fedveil.core.errors import UserError

pytestmark = [pytest.mark.faults]
SILENT, ABSENT = "no reply within sim.round_timeout_s=0.5 s", "not connected within sim.round_timeout_s=0.5 s"


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_plain_with_dp_goes_on_without_a_dead_link_and_the_owner_rejoins_with_its_ledger(tmp_path, tiny_gpt2,
                                                                                       owners_data):
    from fedveil.privacy.dp import epsilon_ledger
    from fedveil.server import round_chain

    out = tmp_path / "run"
    # eval_in_train=false: round 0's evaluate exchange is where the coordinator hears client_2 name itself
    # before its round-1 reply is lost (plain has no key set-up naming nodes; carried, it is node_102)
    run = {**experiment(out, tiny_gpt2, owners_data, {"name": "plain"}, rounds=3, eval_in_train=False),
           "dp": {"name": "sample_level", "target_epsilon": 8.0, "accountant": "rdp"}}
    summary = in_process(run, down={"client_2": (1, 2)})
    assert rounds_logged(out) == [0, 1, 2, 3] and summary["rounds_completed"] == 3
    assert_nothing_half_written(out)
    r = rows(out)
    assert r[1]["clients"] == r[2]["clients"] == ["client_0", "client_1"]
    assert list(r[1]["excluded"]) == ["client_2"] and r[1]["excluded"]["client_2"].startswith(SILENT)
    assert list(r[2]["excluded"]) == ["client_2"] and r[2]["excluded"]["client_2"].startswith(ABSENT)
    assert r[3]["clients"] == ["client_0", "client_1", "client_2"] and not r[3]["excluded"]
    chain = [json.loads(line) for line in (out / round_chain.FILENAME).read_text().splitlines()]
    assert [e["excluded"] for e in chain] == [["client_2"], ["client_2"], []]
    assert round_chain.verify(out / round_chain.FILENAME, summary["ledger_head"])[0]
    # the lost round was spent (the update left the owner: never under-counted), the absent one was not;
    # its ledger goes on from where it was and the ε its row reports is the one on its disk
    ledger = epsilon_ledger.load(out / "clients" / "client_2")
    assert [s.round for s in ledger.history] == [1, 3]
    assert ledger.history[0].epsilon_after < ledger.history[1].epsilon_after <= 8.0
    assert r[3]["per_client"]["client_2"]["epsilon"] == pytest.approx(ledger.history[1].epsilon_after)
    assert [s.round for s in epsilon_ledger.load(out / "clients" / "client_0").history] == [1, 2, 3]


@pytest.mark.slow
def test_tenseal_goes_on_without_the_owner_it_would_ask_to_re_encrypt_and_that_owner_rejoins(tmp_path, tiny_gpt2,
                                                                                             owners_data):
    """client_0 (the smallest id, asked to re-encrypt the global while it takes part) loses its link
    mid-round 1: client_1 re-encrypts; back in round 2, client_0 opens the global others signed, trains
    on it, and writes the final adapter as every owner does."""
    out = tmp_path / "run"
    summary = in_process(experiment(out, tiny_gpt2, owners_data, {"name": "tenseal"}, rounds=2),
                         down={"client_0": (1, 1)})
    assert rounds_logged(out) == [0, 1, 2] and summary["rounds_completed"] == 2
    assert_nothing_half_written(out)
    r = rows(out)
    assert r[1]["clients"] == ["client_1", "client_2"] and r[1]["excluded"]["client_0"].startswith(SILENT)
    assert r[2]["clients"] == ["client_0", "client_1", "client_2"] and r[2]["eval_loss"] is not None
    for k in range(3):
        assert (out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_crypten_goes_on_at_its_floor_and_stops_clearly_below_it(tmp_path, tiny_gpt2, owners_data):
    """aggregation.min_owners=2 of 3: one link down, the rounds go on with two; a second link down
    mid-round 2 leaves one answer: the parties are not asked, round 2's row says why, and no
    checkpoint is written (resume=true runs it again)."""
    from harness import checkpoints

    out = tmp_path / "run"
    crypten = {"name": "crypten", "parties": 2, "min_owners": 2}
    with pytest.raises(UserError, match=r"round 2: no owner trained.*fewer than aggregation\.min_owners=2"):
        in_process(experiment(out, tiny_gpt2, owners_data, crypten, rounds=2, eval_in_train=False),  # as above
                   down={"client_2": (1, 2), "client_1": (2, 2)})
    assert rounds_logged(out) == [0, 1, 2] and checkpoints(out) == [1]
    r = rows(out)
    assert r[1]["clients"] == ["client_0", "client_1"] and r[1]["excluded"]["client_2"].startswith(SILENT)
    assert r[2]["clients"] == [] and r[2]["excluded"]["client_2"].startswith(ABSENT)
    assert r[2]["excluded"]["client_1"].startswith(SILENT)
    assert "fewer than aggregation.min_owners=2" in r[2]["excluded"]["client_0"]


def test_a_round_waits_for_missing_owners_at_most_its_timeout_and_needs_the_floor():
    """``connected_nodes`` on a grid where one of three owners never connects: it waits round_timeout_s,
    then goes on with two; with a floor of three it stops, naming the key and the fix."""
    import time
    from types import SimpleNamespace

    from fedveil.server.availability import connected_nodes

    class Grid:
        calls = 0

        def get_node_ids(self):
            Grid.calls += 1
            return [100, 101]

    def cfg(floor):
        return SimpleNamespace(num_clients=3, sim=SimpleNamespace(round_timeout_s=0.3),
                               aggregation=SimpleNamespace(min_owners=floor))

    start = time.monotonic()
    assert connected_nodes(Grid(), cfg(2), 4) == [100, 101]
    assert 0.3 <= time.monotonic() - start < 1.0 and Grid.calls >= 2
    with pytest.raises(UserError, match=r"round 4: 2 of 3 owners connected within sim\.round_timeout_s=0\.3 s, "
                                        r"fewer than the 3 a round needs \(aggregation\.min_owners\); .*resume=true"):
        connected_nodes(Grid(), cfg(3), 4)
