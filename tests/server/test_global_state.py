"""The holders of the global behind the backend contract: what each hands over to owners with the
evaluate message, whose answer it adopts and who writes the final adapter; and the owner-side hooks
that answer the hand-over (tenseal: re-encrypt when asked; plain and crypten: nothing)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedveil.core import wire
from fedveil.privacy.secagg import backend_spec
from fedveil.privacy.secagg.crypten.backend import CryptenBackend, CryptenConfig
from fedveil.privacy.secagg.plain import PlainBackend
from fedveil.privacy.secagg.tenseal.backend import TensealServer
from fedveil.privacy.secagg.tenseal.config import TensealConfig
from fedveil.privacy.secagg.tenseal.global_codec import EncryptedGlobal
from fedveil.server import federation
from fedveil.server.global_state import ClearGlobal

CFG = TensealConfig(max_owners=3, max_weight=2.0, value_bound=6.0, global_bound=10.0)
SIZE, RUN, OWNERS = 8, "/runs/h#00000001", ("client_0", "client_1", "client_2")
ZEROS = np.zeros(SIZE, np.float32)


@pytest.fixture(scope="module")
def tenseal(tmp_path_factory, tenseal_keyed):
    """Three keyed tenseal owner sides and the server's holder of the encrypted global (as the federation builds it)."""
    keys, made = tenseal_keyed(tmp_path_factory.mktemp("keys"), CFG, RUN, OWNERS)
    sides = {o: backend_spec("tenseal").owner(CFG, SIZE, k, {}, run=RUN) for o, k in keys.items()}
    server = TensealServer(CFG, SIZE, public=made.public, run=RUN,
                           signers={o: k.member().verify_key for o, k in keys.items()})
    return sides, lambda: backend_spec("tenseal").held_global(server)


def answers(sides, vector, per_round, after_round):
    """What each owner's ``after_evaluate`` sends back (None left out), as federation.evaluate collects it."""
    sent = {o: side.after_evaluate(vector, per_round, o, after_round) for o, side in sides.items()}
    return {o: p for o, p in sent.items() if p is not None}


def test_the_clear_holder_hands_over_nothing_adopts_nothing_and_writes_the_final_adapter(tmp_path):
    state = ClearGlobal(np.arange(4, dtype=np.float32))
    assert state.handover(3, {"client_1": {}}, ["client_1"], last=True) == {}
    assert state.adopt({"client_1": None}) is None
    saved = []
    assert state.final_adapter(tmp_path, lambda vector, folder: saved.append((vector.tolist(), folder))) == str(
        tmp_path / "final_adapter")
    assert saved == [([0.0, 1.0, 2.0, 3.0], tmp_path / "final_adapter")]


def test_the_encrypted_holder_asks_one_owner_and_the_last_round_and_never_writes_an_adapter(tmp_path):
    state = EncryptedGlobal()
    accepted = {"client_2": {}, "client_1": {}}
    assert state.handover(2, accepted, list(OWNERS), last=False) == {wire.REENCRYPT_BY: "client_1",
                                                                        wire.FINAL_ADAPTER: False}
    assert state.handover(4, {}, ["client_2", "client_0"], last=True) == {wire.REENCRYPT_BY: "client_0",
                                                                           wire.FINAL_ADAPTER: True}
    final = state.final_adapter(tmp_path, lambda vector, folder: pytest.fail("the server wrote a plaintext adapter"))
    assert final == "written by each data owner into its state directory (clients/<id>/final_adapter/)"
    assert not (tmp_path / "final_adapter").exists()


@pytest.mark.parametrize("holder", ["clear", "encrypted"])
def test_federation_handover_is_the_holders_with_the_last_round_named(holder):
    state = ClearGlobal(ZEROS) if holder == "clear" else EncryptedGlobal()
    fed = SimpleNamespace(state=state, owners=["client_0", "client_1"], cfg=SimpleNamespace(rounds=3))
    outcome = SimpleNamespace(accepted={"client_1": {}})
    got = [federation.handover(fed, server_round, outcome) for server_round in (1, 3)]
    signed = {wire.SIGN_ADAPTER: True}  # the last round's owners also sign the global (server/signatures.py)
    if holder == "clear":
        assert got == [{}, signed]
    else:
        assert got == [{wire.REENCRYPT_BY: "client_1", wire.FINAL_ADAPTER: False},
                       {wire.REENCRYPT_BY: "client_1", wire.FINAL_ADAPTER: True, **signed}]


def test_the_owner_asked_at_the_hand_over_re_encrypts_and_the_holder_adopts_only_its_global(tenseal):
    sides, holder = tenseal
    state, vector = holder(), np.linspace(-1, 1, SIZE).astype(np.float32)
    per_round = state.handover(1, {"client_2": {}, "client_1": {}}, list(OWNERS), last=False)
    sent = answers(sides, vector, per_round, 1)
    assert sorted(sent) == ["client_1"]  # only the owner asked
    assert not any(side.writes_final_adapter(per_round) for side in sides.values())
    # another owner, told by a forged hand-over that it was asked, is not adopted: the holder asked client_1
    rogue = answers({"client_2": sides["client_2"]}, np.full(SIZE, 9.0, np.float32),
                    {wire.REENCRYPT_BY: "client_2"}, 1)
    assert state.adopt(rogue) is None and state.base is None
    assert state.adopt({**rogue, **sent}) is None and state.base.signer == "client_1" and state.base.round == 1
    np.testing.assert_allclose(sides["client_0"].open_global(state.arrays(), ZEROS, 1), vector, atol=1e-4)
    # the asked owner's global for another round than the hand-over's is refused
    state.handover(2, {"client_1": {}}, list(OWNERS), last=True)
    refused = state.adopt(answers(sides, vector, {wire.REENCRYPT_BY: "client_1"}, 1))
    assert refused and "not adopted" in refused and state.base.round == 1
    assert all(side.writes_final_adapter({wire.REENCRYPT_BY: "client_1", wire.FINAL_ADAPTER: True})
               for side in sides.values())


@pytest.mark.parametrize("side", [PlainBackend(None, SIZE), CryptenBackend(CryptenConfig(), SIZE)],
                         ids=["plain", "crypten"])
def test_owner_sides_whose_server_holds_the_global_answer_a_hand_over_with_nothing(side):
    asked = {wire.REENCRYPT_BY: "client_0", wire.FINAL_ADAPTER: True}
    assert side.after_evaluate(np.ones(SIZE, np.float32), asked, "client_0", 1) is None
    assert side.writes_final_adapter(asked) is False


def _server_uses(path: Path) -> list[str]:
    text = path.read_text()
    return [f"{path.name}: {word}" for word in ("REENCRYPT_BY", "FINAL_ADAPTER", "ENCRYPTED_GLOBAL",
                                                "GLOBAL_SIGNATURE", ".encrypted", "CKKS") if word in text]


def test_no_server_module_reads_a_backends_per_round_field_or_branches_on_encrypted():
    """Paired with the behavioural tests above (the holders do it); CKKS: errors say *tenseal context*."""
    folder = Path(federation.__file__).parent
    assert [use for f in sorted(folder.glob("*.py")) for use in _server_uses(f)] == []
