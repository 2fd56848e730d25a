"""The owner checks every input before its data is read or its ledger opened, fails closed on a
missing policy, and under DP evaluates a fixed, public amount of work."""

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedveil.client import owner as owner_module
from fedveil.client.app import app
from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.client.release import ERROR_CODES
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.privacy.policy import DP_EVAL_EXAMPLES

DP = {"name": "sample_level", "target_epsilon": 8.0, "delta": 1e-5, "sample_rate": 0.25, "accountant": "rdp"}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def data_dir(path, n):
    path.mkdir(parents=True)
    rows = [{"prompt": f"Q{i}: {i} plus {i}?", "completion": f" {2 * i}."} for i in range(n)]
    (path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def config(tmp_path, tiny_gpt2):
    return from_dict({"seed": 3, "rounds": 2, "num_clients": 1, "output_dir": str(tmp_path / "run"),
                      "model": {"path": str(tiny_gpt2)}, "data": {"max_length": 32}, "train": {"local_steps": 1},
                      "aggregation": {"name": "plain"}, "dp": DP})


def test_under_dp_evaluation_runs_a_fixed_number_of_padded_examples_whatever_the_data(tmp_path, tiny_gpt2,
                                                                                     monkeypatch):
    seen = []
    real = owner_module.evaluate

    def spy(model, examples, *args):
        seen.append([len(e["input_ids"]) for e in examples])
        return real(model, examples, *args)

    monkeypatch.setattr(owner_module, "evaluate", spy)
    cfg = config(tmp_path, tiny_gpt2)
    for n in (12, 60):
        owner = Owner(cfg, OwnerIdentity("client_0", str(data_dir(tmp_path / f"d{n}", n)), str(tmp_path / f"s{n}")))
        assert owner.evaluate(owner.initial) == {wire.NUM_EXAMPLES: 1}
    assert seen[0] == seen[1] == [32] * DP_EVAL_EXAMPLES


def message(op, cfg, glob, server_round=1, digest=None):
    content = RecordDict({wire.CONFIG: ConfigRecord({**to_run_config(cfg), wire.ROUND: server_round,
                                                     wire.LAYOUT_DIGEST: digest or ""}),
                          wire.GLOBAL: ArrayRecord({wire.CLEAR_GLOBAL: Array(glob)})})
    m = Message(content=content, message_type=op, dst_node_id=1)
    m.metadata.__dict__["_message_id"] = m.object_id
    return m


@pytest.mark.parametrize("bad", ["nan", "huge", "float64", "missing policy"])
def test_a_bad_input_is_refused_before_the_data_is_read_or_the_ledger_opened(tmp_path, tiny_gpt2, monkeypatch, bad):
    cfg = config(tmp_path, tiny_gpt2)
    data, state = data_dir(tmp_path / "d", 12), tmp_path / "state"
    start = Owner(cfg, OwnerIdentity("client_0", str(data), str(tmp_path / "scratch")))

    def no_data(*args):
        raise AssertionError("the owner read its data")

    monkeypatch.setattr(owner_module, "_owner_data", no_data)
    glob = {"nan": np.full(start.layout.size, np.nan, np.float32), "huge": np.full(start.layout.size, 1e30, np.float32),
            "float64": start.initial.astype(np.float64), "missing policy": start.initial}[bad]
    node = {"data-dir": str(data), "state-dir": str(state), "client-id": "client_0"}
    if bad == "missing policy":
        node["policy"] = str(tmp_path / "policy.json")  # named, not there: the owner stops
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})
    reply = app(message=message("train", cfg, glob, digest=start.layout.digest), context=context)
    code = "config" if bad == "missing policy" else "bad-global"
    assert reply.has_error() and reply.error.code == ERROR_CODES[code]
    assert not (state / "privacy_ledger.json").exists()
