"""The worker protocol (client/protocol.py): one home, a faithful round trip, no import cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedveil.client import protocol
from fedveil.client.protocol import (Answer, Instruction, decode_answer, decode_instruction, encode_answer,
                                     encode_error, encode_instruction)
from fedveil.core import wire
from fedveil.core.errors import Refusal, UserError
from fedveil.core.payload import Protected

CLIENT = Path(protocol.__file__).parent


def test_instruction_round_trip():
    sent = Instruction(protocol.KEYGEN, {"rounds": 3, "dp.name": "off"}, {wire.ROUND: 2, wire.LAYOUT_DIGEST: "ab"},
                       {wire.CLEAR_GLOBAL: np.arange(5, dtype=np.float32)},
                       {wire.PUBKEY_PREFIX + "client_0": b"\x01\x02", "holder": "client_0"})
    got = decode_instruction(encode_instruction(sent))
    assert (got.op, got.run_config, got.per_round, got.keys) == (sent.op, sent.run_config, sent.per_round, sent.keys)
    np.testing.assert_array_equal(got.arrays[wire.CLEAR_GLOBAL], sent.arrays[wire.CLEAR_GLOBAL])
    assert got.arrays[wire.CLEAR_GLOBAL].dtype == np.float32


def test_answer_round_trip_and_error():
    p = Protected(arrays={"u": np.ones(3, np.float32)}, blobs={"ct": b"\x00\xff"})
    got = decode_answer(encode_answer({wire.TRAIN_LOSS: 1.5}, {wire.OWNER_ID: "client_1", wire.PUBLIC_KEY: b"k"}, p))
    assert isinstance(got, Answer) and got.metrics == {wire.TRAIN_LOSS: 1.5}
    assert got.meta == {wire.OWNER_ID: "client_1", wire.PUBLIC_KEY: b"k"}
    assert got.protected.blobs == {"ct": b"\x00\xff"} and got.protected.arrays["u"].tolist() == [1.0, 1.0, 1.0]
    assert decode_answer(encode_answer({}, {}, None)).protected is None
    assert decode_answer(encode_error(4003, "layout")) == (4003, "layout")


def test_untrusted_input_is_refused():
    with pytest.raises(UserError, match="malformed worker message"):
        decode_instruction(b"\x00" * 12)
    bad = encode_instruction(Instruction(protocol.TRAIN, {}, arrays={"g": np.zeros(2, np.int32)}))
    with pytest.raises(Refusal) as err:
        decode_instruction(bad)
    assert err.value.code == "bad-global"


def test_op_names_are_the_message_types():
    assert protocol.OPERATIONS == ("train", "evaluate", "pubkey", "keygen", "install", "evalsum", "reveal", "attest")
    queries = (wire.QUERY_PUBKEY, wire.QUERY_KEYGEN, wire.QUERY_INSTALL, wire.QUERY_EVALSUM, wire.QUERY_REVEAL,
               wire.QUERY_ATTEST)
    assert queries == ("query.pubkey", "query.keygen", "query.install", "query.evalsum", "query.reveal",
                       "query.attest")


def _module_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_client_module_pair_imports_each_other():
    mods = {f"fedveil.client.{p.stem}": _module_imports(p) for p in CLIENT.glob("*.py")}
    cycles = [(a, b) for a in mods for b in mods if a < b and b in mods[a] and a in mods[b]]
    assert cycles == []
    assert not {m for m in mods["fedveil.client.protocol"] if m.startswith("fedveil.client")}


def test_op_names_are_spelled_once():
    for name in ("app.py", "operations.py", "worker.py"):
        text = (CLIENT / name).read_text()
        for op in protocol.OPERATIONS:
            assert f'"{op}"' not in text, f"client/{name} spells the op name {op!r}"


def test_relay_side_loads_no_torch():
    code = "import sys, fedveil.client.app, fedveil.client.worker; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
