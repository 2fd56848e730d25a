"""The owner worker: one long-lived process per data owner, holding its model, data, keys, policy
and epsilon ledger across rounds and runs, so nothing is reloaded per Flower message.

    fedveil-owner serve --data-dir DIR --state-dir DIR [--owner-id ID] [--policy FILE] [--roster FILE] [--model-path DIR] [--socket PATH]

Flower 1.42 starts a fresh ClientApp process for every message (flwr #3670): torch, transformers
and the model would be imported and loaded again each time. With a worker, the SuperNode's
ClientApp is a thin relay: it forwards each instruction over a Unix socket that only the owner's
user can open (``<state dir>/owner.sock``, mode 0600, in a 0700 directory) and returns the answer.
The worker runs the same :func:`fedveil.client.operations.handle` the in-process simulation path
runs, so both paths share one owner implementation. This module is light (no torch): the relay
side of the ClientApp imports only it.

Wire format on the socket (no pickle: the worker treats every request as untrusted input): one
length-prefixed frame list (``core/io.pack``) per request and per answer. Frame 0 is a JSON header;
numpy arrays travel as raw bytes described in the header (name, dtype, shape), byte strings as
frames referenced by index.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from fedveil.core.errors import Refusal, UserError
from fedveil.core.io import pack, unpack
from fedveil.core.payload import Protected

SOCKET_NAME = "owner.sock"
MAX_FRAME = 1 << 32
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


def _read_message(sock: socket.socket) -> bytes:
    size = _read_exact(sock, 8)
    n = int.from_bytes(size, "big")
    if n > MAX_FRAME:
        raise UserError(f"worker message of {n} bytes is over the {MAX_FRAME}-byte limit")
    return _read_exact(sock, n)


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the other side closed the connection mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send_message(sock: socket.socket, data: bytes) -> None:
    sock.sendall(len(data).to_bytes(8, "big") + data)


def call(socket_path: str | Path, request: bytes, timeout: float = 3600.0) -> bytes:
    """Send one request to the worker at ``socket_path`` and return its answer."""
    path = Path(socket_path)
    hint = f"start it with `fedveil-owner serve --state-dir {path.parent} --data-dir DATA_DIR`"
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            _send_message(sock, request)
            return _read_message(sock)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise WorkerUnavailable(f"the owner worker at {path} is not running; {hint}") from exc
    except (ConnectionError, socket.timeout, OSError) as exc:
        raise WorkerUnavailable(f"the owner worker at {path} stopped answering ({exc.__class__.__name__}); "
                                f"restart it: {hint}") from exc


def relay(socket_path: str | Path, instruction: Instruction, timeout: float = 3600.0) -> Answer:
    """Send ``instruction`` to the owner worker and decode its answer (the ClientApp's side)."""
    bytes_keys = {k: v for k, v in instruction.keys.items() if isinstance(v, bytes)}
    plain_keys = {k: v for k, v in instruction.keys.items() if not isinstance(v, bytes)}
    request = encode({"op": instruction.op, "run_config": instruction.run_config, "per_round": instruction.per_round,
                      "keys": plain_keys}, arrays=instruction.arrays, blobs=bytes_keys)
    head, arrays, blobs = decode(call(socket_path, request, timeout))
    if "error_code" in head:
        from fedveil.client.release import refusal_from  # release imports this module (Answer)

        raise refusal_from(int(head["error_code"]), str(head.get("reason", "")))
    meta = {**head["meta"], **{k: blobs[k] for k in head.get("meta_blobs", [])}}
    protected = None
    if head.get("protected") is not None:
        protected = Protected(arrays={k: arrays[k] for k in head["protected"]["arrays"]},
                              blobs={k: blobs[f"protected.{k}"] for k in head["protected"]["blobs"]})
    return Answer(dict(head["metrics"]), meta, protected)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(socket_path: str | Path, handler: Callable[[bytes], bytes], on_ready: Callable[[], Any] | None = None) -> None:
    """Answer requests on ``socket_path`` (0600, in a 0700 directory) until killed; one at a time."""
    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path.parent, stat.S_IRWXU)
    if path.exists():
        path.unlink()  # a stale socket of a previous worker
    lock = threading.Lock()  # one instruction at a time: the model and the ledger are not shared

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            try:
                request = _read_message(self.request)
            except (ConnectionError, UserError):
                return
            with lock:
                try:
                    answer = handler(request)
                except Exception as exc:  # a bug, not a refusal: keep serving, log it, release only its code
                    from fedveil.client.release import refusal_of  # release imports this module (Answer)

                    released = refusal_of(exc, "owner worker")
                    answer = encode_error(released.error_code, released.reason)
            try:
                _send_message(self.request, answer)
            except OSError:
                return  # the relay went away; the next instruction finds the worker ready

    old = os.umask(0o177)  # the socket is created 0600: only the owner's user can connect
    try:
        server = _Server(str(path), Handler)
    finally:
        os.umask(old)
    with server:
        if on_ready is not None:
            on_ready()
        server.serve_forever()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedveil-owner", description="the data owner's long-lived worker")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="hold this owner's model, data, keys, policy and ledger; answer its ClientApp")
    s.add_argument("--data-dir", required=True, help="the owner's private data (never leaves this machine)")
    s.add_argument("--state-dir", required=True, help="ledger, keys, policy, final adapter, the socket")
    s.add_argument("--owner-id", default="", help="the owner's id (default: the state directory's name)")
    s.add_argument("--policy", default=None, help="the owner's policy file (default <state-dir>/policy.json)")
    s.add_argument("--roster", default=None, help="the pinned roster of owner keys (default <state-dir>/roster.json)")
    s.add_argument("--model-path", default=None, help="this owner's copy of the base model (default: the run's model.path)")
    s.add_argument("--party-keys", default=None, help="crypten: the parties' keys this owner pins (default <state-dir>/party-keys.json)")
    s.add_argument("--max-epsilon", type=float, default=None, help="the owner's epsilon cap where its policy sets none")
    s.add_argument("--socket", default=None, help=f"Unix socket path (default <state-dir>/{SOCKET_NAME})")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default; set it when "
                   "several owners share one machine)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    from fedveil.client.operations import WorkerState
    from fedveil.core.console import progress, quiet_libraries

    quiet_libraries()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    if not Path(args.data_dir).exists():
        print(f"fedveil-owner: error: data directory {args.data_dir} does not exist", file=sys.stderr)
        raise SystemExit(2)
    if args.policy is not None:  # a named policy that is missing or unreadable stops the owner here
        from fedveil.privacy.policy import load_policy

        try:
            load_policy(args.policy, named=True)
        except UserError as exc:
            print(f"fedveil-owner: error: {exc}", file=sys.stderr)
            raise SystemExit(2)
    state = WorkerState(owner_id=args.owner_id or Path(args.state_dir).name, data_dir=args.data_dir,
                        state_dir=args.state_dir, policy=args.policy, max_epsilon=args.max_epsilon, roster=args.roster,
                        model_path=args.model_path, party_keys=args.party_keys)
    sock = Path(args.socket or Path(args.state_dir) / SOCKET_NAME)
    serve(sock, state.answer, lambda: progress(f"owner worker {state.owner_id}: listening on {sock} (pid {os.getpid()})"))


if __name__ == "__main__":
    main(sys.argv[1:])
