"""The generic owner path (``client/operations.py:round_step``) calls the backend's owner-side hooks
(``OwnerSide.after_evaluate``, ``writes_final_adapter``) and knows no backend's per-round field."""

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import fedveil.client as client_package
from fedveil.client import operations
from fedveil.client import owner as owner_module
from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.client.protocol import EVALUATE, TRAIN, Instruction
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.core.payload import Protected, without_eval_pair
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.plain import PlainBackend
from fedveil.privacy.secagg.tenseal import backend as tenseal_backend

# what only a backend (tenseal) and its holder of the global read or write
BACKEND_FIELDS = ("REENCRYPT_BY", "FINAL_ADAPTER", "ENCRYPTED_GLOBAL", "GLOBAL_SIGNATURE")
HANDED_OVER = {"some-backend-field": "client_0", "another": True}  # opaque to the generic path


class Recording(PlainBackend):
    """The plain owner side, with hooks that record their calls and answer as told."""

    def __init__(self, sent_back: Protected | None, final: bool) -> None:
        super().__init__(None, None)
        self.sent_back, self.final, self.calls = sent_back, final, []

    def after_evaluate(self, global_vector, per_round, owner_id, after_round):
        self.calls.append(("after_evaluate", np.array(global_vector), dict(per_round), owner_id, after_round))
        return self.sent_back

    def writes_final_adapter(self, per_round):
        self.calls.append(("writes_final_adapter", dict(per_round)))
        return self.final


@pytest.fixture
def owner_setup(tmp_path, tiny_gpt2):
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"prompt": f"Q{i}: {i} plus {i}?", "completion": f" {2 * i}."} for i in range(16)]
    (data / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict({"seed": 3, "rounds": 2, "num_clients": 1, "output_dir": str(tmp_path / "run"),
                     "model": {"path": str(tiny_gpt2)}, "data": {"max_length": 32}, "train": {"local_steps": 1},
                     "aggregation": {"name": "plain"}, "dp": {"name": "off"}})
    identity = OwnerIdentity("client_0", str(data), str(tmp_path / "state"))
    start = Owner(cfg, OwnerIdentity("client_0", str(data), str(tmp_path / "scratch")))
    glob = (start.initial + np.float32(0.01)).astype(np.float32)
    return cfg, identity, start.layout.digest, glob


def instruction(op, cfg, digest, glob, server_round=1, extra=None) -> Instruction:
    return Instruction(op, to_run_config(cfg), {wire.ROUND: server_round, wire.LAYOUT_DIGEST: digest, **(extra or {})},
                       {wire.CLEAR_GLOBAL: glob})


def with_owner_side(monkeypatch, side) -> None:
    spec = dataclasses.replace(backend_spec("plain"), owner=lambda *args, **kwargs: side)
    monkeypatch.setattr(owner_module, "backend_spec", lambda name: spec)


@pytest.mark.parametrize("final", [False, True])
def test_evaluate_calls_the_owner_side_hooks_and_sends_back_what_they_return(owner_setup, monkeypatch, final):
    cfg, identity, digest, glob = owner_setup
    sealed = Protected(blobs={"sealed-global": b"\x01\x02"})
    side = Recording(sealed, final)
    with_owner_side(monkeypatch, side)
    answer = operations.round_step(instruction(EVALUATE, cfg, digest, glob, extra=HANDED_OVER), cfg, identity)
    sent = without_eval_pair(answer.protected)  # without DP a plain owner adds its held-out pair
    assert (sent.arrays, sent.blobs) == (sealed.arrays, sealed.blobs) and wire.EVAL_LOSS in answer.metrics
    (hook, vector, per_round, owner_id, after_round), (final_hook, final_per_round) = side.calls
    assert (hook, owner_id, after_round, final_hook) == ("after_evaluate", "client_0", 1, "writes_final_adapter")
    np.testing.assert_array_equal(vector, glob)  # the global it evaluated (after round 1)
    assert {k: per_round[k] for k in HANDED_OVER} == HANDED_OVER == {k: final_per_round[k] for k in HANDED_OVER}
    adapter = Path(identity.state_dir) / "final_adapter" / "adapter_model.safetensors"
    assert adapter.exists() == final
    if final:  # the global it evaluated, in the owner's own state directory
        written = np.concatenate([v.ravel() for _, v in sorted(load_file(adapter).items())])
        np.testing.assert_allclose(np.sort(written), np.sort(glob), atol=0)


def test_train_calls_no_hook(owner_setup, monkeypatch):
    cfg, identity, digest, glob = owner_setup
    side = Recording(Protected(blobs={"x": b"y"}), True)
    with_owner_side(monkeypatch, side)
    answer = operations.round_step(instruction(TRAIN, cfg, digest, glob, extra=HANDED_OVER), cfg, identity)
    assert side.calls == [] and "delta" in answer.protected.arrays


def test_a_plain_owner_ignores_the_encrypted_global_hand_over(owner_setup):
    """The tenseal hand-over sent to a plain owner: it evaluates, seals nothing and writes no adapter
    (before the hooks it failed with an internal error: it had no ``encrypt_global``)."""
    cfg, identity, digest, glob = owner_setup
    asked = {wire.REENCRYPT_BY: "client_0", wire.FINAL_ADAPTER: True}
    answer = operations.round_step(instruction(EVALUATE, cfg, digest, glob, extra=asked), cfg, identity)
    assert without_eval_pair(answer.protected) is None and wire.EVAL_LOSS in answer.metrics
    assert not (Path(identity.state_dir) / "final_adapter").exists()


def _backend_field_uses(path: Path) -> list[str]:
    """``wire.<field>`` uses of a backend's per-round field, and ``.encrypted``/``.encrypt_global``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute) and (node.attr in BACKEND_FIELDS or node.attr in ("encrypted",
                                                                                            "encrypt_global")):
            found.append(f"{path.name}:{node.lineno} .{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module == "fedveil.core.wire":
            found += [f"{path.name}:{node.lineno} {a.name}" for a in node.names if a.name in BACKEND_FIELDS]
    return found


def test_no_owner_module_reads_a_backends_per_round_field():
    """Paired with the behavioural tests above: the fields live in core/wire.py but only the backend uses them."""
    assert _backend_field_uses(Path(operations.__file__)) == []
    package = Path(client_package.__file__).parent
    assert [use for f in sorted(package.glob("*.py")) for use in _backend_field_uses(f)] == []
    assert _backend_field_uses(Path(tenseal_backend.__file__))  # the check sees them where they are
