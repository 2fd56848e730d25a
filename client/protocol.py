"""The owner worker's protocol, in one place: what the ClientApp asks (:class:`Instruction`), what
the owner answers (:class:`Answer`), the op names, and the socket's wire format.

Both ends import it: the relay in the ClientApp (``client/app.py``, ``client/worker.py:relay``) and
the owner (``client/operations.py``). It is light (numpy and core only), so a relay that imports it
loads neither torch nor the model.

Wire format (no pickle: the worker treats every request as untrusted input): one length-prefixed
frame list (``core/io.pack``) per request and per answer. Frame 0 is a JSON header; numpy arrays
travel as raw bytes described in the header (name, dtype, shape), byte strings as frames
referenced by index. A refusal travels as ``{"error_code", "reason"}`` (``client/release.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from fedveil.core import wire
from fedveil.core.errors import Refusal, UserError
from fedveil.core.io import pack, unpack
from fedveil.core.payload import Protected

# The op names are the Flower message types (key set-up: ``query.<op>``), so the server spells
# them too: they live in core/wire.py, and this is the set an owner carries out.
TRAIN, EVALUATE, PUBKEY, KEYGEN, INSTALL = wire.TRAIN, wire.EVALUATE, wire.PUBKEY, wire.KEYGEN, wire.INSTALL
EVALSUM = wire.EVALSUM  # tenseal without DP: reveal the round's held-out loss from the owners' signed pairs
REVEAL, ATTEST = wire.REVEAL, wire.ATTEST  # tenseal's verifier committee, after a round's train replies
ROUND_OPS = (TRAIN, EVALUATE)
KEY_SETUP_OPS = (PUBKEY, KEYGEN, INSTALL)
COMMITTEE_OPS = (REVEAL, ATTEST)
OPERATIONS = ROUND_OPS + KEY_SETUP_OPS + (EVALSUM,) + COMMITTEE_OPS

ALLOWED_DTYPES = {"float32", "float64", "int64", "uint8"}


@dataclass
class Instruction:
    op: str
    run_config: dict[str, Any]
    per_round: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the global adapter as the server holds it
    keys: dict[str, Any] = field(default_factory=dict)  # key set-up values (bytes and strings)


@dataclass
class Answer:
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    protected: Optional[Protected] = None


class WorkerUnavailable(UserError):
    """The owner's worker is not running (or not reachable) at its socket."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None,
           blobs: dict[str, bytes] | None = None) -> bytes:
    """Header + arrays + byte strings -> one framed message."""
    frames: list[bytes] = []
    head = dict(header, arrays=[], blobs={})
    for name, value in (arrays or {}).items():
        value = np.ascontiguousarray(value)
        head["arrays"].append([name, str(value.dtype), list(value.shape), len(frames) + 1])
        frames.append(value.tobytes() or b"\0")
    for name, value in (blobs or {}).items():
        head["blobs"][name] = len(frames) + 1
        frames.append(bytes(value) or b"\0")
    return pack([json.dumps(head).encode(), *frames])


def encode_error(code: int, reason: str) -> bytes:
    """A released refusal on the socket: its int code and public reason (``client/release.py``)."""
    return encode({"error_code": int(code), "reason": str(reason)})


def decode(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, bytes]]:
    """One framed message -> (header, arrays, byte strings); malformed input is a UserError."""
    try:
        head_bytes, *frames = unpack(data)
        head = json.loads(head_bytes)
        arrays = {}
        for name, dtype, shape, index in head.pop("arrays"):
            if dtype not in ALLOWED_DTYPES:  # the global's dtype, refused as the in-process owner does
                raise Refusal("bad-global", f"an array of dtype {dtype} in the request is not accepted", check="dtype")
            size = int(np.prod(shape)) if shape else 1
            raw = frames[index - 1]
            arrays[str(name)] = np.frombuffer(raw[: size * np.dtype(dtype).itemsize], dtype=dtype).reshape(shape).copy()
        blobs = {str(name): frames[index - 1] for name, index in head.pop("blobs").items()}
    except Refusal:
        raise
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise UserError(f"malformed worker message ({exc})") from exc
    return head, arrays, blobs


def encode_instruction(instruction: Instruction) -> bytes:
    """The relay's request: byte-string keys travel as frames, the rest in the header."""
    bytes_keys = {k: v for k, v in instruction.keys.items() if isinstance(v, bytes)}
    plain_keys = {k: v for k, v in instruction.keys.items() if not isinstance(v, bytes)}
    return encode({"op": instruction.op, "run_config": instruction.run_config, "per_round": instruction.per_round,
                   "keys": plain_keys}, arrays=instruction.arrays, blobs=bytes_keys)


def decode_instruction(request: bytes) -> Instruction:
    """The worker's side of :func:`encode_instruction` (malformed input is a UserError)."""
    head, arrays, blobs = decode(request)
    return Instruction(str(head.get("op")), dict(head.get("run_config", {})), dict(head.get("per_round", {})),
                       arrays, {**head.get("keys", {}), **blobs})


def encode_answer(metrics: dict[str, float], meta: dict[str, Any], protected: Optional[Protected]) -> bytes:
    """What the release gate let out -> one framed answer (byte-string meta travels as frames)."""
    meta_blobs = {k: v for k, v in meta.items() if isinstance(v, bytes)}
    clear_meta = {k: v for k, v in meta.items() if not isinstance(v, bytes)}
    p = protected
    return encode({"metrics": metrics, "meta": clear_meta, "meta_blobs": sorted(meta_blobs),
                   "protected": None if p is None else {"arrays": sorted(p.arrays), "blobs": sorted(p.blobs)}},
                  arrays=p.arrays if p is not None else None,
                  blobs={**meta_blobs, **({f"protected.{k}": v for k, v in p.blobs.items()} if p else {})})


def decode_answer(data: bytes) -> Answer | tuple[int, str]:
    """One framed answer -> an :class:`Answer`, or a released refusal's (code, reason)."""
    head, arrays, blobs = decode(data)
    if "error_code" in head:
        return int(head["error_code"]), str(head.get("reason", ""))
    meta = {**head["meta"], **{k: blobs[k] for k in head.get("meta_blobs", [])}}
    protected = None
    if head.get("protected") is not None:
        protected = Protected(arrays={k: arrays[k] for k in head["protected"]["arrays"]},
                              blobs={k: blobs[f"protected.{k}"] for k in head["protected"]["blobs"]})
    return Answer(dict(head["metrics"]), meta, protected)
