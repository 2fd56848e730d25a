"""The coordinator is the attacker: it cannot produce a valid signed bundle for an adapter the owners
did not hold (privacy/provenance.py, ``fedveil verify-adapter``).

It holds everything a coordinator holds after an honest run: the owners' bundles over the real
adapter, the roster (public), its own signing key, and it may write any adapter it likes. Each
forgery below must be refused, naming the owner whose statement fails.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from nacl.signing import SigningKey

from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.configs.schema import from_dict, run_key
from fedveil.core import wire
from fedveil.privacy import provenance
from fedveil.privacy.secagg.identity import OwnerKeys, pin_roster
from fedveil.task.model import load_lora_skeleton, set_adapter

pytestmark = [pytest.mark.adversary]

OWNERS = ("client_0", "client_1")


@pytest.fixture(scope="module")
def honest(tmp_path_factory, tiny_gpt2):
    root = tmp_path_factory.mktemp("forge")
    cfg = from_dict({"seed": 1, "rounds": 1, "num_clients": 2, "output_dir": str(root / "run"),
                     "aggregation": {"name": "plain"}, "dp": {"name": "off"}, "model": {"path": str(tiny_gpt2)}})
    roster = pin_roster({o: root / o for o in OWNERS}, OWNERS[0])
    owners = {o: Owner(cfg, OwnerIdentity(o, str(root / "data"), str(root / o))) for o in OWNERS}
    held = owners[OWNERS[0]].initial + np.float32(0.02)  # the global the owners evaluated and hold
    bundles = {o: owner.sign_final_adapter(held, {wire.SIGN_ADAPTER: True})[wire.ADAPTER_STATEMENT]
               for o, owner in owners.items()}
    model = load_lora_skeleton(cfg.model, seed=cfg.seed)

    def write(vector, folder):  # the coordinator writes whatever adapter it likes
        set_adapter(model, owners[OWNERS[0]].layout.unflatten(vector))
        model.save_pretrained(folder)
        return folder

    return {"root": root, "cfg": cfg, "held": held, "bundles": bundles, "write": write, "run": run_key(cfg),
            "roster": {o: m.verify_key for o, m in roster.owners.items()}}


def check(honest, adapter, bundles):
    return provenance.verify_adapter(adapter, honest["roster"], bundles)


def test_the_honest_bundle_verifies(honest, tmp_path):
    assert check(honest, honest["write"](honest["held"], tmp_path / "a"), honest["bundles"]).ok


def test_the_owners_bundles_do_not_cover_another_adapter(honest, tmp_path):
    """Replayed over an adapter the coordinator made (one value moved by 1e-3)."""
    other = honest["held"].copy()
    other[5] += np.float32(1e-3)
    verdict = check(honest, honest["write"](other, tmp_path / "a"), honest["bundles"])
    assert not verdict.ok and verdict.valid == []
    assert all("signed another adapter: the tensors" in f for f in verdict.failures) and len(verdict.failures) == 2


def test_a_statement_edited_to_the_new_digest_fails_its_signature(honest, tmp_path):
    other = honest["held"] * np.float32(0.5)
    adapter = honest["write"](other, tmp_path / "a")
    forged = {}
    for o, raw in honest["bundles"].items():
        body = json.loads(raw)
        body["statement"]["adapter"] = provenance.adapter_digest(adapter)  # the digest it would need
        forged[o] = json.dumps(body).encode()
    verdict = check(honest, adapter, forged)
    assert not verdict.ok and verdict.valid == []
    assert all("not a valid signed bundle" in f and "not signed by the owner" in f for f in verdict.failures)


def test_statements_signed_with_the_coordinators_own_key_name_a_key_not_on_the_roster(honest, tmp_path):
    adapter = honest["write"](honest["held"] * np.float32(0.5), tmp_path / "a")
    own = SigningKey.generate()  # the coordinator's key (or any key it can make): not the roster's for an owner
    forged = {}
    for o in OWNERS:
        statement = {**json.loads(honest["bundles"][o])["statement"], "adapter": provenance.adapter_digest(adapter)}
        forged[o] = provenance._bundle(statement, own)
    verdict = check(honest, adapter, forged)
    assert not verdict.ok and verdict.valid == []
    assert [f.split(":")[0] for f in verdict.failures] == list(OWNERS)
    assert all("a key not on the roster" in f for f in verdict.failures)


def test_dropping_the_owners_that_did_not_hold_it_leaves_too_few(honest, tmp_path):
    """Without any owner's bundle over its adapter, the coordinator has nothing that counts."""
    adapter = honest["write"](honest["held"] * np.float32(0.5), tmp_path / "a")
    verdict = provenance.verify_adapter(adapter, honest["roster"], {}, min_owners=1)
    assert not verdict.ok and "0 owners that trained signed this adapter" in verdict.failures[0]
    verdict = provenance.verify_adapter(adapter, honest["roster"], {})
    assert not verdict.ok
    assert "no valid statement from rostered owner(s) ['client_0', 'client_1']" in verdict.failures[0]


def test_an_honest_adapter_with_its_config_moved_to_another_host_still_verifies(honest, tmp_path):
    adapter = honest["write"](honest["held"], tmp_path / "a")
    shutil.copytree(adapter, tmp_path / "elsewhere")
    config = json.loads((tmp_path / "elsewhere" / provenance.CONFIG_FILE).read_text())
    config["base_model_name_or_path"] = "/srv/models/base"
    (tmp_path / "elsewhere" / provenance.CONFIG_FILE).write_text(json.dumps(config))
    assert check(honest, tmp_path / "elsewhere", honest["bundles"]).ok


def test_an_earlier_global_the_owners_signed_cannot_pass_for_the_final_one_beside_final_statements(honest, tmp_path):
    """Owners asked to sign in round 1 and again at the end: mixing the two is named."""
    adapter = honest["write"](honest["held"], tmp_path / "a")
    final = {o: json.loads(raw) for o, raw in honest["bundles"].items()}
    keys = OwnerKeys("client_1", str(honest["root"] / "client_1"))
    assert final["client_1"]["statement"]["after_round"] == 0
    early = provenance.sign_adapter(keys, adapter, honest["run"], [], after_round=1)
    verdict = check(honest, adapter, {"client_0": honest["bundles"]["client_0"], "client_1": early})
    assert not verdict.ok and "signed the global after round" in verdict.failures[0]
