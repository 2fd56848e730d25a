"""tenseal's download forms run in the round loop (``server/committee_exchange.py``): the same federation
in form ``every``, ``committee`` and ``sum`` gives every owner the same final adapter bit for bit (BFV adds
the same ciphertexts, in owner order) and the same losses; in form ``committee`` an owner outside a round's
committee downloads less than in ``every``; a coordinator killed mid-round resumes."""

import json

import pytest
from harness import assert_nothing_half_written, experiment, in_process

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OWNERS = ["client_0", "client_1", "client_2"]


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def owner_adapter(out, k):
    from safetensors.numpy import load_file

    return load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")


def pending(out, server_round):
    """The pending entries a checkpoint holds: ('certified', committee) / ('sum', ()) / ('every', owners)."""
    from safetensors.numpy import load_file

    from fedveil.privacy.secagg.tenseal import committee, global_codec

    _, blobs = global_codec.from_arrays(load_file(out / "checkpoints" / f"round_{server_round:04d}.safetensors"))
    out = []
    for blob in blobs:
        certified = committee.certified_of(blob)
        if certified is None:
            out.append(("every", tuple(sorted(global_codec.RoundUpdates.decode(blob).signed))))
        else:
            out.append(("certified", certified[2].committee) if certified[2] is not None else ("sum", ()))
    return out


def run(root, model, data, form, rounds=3, **extra):
    out = root / form
    values = experiment(out, model, data, {"name": "tenseal", "download": form}, rounds=rounds, **extra)
    if form == "sum":  # the owners' own view: no owner poisons (else each refuses the sum alone)
        values["owner_policy"] = {"malicious_owners": False}
    in_process(values)
    return out


@pytest.fixture(scope="module")
def forms(tmp_path_factory, tiny_gpt2, owners_data):
    root = tmp_path_factory.mktemp("forms")
    return {form: run(root, tiny_gpt2, owners_data, form) for form in ("every", "committee", "sum")}


def test_committee_and_sum_give_the_every_forms_adapter_and_losses(forms):
    every = forms["every"]
    for form in ("committee", "sum"):
        out = forms[form]
        assert_nothing_half_written(out)
        for k in range(3):
            a, b = owner_adapter(every, k), owner_adapter(out, k)
            assert sorted(a) == sorted(b) and all((a[n] == b[n]).all() for n in a), (form, k)
        for key in ("train_loss", "eval_loss", "clients", "evaluated", "excluded"):
            assert [r.get(key) for r in rows(out)] == [r.get(key) for r in rows(every)], (form, key)
    # what the holder kept each round (eval_in_train: the base re-encrypted a round later, then one pending)
    assert pending(forms["every"], 3) == [] and pending(forms["every"], 2) == [("every", tuple(OWNERS))]
    assert pending(forms["sum"], 1) == [("sum", ())] and pending(forms["sum"], 2) == [("sum", ())]
    kept = [pending(forms["committee"], r) for r in (1, 2)]
    assert [p[0][0] for p in kept] == ["certified", "certified"]
    assert all(len(p[0][1]) == 2 and set(p[0][1]) <= set(OWNERS) for p in kept)


def test_an_owner_outside_the_committee_downloads_less_than_in_every_and_a_member_more(forms):
    every, committee = rows(forms["every"]), rows(forms["committee"])
    members = {r: set(pending(forms["committee"], r)[0][1]) for r in (1, 2)}
    sums = rows(forms["sum"])
    for r in (2, 3):  # round r's train message carries round r-1's pending round
        base = {who: c["bytes_down"] for who, c in every[r]["per_client"].items()}
        assert all(sums[r]["per_client"][w]["bytes_down"] < base[w] for w in OWNERS)  # the sum alone: less
    # round 2: its train message carries round 1's certified sum; its members also download round 2's updates
    down = {who: c["bytes_down"] for who, c in committee[2]["per_client"].items()}
    base = {who: c["bytes_down"] for who, c in every[2]["per_client"].items()}
    outside = set(OWNERS) - members[2]
    assert len(outside) == 1 and all(down[w] < base[w] / 2 for w in outside), (down, base)
    assert all(down[w] > base[w] for w in members[2])
    # the reveal and attest exchanges count in the row: a member of round 1 downloads the round's updates
    first = {who: c["bytes_down"] for who, c in committee[1]["per_client"].items()}
    assert all(first[m] > first[o] + 2 * 16384 for m in members[1] for o in set(OWNERS) - members[1])
    assert all(committee[r]["per_client"][w]["bytes_update_up"] > every[r]["per_client"][w]["bytes_update_up"]
               for r in (1, 2, 3) for w in OWNERS)  # the commitment beside each update
