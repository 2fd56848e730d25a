"""``eval_in_train=true`` (the default): one exchange per round. Round r's evaluation rides in round r+1's
train message (each owner evaluates the global before training on it) and joins round r's row when those
replies arrive; only the last round evaluates apart. With tenseal the hand-over rides too: the owner asked
re-encrypts the global it evaluated and returns it in its train reply. The run is the same run: the same
final adapter and the same held-out loss for every round as with a separate evaluate exchange
(``eval_in_train=false``; tenseal: within BFV's rounding of the global re-encrypted a round later)."""

import json
from collections import Counter

import numpy as np
import pytest
from harness import LocalGrid, assert_nothing_half_written, assert_same_adapter, experiment, final_adapter, in_process

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


@pytest.mark.parametrize("aggregation", [{"name": "plain"}, {"name": "crypten", "parties": 2, "min_owners": 2}],
                         ids=["plain", "crypten"])
def test_eval_in_train_saves_the_evaluate_exchanges_and_changes_no_number(tmp_path, tiny_gpt2, owners_data,
                                                                          monkeypatch, aggregation):
    sent = counted(monkeypatch)
    apart, carried = tmp_path / "apart", tmp_path / "carried"
    in_process(experiment(apart, tiny_gpt2, owners_data, aggregation, rounds=3, eval_in_train=False))
    assert sent == {"train": 9, "evaluate": 12}
    sent.clear()
    summary = in_process(experiment(carried, tiny_gpt2, owners_data, aggregation, rounds=3, eval_in_train=True))
    assert sent == {"train": 9, "evaluate": 3}  # the last round's only
    assert_nothing_half_written(carried)
    assert_same_adapter(final_adapter(carried), final_adapter(apart))
    a, c = rows(apart), rows(carried)
    assert [r["round"] for r in c] == [0, 1, 2, 3]
    assert [r["eval_loss"] for r in c] == pytest.approx([r["eval_loss"] for r in a], rel=1e-6)
    assert all(r["evaluated"] == ["client_0", "client_1", "client_2"] for r in c)
    for ra, rc in zip(a, c):
        losses = [{w: o.get("eval_loss") for w, o in r["per_client"].items()} for r in (ra, rc)]
        assert {w: v is None for w, v in losses[1].items()} == {w: v is None for w, v in losses[0].items()}
        assert {w: v for w, v in losses[1].items() if v is not None} == pytest.approx(
            {w: v for w, v in losses[0].items() if v is not None}, rel=1e-6)
        assert rc.get("train_loss") == ra.get("train_loss") and rc["clients"] == ra["clients"]
    assert summary["initial_eval_loss"] == pytest.approx(a[0]["eval_loss"], rel=1e-6)


def test_eval_in_train_is_the_default_for_every_backend_and_false_still_evaluates_apart():
    from fedveil.configs.schema import from_dict
    from fedveil.privacy.secagg import BACKENDS

    for name in sorted(BACKENDS):
        assert from_dict({"dp": {"name": "off"}, "aggregation": {"name": name}}).eval_in_train is True
        assert from_dict({"dp": {"name": "off"}, "aggregation": {"name": name}, "eval_in_train": False}
                         ).eval_in_train is False


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


def held(out, server_round):
    """The encrypted global a checkpoint holds: (round its signed base reaches, its signer, pending rounds)."""
    from safetensors.numpy import load_file

    from fedveil.privacy.secagg.tenseal import global_codec

    base, pending = global_codec.from_arrays(load_file(out / "checkpoints" / f"round_{server_round:04d}.safetensors"))
    return (base.round, base.signer, len(pending)) if base is not None else (0, None, len(pending))


def owner_adapter(out, k=0):
    from safetensors.numpy import load_file

    return load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def tenseal_apart(tmp_path_factory, tiny_gpt2, owners_data):
    """A tenseal run with an evaluate exchange each round (the reference), and the messages it sent."""
    out = tmp_path_factory.mktemp("tenseal") / "apart"
    with pytest.MonkeyPatch.context() as mp:
        sent = counted(mp)
        in_process(experiment(out, tiny_gpt2, owners_data, {"name": "tenseal"}, rounds=3, eval_in_train=False))
    return out, sent


