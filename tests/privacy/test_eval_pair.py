"""One held-out loss across backends (privacy/secagg/eval_pair.py): token-weighted over owners, summed
inside the backend, never released under DP. tenseal's pair: tests/adversary/test_tenseal_eval_pair_attacks.py;
crypten's (with the parties): tests/adversary/test_crypten_attacks.py."""

import json

import numpy as np
import pytest

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.client.protocol import Answer
from fedveil.client.release import release
from fedveil.configs.schema import from_dict
from fedveil.core import wire
from fedveil.core.payload import (PayloadError, Protected, RoundContext, eval_pair_of, with_eval_pair,
                                  without_eval_pair)
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.crypten.cost import pair_bytes as crypten_pair_bytes
from fedveil.privacy.secagg.eval_pair import as_update, mean_of
from fedveil.privacy.secagg.identity import OwnerKeys
from fedveil.privacy.secagg.plain import EVAL_PAIR_BYTES, PlainBackend
from fedveil.privacy.secagg.sealing import keypair

KNOWN = {"client_0": (2.5, 1200), "client_1": (3.75, 40), "client_2": (1.125, 333)}
EXPECTED = (2.5 * 1200 + 3.75 * 40 + 1.125 * 333) / 1573


def eval_ctx(server_round=1, owner=""):
    return RoundContext(server_round, "L", owner).for_eval_pair()


def test_plain_reveals_the_token_weighted_mean_of_known_pairs():
    backend = PlainBackend(size=16)
    pairs = {o: backend.protect(*as_update(loss, t), eval_ctx(1, o)) for o, (loss, t) in KNOWN.items()}
    assert all(p.nbytes == EVAL_PAIR_BYTES for p in pairs.values())
    revealed = backend.reveal(backend.combine(pairs, eval_ctx()).payload)
    assert mean_of(revealed) == pytest.approx(EXPECTED, rel=1e-15) and revealed.total_weight == 1573
    # not the unweighted mean the secure backends used to show
    assert abs(mean_of(revealed) - np.mean([loss for loss, _ in KNOWN.values()])) > 0.1
    # a pair is one value: an update-sized payload is no pair, and a pair is no update
    with pytest.raises(PayloadError, match="a held-out pair has 1"):
        backend.combine({"x": backend.protect(np.zeros(16), 1.0, eval_ctx())}, eval_ctx())
    with pytest.raises(PayloadError, match="the adapter layout has 16"):
        backend.combine(pairs, RoundContext(1, "L"))


def test_no_tokens_is_no_mean():
    backend = PlainBackend(size=16)
    with pytest.raises(PayloadError, match="no mean"):
        mean_of(backend.reveal(backend.combine({"a": backend.protect(*as_update(1.0, 0), eval_ctx())},
                                               eval_ctx()).payload))


def test_the_pair_rides_beside_the_reply_and_the_gate_cuts_it_under_dp():
    pair = PlainBackend().protect(*as_update(2.0, 10), eval_ctx())
    glob = Protected(blobs={wire.ENCRYPTED_GLOBAL: b"ct", wire.GLOBAL_SIGNATURE: b"sig"})
    reply = Protected(arrays=with_eval_pair(pair).arrays, blobs={**glob.blobs, **with_eval_pair(pair).blobs})
    assert set(reply.arrays) == {"eval-pair.delta", "eval-pair.weight"}
    unwrapped = eval_pair_of(reply)
    assert set(unwrapped.arrays) == {"delta", "weight"} and unwrapped.arrays["weight"][0] == 10
    assert eval_pair_of(glob) is None and without_eval_pair(reply).blobs == glob.blobs
    assert without_eval_pair(with_eval_pair(pair)) is None
    # the release gate: without DP the pair leaves as the owner made it; under DP none of it does
    clear = release(Answer({}, {wire.OWNER_ID: "client_0"}, reply), dp_on=False)
    assert clear.protected is reply
    cut = release(Answer({}, {wire.OWNER_ID: "client_0"}, reply), dp_on=True)
    assert cut.protected.arrays == {} and cut.protected.blobs == glob.blobs
    assert release(Answer({}, {}, with_eval_pair(pair)), dp_on=True).protected is None


def test_crypten_pair_bytes_are_exact(tmp_path):
    parties = [keypair(tmp_path / f"p{i}")[1] for i in range(3)]
    backend = CryptenBackend(CryptenConfig(), 16, party_keys=parties, run="/runs/x#0000abcd",
                             keys=OwnerKeys("client_12", str(tmp_path / "o")))
    for server_round in (0, 7, 123):
        p = backend.protect(*as_update(2.0, 10), RoundContext(server_round, "d" * 64, "client_12").for_eval_pair())
        assert p.nbytes == crypten_pair_bytes(CryptenConfig(), "client_12", "/runs/x#0000abcd", "d" * 64, server_round)
        assert set(p.blobs) == {"share.0", "share.1", "share.2", "bundle"}  # no count in clear: count 1 inside


def _data(path, n):
    path.mkdir(parents=True)
    rows = [{"prompt": f"Q{i}: {i} plus {i}?", "completion": f" {2 * i}."} for i in range(n)]
    (path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_node_id", 0), ("_task_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def test_an_owner_sends_its_pair_without_dp_and_its_clear_loss_only_where_the_server_sees_counts(tmp_path,
                                                                                               tiny_gpt2):
    base = {"seed": 3, "rounds": 2, "num_clients": 1, "output_dir": str(tmp_path / "run"),
            "model": {"path": str(tiny_gpt2)}, "data": {"max_length": 32}, "train": {"local_steps": 1}}
    data = _data(tmp_path / "d", 40)
    plain = Owner(from_dict({**base, "aggregation": {"name": "plain"}, "dp": {"name": "off"}}),
                  OwnerIdentity("client_0", data, str(tmp_path / "s")), {wire.ROUND: 1})
    metrics = plain.evaluate(plain.initial)
    pair = eval_pair_of(plain.held_out_pair)
    tokens = metrics[wire.NUM_EXAMPLES]
    assert tokens == int(tokens) > 0 and pair.arrays["weight"][0] == tokens
    assert pair.arrays["delta"][0] == metrics[wire.EVAL_LOSS]  # the same float64 the owner computed
    dp = {"name": "sample_level", "target_epsilon": 8.0, "delta": 1e-5, "sample_rate": 0.25, "accountant": "rdp"}
    private = Owner(from_dict({**base, "aggregation": {"name": "plain"}, "dp": dp}),
                    OwnerIdentity("client_0", data, str(tmp_path / "s2")), {wire.ROUND: 1})
    assert private.evaluate(private.initial) == {wire.NUM_EXAMPLES: 1} and private.held_out_pair is None
