"""The owner's release gate (client/release.py), its run record and the policy that fails closed."""

import subprocess
import sys

import numpy as np
import pytest

from fedveil.client.release import (CLEAR_METRICS, DP_METRICS, ERROR_CODES, dp_requested, refusal_from, release)
from fedveil.client.run_record import RunRecord
from fedveil.client.protocol import Answer, WorkerUnavailable
from fedveil.core import wire
from fedveil.core.errors import REFUSAL_CODES, Refusal, UserError
from fedveil.core.payload import Protected
from fedveil.privacy.policy import PolicyViolation, load_policy

EVERYTHING = {wire.NUM_EXAMPLES: 120, wire.TRAIN_STEPS: 2, wire.TRAIN_LOSS: 2.5, wire.EVAL_LOSS: 2.4,
              wire.UPDATE_NORM: 0.3, wire.TRAIN_SECONDS: 1.5, wire.EVAL_SECONDS: 0.2, wire.PROTECT_SECONDS: 0.1,
              wire.REVEAL_SECONDS: 0.01, wire.DP_EPSILON: 1.2, wire.DP_NOISE: 0.9, "eval-tokens": 412}
META = {wire.OWNER_ID: "client_0", wire.LAYOUT_DIGEST: "ab" * 32, "data-dir": "/home/owner/data",
        wire.SEALED_PREFIX + "client_1": b"box"}


def test_under_dp_only_the_dp_record_and_public_sizes_leave():
    out = release(Answer(dict(EVERYTHING), dict(META), Protected(arrays={"delta": np.zeros(3, np.float32)})), True)
    assert out.metrics == {wire.NUM_EXAMPLES: 1.0, wire.TRAIN_STEPS: 2.0, wire.DP_EPSILON: 1.2, wire.DP_NOISE: 0.9}
    assert out.meta == {
        wire.OWNER_ID: "client_0",
        wire.LAYOUT_DIGEST: "ab" * 32,
        wire.SEALED_PREFIX + "client_1": b"box",
    }
    assert set(out.metrics) <= DP_METRICS and not out.is_error


def test_without_dp_the_threat_models_list_leaves_and_nothing_else():
    out = release(Answer(dict(EVERYTHING), dict(META)), False)
    assert set(out.metrics) == set(EVERYTHING) - {"eval-tokens"} and set(out.metrics) <= CLEAR_METRICS
    assert out.metrics[wire.NUM_EXAMPLES] == 120 and "data-dir" not in out.meta


def test_a_non_finite_update_never_leaves():
    out = release(Answer({}, {}, Protected(arrays={"delta": np.array([0.0, np.nan], np.float32)})), True)
    assert out.is_error and out.reason == "internal" and out.protected is None


@pytest.mark.parametrize(
    "exc, code, reason",
    [
        (
            PolicyViolation("max_epsilon", "owner policy max_epsilon=4: the server asked for 8 (120 records)"),
            "policy",
            "policy rule=max_epsilon",
        ),
        (Refusal("bad-global", "|v| up to 1e30", check="bound"), "bad-global", "bad-global check=bound"),
        (Refusal("data", "dp.delta=0.01 is not below 1/n for this owner's 120 records"), "data", "data"),
        (UserError("data.max_length too small for this owner's 120 records"), "config", "config"),
        (RuntimeError("pybind11: excluded owner with 120 records"), "internal", "internal"),
        (KeyboardInterrupt(), "internal", "internal"),
        (
            WorkerUnavailable("the owner worker at /home/owner/state/owner.sock is not running"),
            "unavailable",
            "unavailable",
        ),
    ],
)
def test_failures_leave_as_codes_and_their_lines_stay_on_the_console(exc, code, reason, capsys):
    for dp_on in (True, False):  # refuse with a code, not with data: DP or not
        out = release(exc, dp_on)
        assert (out.error_code, out.reason) == (ERROR_CODES[code], reason)
    assert str(exc) in capsys.readouterr().err


def test_every_refusal_code_has_a_fixed_int_and_travels_back_through_the_relay():
    assert list(ERROR_CODES) == list(REFUSAL_CODES) and len(set(ERROR_CODES.values())) == len(REFUSAL_CODES)
    assert ERROR_CODES["policy"] == 4000 and ERROR_CODES["internal"] == 4000 + len(REFUSAL_CODES) - 1
    back = refusal_from(ERROR_CODES["limit"], "limit limit=max_evaluates_per_round")
    assert back.code == "limit" and back.public == {"limit": "max_evaluates_per_round"}
    assert refusal_from(99, "whatever text").code == "internal"


def test_a_config_that_cannot_say_counts_as_dp():
    assert not dp_requested({"dp.name": "off"})
    assert dp_requested({"dp.name": "sample_level"}) and dp_requested({}) and dp_requested({"dp.name": 0})


def test_a_named_policy_that_is_missing_or_unreadable_fails_closed(tmp_path):
    assert load_policy(tmp_path / "policy.json").require_dp is False  # not named: the defaults
    with pytest.raises(Refusal) as refused:
        load_policy(tmp_path / "missing.json", named=True)
    assert refused.value.code == "config" and refused.value.public == {"key": "policy"}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Refusal, match="unreadable"):
        load_policy(tmp_path / "bad.json", named=True)


def test_the_worker_will_not_start_with_a_named_policy_that_is_missing(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedveil.client.worker", "serve", "--data-dir", str(tmp_path),
                           "--state-dir", str(tmp_path / "state"), "--policy", str(tmp_path / "nope.json")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "state" / "owner.sock").exists()
    (line,) = proc.stderr.strip().splitlines()
    assert "nope.json does not exist" in line


def test_the_run_record_counts_rounds_trained_and_evaluates(tmp_path):
    record = RunRecord(tmp_path, "run#1")
    record.check_round(3, 3)
    for bad in (4, -1):
        with pytest.raises(Refusal, match="past the plan"):
            record.check_round(bad, 3)
    for server_round in (1, 2):
        record.check_train(server_round, 2)
        record.note_trained(server_round)
    record.check_train(2, 2)  # the same round again (a resumed round) is not a new one
    with pytest.raises(Refusal) as refused:
        RunRecord(tmp_path, "run#1").check_train(3, 2)  # read back from disk
    assert refused.value.public == {"limit": "max_rounds"}
    with pytest.raises(Refusal):
        record.check_train(0, None)  # round 0 evaluates the start; nobody trains in it
    for _ in range(2):
        record.take_evaluate(1, 2)
    with pytest.raises(Refusal) as refused:
        RunRecord(tmp_path, "run#1").take_evaluate(1, 2)
    assert refused.value.public == {"limit": "max_evaluates_per_round"}
    RunRecord(tmp_path, "run#2").take_evaluate(1, 2)  # another run has its own record


def test_a_policy_that_pins_max_length_refuses_the_coordinators_probes():
    from fedveil.configs.schema import from_dict
    from fedveil.privacy.policy import OwnerPolicy

    policy = OwnerPolicy(max_length=64)
    policy.check(from_dict({"num_clients": 1, "model": {"path": "m"}, "data": {"max_length": 64},
                           "aggregation": {"name": "plain"}, "dp": {"name": "off"}}), "")
    with pytest.raises(PolicyViolation) as refused:
        policy.check(from_dict({"num_clients": 1, "model": {"path": "m"}, "data": {"max_length": 32},
                               "aggregation": {"name": "plain"}, "dp": {"name": "off"}}), "")
    assert refused.value.public == {"rule": "max_length"}
