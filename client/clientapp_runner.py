"""A long-lived ClientApp process beside a SuperNode: Flower's per-message process start, once.

    python -m fedveil.client.clientapp_runner --runtime-api 127.0.0.1:9094 --app-sha256 HEX \
        [--supernode-pid PID] [--wake-socket PATH]

with the SuperNode started as ``fedveil-supernode --isolation process --port 9094 ...`` (so it
starts no ``flower-superexec`` of its own). Why: with the default ``--isolation subprocess``
Flower 1.42's ``flower-superexec`` polls the SuperNode's Runtime API for tasks every second
(``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``) and starts a fresh ``flwr-clientapp`` process for every
message (``flwr/supercore/superexec/run_superexec.py``; its warm executor pools serve Kubernetes
and other task types, not ClientApps), which imports flwr (fastapi, grpc, httpx: 2-5 s on a busy
2-core machine), installs the FAB and imports the app, then handles one message and exits.

This process does what ``flower-superexec`` + ``flwr-clientapp`` do for a ClientApp task, with
Flower's own functions (``flwr/supernode/runtime/run_clientapp.py``: ``pull_task_input``,
``push_message``, ``push_task_output``), but stays up: it claims each task over the same local
Runtime API (``AcquireTask``, then the task's token), installs and imports each FAB once, and runs
the message through the loaded ``ClientApp``. What it runs is what the SuperNode accepted: the
SuperNode refuses an unpinned FAB when it arrives (``client/supernode.py``), and this process
checks the FAB's SHA-256 against the same pin again before importing anything from it.

Meant for relay mode (node config ``worker=...``): the ClientApp only relays to the owner worker,
which holds the model. A ClientApp error becomes an error reply and the process serves the next
task; it exits with the SuperNode (``--supernode-pid``).
"""

from __future__ import annotations

import argparse
import sys
import time
from logging import ERROR, INFO

import httpx
from flwr.app import Error, Message
from flwr.cli.install import install_from_fab
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (AcquireTaskRequest, PullAppMessagesRequest, PullTaskInputRequest,
                                    SendTaskHeartbeatRequest)
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.inflatable.inflatable_protobuf_utils import (make_confirm_message_received_fn_protobuf,
                                                                 make_pull_object_fn_protobuf)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

from fedveil.client.supernode import fab_sha256
from fedveil.core.prompt_pull import prompt_pull_object
from fedveil.core.wake import Waiter

POLL_S = 0.05  # between AcquireTask calls when idle (Flower's flower-superexec: 1 s)
# With a wake socket (``--wake-socket``, ``core/wake.py``): ask at once when the SuperNode nudges,
# every POLL_S for EAGER_S after a nudge, and otherwise only every FALLBACK_S.
EAGER_S = 0.5
FALLBACK_S = 1.0


def runtime_client(address: str, *interceptors):

    return RuntimeHttpClient.from_server_address(
        server_address=address, insecure=True, root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"), *interceptors],
        retry_invoker=make_simple_http_retry_invoker())


def pull_task_input(client):
    """``flwr.supernode.runtime.run_clientapp.pull_task_input``, with objects pulled promptly.

    The task is claimable as soon as its message reaches the SuperNode, while the SuperNode may
    still be pulling the message's objects from the SuperLink: Flower's own version would then back
    off 1 s, 2 s, ... (``core/prompt_pull.py``).
    """
    res = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = res.task_id, res.run.run_id, res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(prompt_pull_object(client.PullObject), node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message)
    message.metadata.__dict__["_message_id"] = tree.object_id  # as Flower: the deflated message lacks its id
    return message, context, run, fab


def task_heartbeat(client):
    """Flower's task heartbeat, except that a refused one does not SIGINT this long-lived process."""
    def beat() -> bool:
        try:
            client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except httpx.HTTPError:
            return False
        return True

    return beat


