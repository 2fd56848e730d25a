"""``eval_in_train=true``: one exchange per round. Round r's evaluation rides in round r+1's train
message (each owner evaluates the global before training on it) and joins round r's row when those
replies arrive; only the last round evaluates apart. The run is the same run: the same final adapter
and the same held-out loss for every round as with a separate evaluate exchange."""

import json
from collections import Counter

import pytest
from harness import LocalGrid, assert_nothing_half_written, assert_same_adapter, experiment, final_adapter, in_process

from fedveil.core.errors import UserError

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def counted(monkeypatch):
    sent = Counter()
    push = LocalGrid.push_messages

    def counting(self, messages):
        messages = list(messages)
        sent.update(m.metadata.message_type for m in messages)
        return push(self, messages)

    monkeypatch.setattr(LocalGrid, "push_messages", counting)
    return sent


def test_eval_in_train_saves_the_evaluate_exchanges_and_changes_no_number(tmp_path, tiny_gpt2, owners_data,
                                                                          monkeypatch):
    sent = counted(monkeypatch)
    apart, carried = tmp_path / "apart", tmp_path / "carried"
    in_process(experiment(apart, tiny_gpt2, owners_data, {"name": "plain"}, rounds=3))
    assert sent == {"train": 9, "evaluate": 12}
    sent.clear()
    summary = in_process(experiment(carried, tiny_gpt2, owners_data, {"name": "plain"}, rounds=3, eval_in_train=True))
    assert sent == {"train": 9, "evaluate": 3}  # the last round's only
    assert_nothing_half_written(carried)
    assert_same_adapter(final_adapter(carried), final_adapter(apart))
    a, c = rows(apart), rows(carried)
    assert [r["round"] for r in c] == [0, 1, 2, 3]
    assert [r["eval_loss"] for r in c] == pytest.approx([r["eval_loss"] for r in a], rel=1e-6)
    assert all(r["evaluated"] == ["client_0", "client_1", "client_2"] for r in c)
    for ra, rc in zip(a, c):
        assert {w: o.get("eval_loss") for w, o in rc["per_client"].items()} == pytest.approx(
            {w: o.get("eval_loss") for w, o in ra["per_client"].items()}, rel=1e-6)
        assert rc.get("train_loss") == ra.get("train_loss") and rc["clients"] == ra["clients"]
    assert summary["initial_eval_loss"] == pytest.approx(a[0]["eval_loss"], rel=1e-6)


def test_eval_in_train_is_refused_where_the_evaluate_message_still_carries_the_backends_hand_over():
    from fedveil.configs.schema import from_dict

    with pytest.raises(UserError, match=r"eval_in_train=true needs aggregation=plain, not tenseal .*set "
                                         r"eval_in_train=false"):
        from_dict({"dp": {"name": "off"}, "aggregation": {"name": "tenseal"}, "eval_in_train": True})


def test_a_coordinator_killed_before_a_carried_evaluation_arrives_resumes_and_every_row_gets_its_own(
        tmp_path, tiny_gpt2, owners_data):
    """Killed right after round 2's checkpoint: round 2's row is committed without its evaluation
    (round 3's train brings it). Resumed, round 3 carries it: each round logged once, every row with
    its held-out loss, the same final adapter as an uninterrupted run."""
    from harness import checkpoints, killed, rounds_logged

    out, reference = tmp_path / "run", tmp_path / "reference"
    run = experiment(out, tiny_gpt2, owners_data, {"name": "plain"}, rounds=3, eval_in_train=True)
    killed(run, "after-checkpoint:2")
    assert rounds_logged(out) == [0, 1, 2] and checkpoints(out) == [1, 2]
    assert [r.get("eval_loss") is not None for r in rows(out)] == [True, True, False]
    in_process({**run, "resume": True})
    assert rounds_logged(out) == [0, 1, 2, 3] and checkpoints(out) == [1, 2, 3]
    assert_nothing_half_written(out)
    in_process(experiment(reference, tiny_gpt2, owners_data, {"name": "plain"}, rounds=3, eval_in_train=True))
    assert [r["eval_loss"] for r in rows(out)] == pytest.approx([r["eval_loss"] for r in rows(reference)], rel=1e-6)
    assert_same_adapter(final_adapter(out), final_adapter(reference))
