"""A malicious coordinator attacking ``tenseal``'s verifier committee THROUGH the round loop
(``server/committee_exchange.py``, the owners' real ClientApp, a grid in memory: tests/faults/harness.py).

Each test runs a tiny federation (3 owners, committee of 2) whose coordinator is patched to attack, and
checks what owners answer: the refusal code (``bad-global``, ``check=committee-*``; ``policy``, its rule)
that leaves them, and that a round an owner refuses never reaches its data or its ε ledger.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))  # the in-memory federation

from harness import LocalGrid, experiment, in_process  # noqa: E402

from flwr.app import RecordDict  # noqa: E402

from fedveil.core import records, wire  # noqa: E402
from fedveil.core.errors import UserError  # noqa: E402
from fedveil.privacy.policy import OwnerPolicy, write_policy  # noqa: E402
from fedveil.privacy.secagg.tenseal import committee, committee_round, global_codec  # noqa: E402
from fedveil.server import committee_exchange, prepare  # noqa: E402

pytestmark = [pytest.mark.adversary, pytest.mark.slow]

OWNERS = ["client_0", "client_1", "client_2"]
DP = {"name": "sample_level", "target_epsilon": 8.0, "accountant": "rdp"}


@pytest.fixture(scope="module")
def owners_data(tmp_path_factory):
    from fedveil.task.demo_data import write_demo_data

    return [str(d) for d in write_demo_data(tmp_path_factory.mktemp("committee-data"), 3, 60, seed=0)]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def run(tmp_path, model, data, rounds=2, **extra):
    values = experiment(tmp_path / "run", model, data, {"name": "tenseal", "download": "committee"}, rounds=rounds,
                        **extra)
    return tmp_path / "run", values


def stopped(values) -> str:
    """The federation, which must stop because no owner trained; its one line."""
    with pytest.raises(UserError, match="no owner trained") as err:
        in_process(values)
    return str(err.value)


def test_a_sum_the_coordinator_forged_is_refused_by_every_owner_outside_the_committee(tmp_path, tiny_gpt2, owners_data,
                                                                                     monkeypatch):
    """Round 1's certificate holds the members' signatures over the true sum; the coordinator keeps another
    sum (round 1 without one owner's update) beside it. The owner outside the committee refuses round 2's
    train message; the members open round 1 from the sum each computed (they are sent the certificate alone),
    so the forged sum never reaches them and round 2 goes on with them."""
    certify = committee_round.certify

    def forged(server, payloads, cert, *signed):
        true = committee.certified_of(certify(server, payloads, cert, *signed))
        fewer = server.combine(dict(sorted(payloads.items())[:-1])).payload.blobs["ciphertext"]
        return committee.certified_round(true[0], fewer, true[2])

    monkeypatch.setattr(committee_round, "certify", forged)
    out, values = run(tmp_path, tiny_gpt2, owners_data)
    in_process(values)
    second = rows(out)[-1]
    from safetensors.numpy import load_file
    _, kept = global_codec.from_arrays(load_file(out / "checkpoints" / "round_0001.safetensors"))
    members = set(committee.certified_of(kept[0])[2].committee)
    assert second["round"] == 2 and set(second["clients"]) == members and len(members) == 2
    assert len(second["excluded"]) == 1  # an error reply names no owner: its node (node_100 is client_0's)
    assert all("bad-global" in why and "check=committee-sum" in why for why in second["excluded"].values())


def test_a_committee_the_coordinator_named_is_refused_and_the_round_falls_back_to_every(
        tmp_path, tiny_gpt2, owners_data, monkeypatch, capsys):
    """The coordinator drafts its own committee (not the one the revealed nonces derive): each member asked
    refuses to sign (``committee-choice``), the round keeps every signed update, the run goes on."""
    draft = committee_round.draft

    def chosen(server, server_round, contributions, reveals, checked):
        honest = draft(server, server_round, contributions, reveals, checked)
        pick = tuple(o for o in OWNERS if o not in honest.committee) + (honest.committee[0],)
        return committee.Certificate(server_round, contributions, reveals, tuple(sorted(pick)), {}, checked)

    monkeypatch.setattr(committee_round, "draft", chosen)
    out, values = run(tmp_path, tiny_gpt2, owners_data, rounds=1)
    in_process(values)
    said = capsys.readouterr().out
    assert "download form 'committee' not used" in said and "check=committee-choice" in said
    assert rows(out)[-1]["clients"] == OWNERS  # the round went on, in form every
    from safetensors.numpy import load_file
    _, pending = global_codec.from_arrays(load_file(out / "checkpoints" / "round_0001.safetensors"))
    assert pending == [] or committee.certified_of(pending[0]) is None  # no certified round was kept


def test_two_owners_shown_two_sums_cannot_both_hold_the_committees_signatures(tmp_path, tiny_gpt2, owners_data,
                                                                             monkeypatch):
    """After the committee certified round 1's sum, the coordinator asks the members to sign a second sum for
    the round (one update swapped for another owner's): they refuse. It then shows client_2 that second sum
    under the first certificate: client_2 refuses it (``committee-sum``); the others open the signed one."""
    certify, asked = committee_round.certify, {}

    def equivocating(server, payloads, cert, *signed):
        blob = certify(server, payloads, cert, *signed)
        swapped = dict(payloads)
        first, second = sorted(payloads)[:2]
        swapped[first] = payloads[second]
        fed = asked["fed"]
        shown = {wire.COMMITTEE_UPDATES: committee_round.round_updates(swapped, cert.round),
                 wire.COMMITTEE_DRAFT: cert.encode()}
        with pytest.raises(UserError) as err:
            committee_exchange.ask(fed, cert.round, wire.QUERY_ATTEST, {m: shown for m in cert.committee},
                                   {o: n for n, o in fed.labels.items()}, (wire.ATTESTATION,),
                                   committee_exchange.NOTHING)
        asked["refusal"] = str(err.value)
        other = server.combine(dict(sorted(swapped.items()))).payload.blobs["ciphertext"]
        asked["second"] = committee.certified_round(cert.round, other, committee.certified_of(blob)[2])
        return blob

    settle = committee_exchange.settle

    def keep_fed(fed, *args):
        asked["fed"] = fed
        return settle(fed, *args)

    push = LocalGrid.push_messages

    def show_client_2_the_second(self, messages):
        messages = list(messages)
        for m in messages:
            arrays = records.record_arrays(m.content.array_records[wire.GLOBAL]) if wire.GLOBAL in m.content else {}
            if m.metadata.message_type == "train" and self.nodes[m.metadata.dst_node_id] == 2 and "second" in asked \
                    and any(k.startswith(global_codec.PENDING) for k in arrays):
                base, _ = global_codec.from_arrays(arrays)  # a content of its own (the others' is shared)
                m.content = RecordDict({**dict(m.content.items()), wire.GLOBAL: records.arrays_record(
                    global_codec.to_arrays(base, [asked["second"]]))})
        return push(self, messages)

    monkeypatch.setattr(committee_round, "certify", equivocating)
    monkeypatch.setattr(committee_exchange, "settle", keep_fed)
    monkeypatch.setattr(LocalGrid, "push_messages", show_client_2_the_second)
    out, values = run(tmp_path, tiny_gpt2, owners_data)
    in_process(values)
    assert "did not answer" in asked["refusal"] and "bad-global" in asked["refusal"]  # no second signed sum
    second = rows(out)[2]
    assert second["clients"] == ["client_0", "client_1"]
    assert second["excluded"] == {"node_102": "owner failed: bad-global check=committee-sum"}


@pytest.mark.parametrize("download, policy, rule", [
    ("sum", OwnerPolicy(), "malicious_owners"),  # the owner holds that owners may poison: no sum alone
    ("committee", OwnerPolicy(min_committee_size=3), "min_committee_size"),  # the run's committee_size is 2
], ids=["sum-alone", "committee-below-the-floor"])
def test_an_owner_refuses_a_download_form_its_policy_does_not_accept_before_training(
        download, policy, rule, tmp_path, tiny_gpt2, owners_data, monkeypatch):
    """The coordinator's run config names a form (or a committee size) the owner's own policy refuses:
    each owner refuses round 1 with the policy's code before its data is read or its ε ledger opened."""
    monkeypatch.setattr(prepare, "write_policy", lambda path, _: write_policy(path, policy))  # the owners' own
    out, values = run(tmp_path, tiny_gpt2, owners_data, rounds=1, dp=DP)
    values["aggregation"]["download"] = download
    values["owner_policy"] = {"malicious_owners": False}  # what the coordinator says of its owners: not theirs
    stopped(values)
    first = rows(out)[-1]
    assert first["round"] == 1 and len(first["excluded"]) == 3
    assert all(f"policy rule={rule}" in why for why in first["excluded"].values())
    assert not list(out.glob("clients/*/privacy_ledger.json"))  # no ε reserved, no ledger opened
