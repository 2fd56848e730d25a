"""Signed results (privacy/provenance.py, ``fedveil verify-adapter``): owners sign the global they
hold; the check passes on what the server writes from that global and names each thing that fails."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.configs.schema import from_dict, run_key
from fedveil.core import wire
from fedveil.privacy import provenance
from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster, write_signed_roster
from fedveil.server import cli
from fedveil.server import signatures
from fedveil.task.model import get_adapter, load_lora_skeleton, set_adapter

OWNERS = ("client_0", "client_1", "client_2")
SIGN = {wire.SIGN_ADAPTER: True}


@pytest.fixture(scope="module")
def signed(tmp_path_factory, tiny_gpt2):
    """Three owners that each hold the same global (trained rounds [1, 2]), their bundles, the server's
    adapter written from that global, and the pinned roster."""
    root = tmp_path_factory.mktemp("provenance")
    cfg = from_dict({"seed": 3, "rounds": 2, "num_clients": 3, "output_dir": str(root / "run"),
                     "aggregation": {"name": "plain"}, "dp": {"name": "off"}, "model": {"path": str(tiny_gpt2)}})
    pin_roster({o: root / o for o in OWNERS}, OWNERS[0])
    owner = Owner(cfg, OwnerIdentity(OWNERS[0], str(root / "data"), str(root / OWNERS[0])))
    vector = owner.initial + np.float32(0.01)  # a global after some rounds: not the starting adapter
    bundles = {}
    for o in OWNERS:
        one = Owner(cfg, OwnerIdentity(o, str(root / "data"), str(root / o)))
        one.runs.note_trained(1)
        one.runs.note_trained(2)
        bundles[o] = one.sign_final_adapter(vector, SIGN)[wire.ADAPTER_STATEMENT]
    # the server writes the final adapter from the same vector as server/federation.py:save_adapter does
    model = load_lora_skeleton(cfg.model, seed=cfg.seed)
    set_adapter(model, owner.layout.unflatten(vector))
    model.save_pretrained(root / "run" / "final_adapter")
    assert np.array_equal(owner.layout.flatten(get_adapter(model)), vector)
    return {"root": root, "cfg": cfg, "run": run_key(cfg), "bundles": bundles,
            "adapter": root / "run" / "final_adapter", "roster": root / OWNERS[0] / "roster.json", "owner": owner,
            "vector": vector}


def case(signed, tmp_path, bundles=None):
    """A copy of the signed adapter with its bundles in signatures/, for one test to change."""
    adapter = tmp_path / "final_adapter"
    shutil.copytree(signed["adapter"], adapter)
    for name, raw in (bundles if bundles is not None else signed["bundles"]).items():
        provenance.write_bundle(adapter, name, raw)
    return adapter


def verify(adapter, signed, *extra) -> tuple[int, str]:
    return cli.main(["verify-adapter", str(adapter), "--roster", str(signed["roster"]), *extra])


def test_every_owner_signed_what_the_server_wrote(signed, tmp_path, capsys):
    adapter = case(signed, tmp_path)
    assert verify(adapter, signed) == 0
    out = capsys.readouterr().out
    assert "signed by 3 rostered owners (client_0, client_1, client_2); 3 of them trained" in out
    statement = json.loads(signed["bundles"]["client_1"])["statement"]
    assert statement["run"] == signed["run"] and statement["rounds_trained"] == [1, 2]
    assert statement["after_round"] == 0  # the owners here evaluated no round: the fixture's Owner is at round 0
    assert statement["adapter"] == provenance.adapter_digest(adapter)


def test_a_changed_byte_in_the_adapter_is_named(signed, tmp_path, capsys):
    adapter = case(signed, tmp_path)
    weights = adapter / provenance.WEIGHTS_FILE
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01  # one bit of the last tensor's data
    weights.write_bytes(bytes(raw))
    assert verify(adapter, signed) == 1
    err = capsys.readouterr().err
    assert err.count("signed another adapter: the tensors") == 3 and "client_0" in err


def test_a_changed_rank_in_the_config_is_named_but_a_local_path_is_not(signed, tmp_path, capsys):
    adapter = case(signed, tmp_path)
    config = json.loads((adapter / provenance.CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = "/another/host/models/gpt2"  # differs between hosts: not signed
    config["target_modules"] = list(reversed(config["target_modules"]))
    (adapter / provenance.CONFIG_FILE).write_text(json.dumps(config))
    assert verify(adapter, signed) == 0
    config["lora_alpha"] = config["lora_alpha"] * 2
    (adapter / provenance.CONFIG_FILE).write_text(json.dumps(config))
    assert verify(adapter, signed) == 1
    assert "signed another adapter: the config" in capsys.readouterr().err


def test_a_signature_by_a_key_not_on_the_roster_is_named(signed, tmp_path, capsys):
    stranger = OwnerKeys("client_1", str(tmp_path / "stranger"))
    pin_roster({"client_1": tmp_path / "stranger"}, "client_1")  # its own roster: its key is on no other
    forged = provenance.sign_adapter(stranger, signed["adapter"], signed["run"], [1, 2])
    adapter = case(signed, tmp_path, {**signed["bundles"], "client_1": forged})
    assert verify(adapter, signed) == 1
    assert "client_1: signed by key" in (err := capsys.readouterr().err) and "a key not on the roster" in err


def test_an_owners_statement_for_another_run_is_named(signed, tmp_path, capsys):
    keys = OwnerKeys("client_2", str(signed["root"] / "client_2"))
    other = provenance.sign_adapter(keys, signed["adapter"], signed["run"] + "-other", [1])
    adapter = case(signed, tmp_path, {**signed["bundles"], "client_2": other})
    assert verify(adapter, signed) == 1
    assert "client_2: its statement is for another run" in capsys.readouterr().err
    assert verify(adapter, signed, "--run", signed["run"] + "-other") == 1  # then the other two are named
    assert capsys.readouterr().err.count("is for another run") == 2


def test_min_owners_counts_the_owners_that_trained_and_signed(signed, tmp_path, capsys):
    two = {o: b for o, b in signed["bundles"].items() if o != "client_2"}
    adapter = case(signed, tmp_path, two)
    assert verify(adapter, signed) == 1  # by default every rostered owner signs
    assert "no valid statement from rostered owner(s) ['client_2']" in capsys.readouterr().err
    assert verify(adapter, signed, "--min-owners", "2") == 0
    assert verify(adapter, signed, "--min-owners", "3") == 1
    assert "2 owners that trained signed this adapter; --min-owners 3 asked" in capsys.readouterr().err


def test_the_coordinator_claim_is_reported_as_its_own(signed, tmp_path, capsys):
    adapter = case(signed, tmp_path)
    claim = provenance.sign_chain_head(signed["run"], "ab" * 32, 2, tmp_path / "coordinator.key")
    provenance.write_bundle(adapter, provenance.COORDINATOR, claim)
    assert verify(adapter, signed) == 0
    out = capsys.readouterr().out
    assert f"round chain head {'ab' * 32} after 2 rounds" in out and "owners cannot check it" in out
    assert json.loads(claim)["statement"]["note"] == provenance.CLAIM_NOTE


def test_an_owner_not_asked_signs_nothing_and_one_without_a_roster_says_why(signed, tmp_path, capsys):
    owner = signed["owner"]
    assert owner.sign_final_adapter(signed["vector"], {}) == {}
    lone = Owner(signed["cfg"], OwnerIdentity("client_9", str(tmp_path / "data"), str(tmp_path / "client_9")))
    assert lone.sign_final_adapter(signed["vector"], SIGN) == {}
    assert "client_9: final adapter not signed: no pinned roster" in capsys.readouterr().out  # its console


def test_bad_input_is_one_line_and_a_non_zero_exit(signed, tmp_path, capsys):
    assert verify(tmp_path / "nowhere", signed) == 2
    assert verify(signed["adapter"], signed, "--signatures", str(tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("fedveil: error: ") for line in err)
    assert "no signed bundles" in err[1]


def test_the_server_keeps_owner_bundles_and_its_claim_survives_a_key_it_cannot_keep(signed, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.setenv("FEDVEIL_COORDINATOR_KEY", "/proc/no-such-dir/coordinator.key")
    assert signatures.claim_chain_head(tmp_path, signed["cfg"], "cd" * 32) is None
    assert "set FEDVEIL_COORDINATOR_KEY to a writable path" in capsys.readouterr().out
    monkeypatch.setenv("FEDVEIL_COORDINATOR_KEY", str(tmp_path / "host" / "coordinator.key"))
    written = signatures.claim_chain_head(tmp_path, signed["cfg"], "cd" * 32)
    assert written == tmp_path / "signatures" / "coordinator.json"
    assert (tmp_path / "host" / "coordinator.key").stat().st_mode & 0o777 == 0o600
    assert signatures.sign_request(signed["cfg"], 2) == {wire.SIGN_ADAPTER: True}
    assert signatures.sign_request(signed["cfg"], 1) == {}


def test_the_operator_signed_roster_gives_the_same_verdict(signed, tmp_path):
    """crypten's owner-roster.json (id -> Ed25519 key, operator-signed) names the same keys: same digest."""
    owners = {o: OwnerKeys(o, str(signed["root"] / o)).member().verify_key for o in OWNERS}
    path, _ = write_signed_roster(tmp_path / "pki", owners)
    adapter = case(signed, tmp_path)
    assert cli.main(["verify-adapter", str(adapter), "--roster", str(path)]) == 0
    assert provenance.roster_keys_digest(provenance.load_roster_keys(path)) == provenance.roster_keys_digest(owners)
    fewer, _ = write_signed_roster(tmp_path / "pki2", {o: k for o, k in owners.items() if o != "client_2"})
    assert cli.main(["verify-adapter", str(adapter), "--roster", str(fewer)]) == 1  # client_2 is not on it


def test_with_the_operators_key_only_the_roster_it_signed_is_read(signed, tmp_path, capsys):
    """--roster-key: a roster the operator signed passes; one signed by another key, or edited after signing
    (a coordinator adding its own key), is refused in one line before any statement is read."""
    owners = {o: OwnerKeys(o, str(signed["root"] / o)).member().verify_key for o in OWNERS}
    path, key = write_signed_roster(tmp_path / "pki", owners)
    adapter = case(signed, tmp_path)
    assert cli.main(["verify-adapter", str(adapter), "--roster", str(path), "--roster-key", key.hex()]) == 0
    assert cli.main(["verify-adapter", str(adapter), "--roster", str(path),
                     "--roster-key", str(tmp_path / "pki" / "roster-operator.pub")]) == 0
    _, other = write_signed_roster(tmp_path / "pki2", owners)
    capsys.readouterr()
    assert cli.main(["verify-adapter", str(adapter), "--roster", str(path), "--roster-key", other.hex()]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    edited = json.loads(path.read_text())
    edited["owners"]["client_9"] = "ab" * 32
    path.write_text(json.dumps(edited))
    assert cli.main(["verify-adapter", str(adapter), "--roster", str(path), "--roster-key", key.hex()]) == 2
