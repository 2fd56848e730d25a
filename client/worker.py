"""The owner worker: one long-lived process per data owner, holding its model, data, keys, policy
and epsilon ledger across rounds and runs, so nothing is reloaded per Flower message.

    fedveil-owner serve --data-dir DIR --state-dir DIR [--owner-id ID] [--policy FILE] [--roster FILE]
        [--model-path DIR] [--socket PATH]

Flower 1.42 starts a fresh ClientApp process for every message (flwr #3670): torch, transformers
and the model would be imported and loaded again each time. With a worker, the SuperNode's
ClientApp is a thin relay: it forwards each instruction over a Unix socket that only the owner's
user can open (``<state dir>/owner.sock``, mode 0600, in a 0700 directory) and returns the answer.
The worker runs the same :func:`fedveil.client.operations.handle` the in-process simulation path
runs, so both paths share one owner implementation. This module is light (no torch): the relay
side of the ClientApp imports only it.

What travels on the socket (Instruction, Answer, op names, framing) is ``client/protocol.py``;
this module is the transport (the socket, its permissions, its size limit) and the CLI.
"""

from __future__ import annotations

import argparse
import os
import socket
import socketserver
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from fedveil.client.protocol import (Answer, Instruction, WorkerUnavailable, decode_answer, encode_error,
                                     encode_instruction)
from fedveil.client.release import refusal_from, refusal_of
from fedveil.core.console import progress, quiet_libraries
from fedveil.core.errors import UserError
from fedveil.privacy.policy import load_policy

SOCKET_NAME = "owner.sock"
MAX_FRAME = 1 << 32


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
    answer = decode_answer(call(socket_path, encode_instruction(instruction), timeout))
    if isinstance(answer, tuple):
        raise refusal_from(*answer)
    return answer


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(
    socket_path: str | Path, handler: Callable[[bytes], bytes], on_ready: Callable[[], Any] | None = None
) -> None:
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
    s.add_argument(
        "--model-path", default=None, help="this owner's copy of the base model (default: the run's model.path)"
    )
    s.add_argument(
        "--party-keys",
        default=None,
        help="crypten: the parties' keys this owner pins (default <state-dir>/party-keys.json)",
    )
    s.add_argument("--max-epsilon", type=float, default=None, help="the owner's epsilon cap where its policy sets none")
    s.add_argument("--socket", default=None, help=f"Unix socket path (default <state-dir>/{SOCKET_NAME})")
    s.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default; set it when "
                   "several owners share one machine)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)

    from fedveil.client.operations import WorkerState  # lazy: torch; the relay imports this module

    quiet_libraries()
    if args.threads > 0:
        import torch  # after WorkerState: already loaded, named here for set_num_threads

        torch.set_num_threads(args.threads)
    if not Path(args.data_dir).exists():
        print(f"fedveil-owner: error: data directory {args.data_dir} does not exist", file=sys.stderr)
        raise SystemExit(2)
    if args.policy is not None:  # a named policy that is missing or unreadable stops the owner here
        try:
            load_policy(args.policy, named=True)
        except UserError as exc:
            print(f"fedveil-owner: error: {exc}", file=sys.stderr)
            raise SystemExit(2)
    state = WorkerState(owner_id=args.owner_id or Path(args.state_dir).name, data_dir=args.data_dir,
                        state_dir=args.state_dir, policy=args.policy, max_epsilon=args.max_epsilon, roster=args.roster,
                        model_path=args.model_path, party_keys=args.party_keys)
    sock = Path(args.socket or Path(args.state_dir) / SOCKET_NAME)
    serve(
        sock, state.answer, lambda: progress(f"owner worker {state.owner_id}: listening on {sock} (pid {os.getpid()})")
    )


if __name__ == "__main__":
    main(sys.argv[1:])