def test_tenseal_carries_the_evaluation_and_the_hand_over_in_the_train_message(tmp_path, tiny_gpt2, owners_data,
                                                                               tenseal_apart, monkeypatch):
    """tenseal: the owner asked re-encrypts round r's global in its round r+1 train reply (the server
    adopts it before round r+1's updates join), each round still gets one token-weighted held-out loss
    (one ``query.evalsum``), and the run is the run with a separate evaluate exchange, within BFV's
    rounding of the re-encrypted global (re-encrypted a round later here)."""
    apart, before = tenseal_apart
    setup = Counter({k: v for k, v in before.items() if k.startswith("query.") and k != "query.evalsum"})
    assert before - setup == {"train": 9, "evaluate": 12, "query.evalsum": 4}
    sent = counted(monkeypatch)
    carried = tmp_path / "carried"
    in_process(experiment(carried, tiny_gpt2, owners_data, {"name": "tenseal"}, rounds=3, eval_in_train=True))
    assert sent - setup == {"train": 9, "evaluate": 3, "query.evalsum": 4}  # the key set-up's queries aside
    assert_nothing_half_written(carried)
    a, c = rows(apart), rows(carried)
    assert [r["round"] for r in c] == [0, 1, 2, 3]
    assert all(r["evaluated"] == ["client_0", "client_1", "client_2"] for r in c)
    assert [r["eval_loss"] for r in c] == pytest.approx([r["eval_loss"] for r in a], rel=1e-5)
    assert [r["clients"] for r in c] == [r["clients"] for r in a]
    # apart, round r's evaluate hands round r's global back; carried, round r+1's train does (the last round's
    # evaluate its own): the server never holds more than one round pending
    assert [held(apart, r) for r in (1, 2, 3)] == [(1, "client_0", 0), (2, "client_0", 0), (3, "client_0", 0)]
    assert [held(carried, r) for r in (1, 2, 3)] == [(0, None, 1), (1, "client_0", 1), (3, "client_0", 0)]
    # a train reply's update bytes are its update's; what rode along counts in its bytes up (client_0 sends
    # the re-encrypted global: over 4 bytes a value more than the others)
    for ra, rc in zip(a[1:], c[1:]):
        assert all(abs(rc["per_client"][w]["bytes_update_up"] - o["bytes_update_up"]) < 200
                   for w, o in ra["per_client"].items())
    assert c[2]["per_client"]["client_0"]["bytes_up"] > c[2]["per_client"]["client_1"]["bytes_up"] + 4 * 16384
    assert_within_bfv_rounding(carried, apart)


def assert_within_bfv_rounding(out, reference):
    """Every owner's final adapter is the same, and the reference's within BFV's rounding: each owner's
    update is rounded to the fixed-point step and the re-encrypted global to 2^-23 of its largest value,
    and Adam's first steps carry that on (measured here: max 1.9e-3 after 3 rounds, the same run)."""
    adapters = [owner_adapter(out, k) for k in range(3)]
    assert all(max(float(abs(a[n] - adapters[0][n]).max()) for n in a) == 0.0 for a in adapters)
    want = owner_adapter(reference, 0)
    diff = np.concatenate([np.abs(adapters[0][n] - want[n]).ravel() for n in sorted(want)])
    assert diff.mean() < 2e-4 and diff.max() < 1e-2, (diff.mean(), diff.max())


def test_tenseal_with_eval_in_train_survives_kills_before_and_after_a_checkpoint(tmp_path, tiny_gpt2, owners_data,
                                                                                tenseal_apart):
    """Killed before round 2's checkpoint (round 1's evaluation and re-encrypted global already taken in
    from round 2's train, round 1's held-out sum already revealed), then after it (round 2's row without
    its evaluation, the checkpoint holding round 1's re-encrypted global and round 2 pending). Resumed,
    round 2 runs again without asking for round 1's evaluation again (the owner would refuse to reveal
    it twice), round 3 carries round 2's: every row once with its held-out loss, no re-keying, every
    owner's final adapter the uninterrupted run's within BFV's rounding."""
    from harness import checkpoints, killed, rounds_logged

    out = tmp_path / "run"
    run = experiment(out, tiny_gpt2, owners_data, {"name": "tenseal"}, rounds=3, eval_in_train=True)
    killed(run, "before-checkpoint:2")
    assert rounds_logged(out) == [0, 1, 2] and checkpoints(out) == [1]
    assert [r.get("eval_loss") is not None for r in rows(out)] == [True, True, False]
    killed({**run, "resume": True}, "after-checkpoint:2")
    assert rounds_logged(out) == [0, 1, 2] and checkpoints(out) == [1, 2]
    assert [r.get("eval_loss") is not None for r in rows(out)] == [True, True, False]
    in_process({**run, "resume": True})
    assert rounds_logged(out) == [0, 1, 2, 3] and checkpoints(out) == [1, 2, 3]
    assert_nothing_half_written(out)
    apart, _ = tenseal_apart
    assert all(r["evaluated"] == ["client_0", "client_1", "client_2"] for r in rows(out))
    assert [r["eval_loss"] for r in rows(out)] == pytest.approx([r["eval_loss"] for r in rows(apart)], rel=1e-4)
    assert held(out, 3) == (3, "client_0", 0)
    assert_within_bfv_rounding(out, apart)