class Runner:
    """Claims ClientApp tasks from one SuperNode and runs them with apps loaded once per FAB."""

    def __init__(self, address: str, pinned: str, waiter=None) -> None:
        self.address, self.pinned, self.waiter = address, pinned, waiter
        self.apps: dict[str, object] = {}  # FAB hash -> loaded ClientApp
        self.tasks = 0

    def app_for(self, run, fab):
        if fab.hash_str not in self.apps:
            if fab_sha256(fab.content) != self.pinned:  # the SuperNode already refused it; never import it here
                raise PermissionError(f"FAB sha256 {fab_sha256(fab.content)} is not the pinned app {self.pinned}")
            install_from_fab(fab.content, skip_prompt=True)
            load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
            self.apps[fab.hash_str] = load(run.fab_id, run.fab_version, fab.hash_str)
        return self.apps[fab.hash_str]

    def run_task(self, token: str) -> None:
        """One task, as ``flwr-clientapp`` runs it, minus the process start and the exit."""
        client = runtime_client(self.address, RuntimeTokenHttpInterceptor(token))
        heartbeat = HeartbeatSender(task_heartbeat(client))  # a long task (a big model's round) stays claimed
        heartbeat.start()
        message = reply = context = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        try:
            message, context, run, fab = pull_task_input(client)
            reply = self.app_for(run, fab)(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as exc:  # noqa: BLE001 -- as flwr-clientapp, but only a code leaves (client/release.py)
            from fedveil.client.release import refusal_of  # light: no torch, as the relay itself

            log(ERROR, "ClientApp raised an exception", exc_info=exc)
            released = refusal_of(exc, "fedveil-clientapp")
            details = released.reason
            if message is not None:
                reply = Message(Error(code=released.error_code, reason=released.reason), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
            finally:
                heartbeat.stop()
                push_task_output(client, context, status, details)
                client.close()
        self.tasks += 1
        log(INFO, "fedveil-clientapp: task %d done (%s)", self.tasks, status)

    def serve(self) -> None:
        client = runtime_client(self.address)
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        eager_until = 0.0  # after a nudge, ask every POLL_S for a while; else wait for the next nudge
        while True:
            res = client.AcquireTask(request)
            if res.HasField("task") and res.token:
                self.run_task(res.token)
            elif self.waiter is None or time.monotonic() < eager_until:
                time.sleep(POLL_S)
            elif self.waiter.wait(FALLBACK_S):
                eager_until = time.monotonic() + EAGER_S


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedveil-clientapp", description=__doc__.split("\n")[0])
    parser.add_argument("--runtime-api", required=True, help="the SuperNode's Runtime API, HOST:PORT (its --port)")
    parser.add_argument("--app-sha256", required=True, help="the pinned FAB SHA-256, as in the SuperNode's node config")
    parser.add_argument("--supernode-pid", type=int, help="exit when this process (the SuperNode) exits")
    parser.add_argument("--wake-socket", help="a Unix datagram socket to bind (0600) on which the SuperNode, started "
                        "with FEDVEIL_WAKE_SOCKET=<the same path>, nudges this process when a message arrives; "
                        "without it this process asks for tasks every POLL_S")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    pinned = args.app_sha256.strip().lower()
    if len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned):
        print("fedveil-clientapp: error: --app-sha256 must be the 64 hex digits the SuperNode pins "
              "(python -m fedveil.client.supernode --app-sha256 PROJECT_DIR)", file=sys.stderr)
        raise SystemExit(2)
    if args.supernode_pid:
        start_parent_process_monitor(args.supernode_pid)
    print(f"fedveil-clientapp: serving ClientApp tasks of the SuperNode at {args.runtime_api} "
          f"(app pinned to {pinned[:12]})", file=sys.stderr, flush=True)
    waiter = Waiter(args.wake_socket) if args.wake_socket else None
    try:
        Runner(args.runtime_api, pinned, waiter).serve()
    except KeyboardInterrupt:
        pass
    finally:
        if waiter is not None:
            waiter.close()


if __name__ == "__main__":
    main()
