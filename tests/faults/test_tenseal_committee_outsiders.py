"""tenseal's verifier committee with a cohort smaller than the federation (``clients_per_round`` below
``num_clients``): owners outside a round's cohort open its certified sum on the full certificate (every
contributor's signed reveal: ``tenseal/committee.py``), so the committee applies in every round, the final
adapter is form ``every``'s bit for bit (BFV), and an owner outside a round's cohort downloads its
certificate and sum, not its updates."""

import json
import random

import pytest
from harness import assert_nothing_half_written, experiment, in_process

pytestmark = [pytest.mark.faults, pytest.mark.slow]

OWNERS = [f"client_{k}" for k in range(4)]


@pytest.fixture(scope="module")
def forms(tmp_path_factory, tiny_gpt2):
    from fedveil.task.demo_data import write_demo_data

    root = tmp_path_factory.mktemp("outsiders")
    data = [str(d) for d in write_demo_data(root / "data", 4, 40, seed=1)]
    runs = {}
    for form in ("every", "committee"):
        values = experiment(root / form, tiny_gpt2, data, {"name": "tenseal", "download": form}, rounds=3,
                            clients_per_round=2)
        random.seed(5)  # the coordinator samples each round's cohort with Python's random: the same in both runs
        in_process(values)
        runs[form] = root / form
    return runs


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def certified(out, server_round):
    """Round ``server_round``'s pending entry in its checkpoint: (contributors, committee) of a certified round."""
    from safetensors.numpy import load_file

    from fedveil.privacy.secagg.tenseal import committee, global_codec

    _, blobs = global_codec.from_arrays(load_file(out / "checkpoints" / f"round_{server_round:04d}.safetensors"))
    cert = committee.certified_of(blobs[-1])[2]
    assert isinstance(cert, committee.Certificate) and set(cert.reveal_signatures) == {
        c.owner for c in cert.contributions}  # the holder keeps the full form (a resume serves every role)
    return tuple(c.owner for c in cert.contributions), cert.committee


def test_owners_outside_the_cohort_open_the_certified_round_and_end_with_form_everys_adapter(forms):
    from safetensors.numpy import load_file

    every, committee = forms["every"], forms["committee"]
    assert_nothing_half_written(committee)
    for k in range(4):  # every owner (each sat out some round) ends with the same final adapter, bit for bit
        a, b = (load_file(out / "clients" / f"client_{k}" / "final_adapter" / "adapter_model.safetensors")
                for out in (every, committee))
        assert sorted(a) == sorted(b) and all((a[n] == b[n]).all() for n in a), k
    ours, theirs = rows(committee), rows(every)
    for key in ("train_loss", "clients", "excluded"):
        assert [r.get(key) for r in ours] == [r.get(key) for r in theirs], key
    # the committee applies in every round: round r's pending entry is certified (rounds 1, 2: the last
    # round's is folded into the base by the final evaluation)
    for r in (1, 2):
        contributors, members = certified(committee, r)
        assert sorted(contributors) == sorted(ours[r]["clients"]) and len(contributors) == 2 and len(members) == 2
    # round 3's train message carries round 2's pending round: the two owners outside round 2's cohort
    # download its certificate and sum (about one ciphertext set), not its two updates
    outside = sorted(set(OWNERS) - set(ours[2]["clients"]))
    trained = ours[3]["clients"]
    assert set(outside) & set(trained)  # (the seed above makes one)
    for who in set(outside) & set(trained):
        down, base = ours[3]["per_client"][who]["bytes_down"], theirs[3]["per_client"][who]["bytes_down"]
        assert down < 0.75 * base, (who, down, base)
    assert all(r["clients"] and not r.get("excluded") for r in ours[1:])
