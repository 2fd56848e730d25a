"""``fedveil-supernode``: Flower's SuperNode that runs only the app its owner pinned.

    fedveil-supernode [flower-supernode options] --node-config "... app-sha256='<hex>'"
    python -m fedveil.client.supernode --app-sha256 PROJECT_DIR     # the pin of a project (FAB) on disk

Why: a SuperNode runs whatever app a submitted run ships. ``flwr run`` sends a FAB (the project's
files: pyproject.toml naming the ``clientapp`` component, and every ``.py``/``.toml``/``.md``...);
the ClientApp process installs it, puts its directory first on ``sys.path`` and imports the
component the FAB's pyproject names (``flwr/supernode/runtime/run_clientapp.py``,
``flwr/supercore/object_ref.py:load_app``). A coordinator could ship a FAB that names another
component, or a ``fedveil/`` package that shadows the installed one, and read the owner's data.

Flower 1.42's own answer, ``flower-supernode --trusted-entities``, verifies only FABs that carry a
Flower Hub signature (``fab.verifications['valid_license']``, set by the SuperLink only for apps
fetched from the Hub: ``flwr/superlink/servicer/control/control_handlers.py:_get_remote_fab``); a
FAB submitted with ``flwr run .`` never has one, so every local run would be refused.

So the owner pins the SHA-256 of the exact FAB it trusts (``app-sha256`` in its node config;
compute it with ``--app-sha256 PROJECT_DIR`` from the project it reviewed, as ``flwr run``
builds it: ``flwr.cli.build.build_fab_from_disk``). This wrapper checks every run's FAB in the
SuperNode process, when the FAB arrives and before it is stored or any ClientApp process starts:
a FAB whose SHA-256 differs is refused with one line in the SuperNode's log, the run's messages
get an error reply, and none of its code runs. It hooks Flower 1.42's own verification step
(``flwr/supernode/start_client_internal.py:_pull_and_store_message``, ``_verify_fab``); the
version is pinned (flwr==1.42.0) and ``tests/deploy/`` exercises it.

It also shortens the SuperNode's fixed sleeps (:func:`install_prompt_polling`): 3 s between idle
pulls, 1 s+ back-off on message objects still being uploaded, 0.5 s between looks for a reply; and
with ``FEDVEIL_WAKE_SOCKET`` set it nudges its ClientApp runner when a message is stored
(``core/wake.py``).
With ``--isolation process`` its ClientApp tasks run in one long-lived process beside it
(``client/clientapp_runner.py``) instead of a fresh ``flwr-clientapp`` per message.

What the pin covers: everything a run ships (component names, config defaults, every file of the
FAB). What it does not: the ``fedveil`` package installed on the owner's own host (the FAB's
``fedveil.client.app:app`` is imported from there, as the FAB holds ``client/``, not
``fedveil/client/``): that is the owner's own install.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

from fedveil.core import wake

APP_PIN_KEY = "app-sha256"  # node-config key: the SHA-256 (hex) of the only FAB this SuperNode runs
_MARK = "fedveil-app-pin"


def fab_sha256(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def project_app_sha256(project: str | Path) -> str:
    """The pin of a project directory: the SHA-256 of the FAB ``flwr run PROJECT`` would ship."""
    from flwr.cli.build import build_fab_from_disk  # lazy: only --app-sha256 builds a FAB

    return fab_sha256(build_fab_from_disk(Path(project).resolve()))


def refusal(run_id: int, got: str, pinned: str) -> str:
    return (f"fedveil-supernode: refused run {run_id}: its app (FAB sha256 {got}) is not the app this owner "
            f"pinned ({APP_PIN_KEY}={pinned}); none of its code runs")


def install_app_pin(pinned: str) -> None:
    """Make this process's SuperNode run only FABs whose SHA-256 is ``pinned``."""
    from flwr.app import Error  # lazy: flwr (seconds); fab_sha256's importers need none
    from flwr.common.constant import ErrorCode  # lazy: flwr (seconds); fab_sha256's importers need none
    from flwr.supernode import start_client_internal as sci  # lazy: flwr (seconds); fab_sha256's importers need none

    original = sci._pull_and_store_message

    def guarded(**kwargs):
        get_fab = kwargs["get_fab"]

        def pinned_get_fab(fab_hash: str, run_id: int):
            fab = get_fab(fab_hash, run_id)
            got = fab_sha256(fab.content)  # computed here, not taken from the SuperLink's hash_str
            if got == pinned:
                fab.verifications = {"valid_license": _MARK}
            else:
                fab.verifications = {}
                line = refusal(run_id, got, pinned)
                print(line, file=sys.stderr, flush=True)
                sci.FAB_VERIFICATION_ERROR = Error(ErrorCode.INVALID_FAB, line)
            return fab

        kwargs["get_fab"] = pinned_get_fab
        kwargs["trusted_entities"] = {_MARK: "the owner's pinned app"}  # turns Flower's verification step on
        return original(**kwargs)

    sci._pull_and_store_message = guarded
    sci._verify_fab = lambda fab, trusted: fab.verifications.get("valid_license") == _MARK


IDLE_PULL_S = 0.1  # between pulls from the SuperLink when no message came (Flower 1.42: 3 s)
REPLY_WAIT_S = 0.02  # between looks for the ClientApp's reply and its objects (Flower 1.42: 0.5 s)


class _Prompt:
    """A view of the SuperNode's node state or object store whose waits return as soon as data is there.

    Flower 1.42's ``_push_messages`` waits for the ClientApp's reply, and then for each of its
    objects, by sleeping 0.5 s between looks; this view makes the same calls and looks every
    ``REPLY_WAIT_S`` instead. Everything else goes straight to the wrapped object.
    """

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get_messages_legacy(self, **kwargs):  # node state: an empty answer marks nothing retrieved
        while not (found := self._inner.get_messages_legacy(**kwargs)):
            time.sleep(REPLY_WAIT_S)
        return found

    def get(self, object_id: str):  # object store: b"" = registered, not pushed yet
        while (content := self._inner.get(object_id)) == b"":
            time.sleep(REPLY_WAIT_S)
        return content


def install_prompt_polling() -> None:
    """Shorten the SuperNode's own sleeps: idle pulls (3 s), back-off on objects still being
    uploaded (1 s, 2 s, ...: ``core/prompt_pull.py``) and waits for the ClientApp's reply (0.5 s).

    Hooks the same Flower 1.42 functions as :func:`install_app_pin` (``start_client_internal``:
    ``_pull_and_store_message``, which the main loop follows with a 3 s sleep when it returns no
    run, and ``_push_messages``); nothing else changes. Install after :func:`install_app_pin`.
    """
    from flwr.supernode import start_client_internal as sci  # lazy: flwr (seconds); fab_sha256's importers need none

    from fedveil.core.prompt_pull import prompt_pull_fn  # lazy: imports flwr (seconds)

    pull, push = sci._pull_and_store_message, sci._push_messages

    wake_path = os.environ.get(wake.ENV)
    runner = wake.Nudger(wake_path) if wake_path else None

    def pull_until_a_message(**kwargs):
        kwargs["pull_object"] = prompt_pull_fn(kwargs["pull_object"])  # objects still being uploaded: ask again soon
        while (run_id := pull(**kwargs)) is None:
            time.sleep(IDLE_PULL_S)
        if runner is not None:  # the message is stored: its ClientApp task can be claimed now
            runner.nudge()
        return run_id

    def push_promptly(**kwargs):
        return push(**{**kwargs, "state": _Prompt(kwargs["state"]), "object_store": _Prompt(kwargs["object_store"])})

    sci._pull_and_store_message = pull_until_a_message
    sci._push_messages = push_promptly


def node_config_of(argv: list[str]) -> dict:
    from flwr.common.config import parse_config_args  # lazy: flwr (seconds); fab_sha256's importers need none

    values = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--node-config"]
    values += [a.split("=", 1)[1] for a in argv if a.startswith("--node-config=")]
    return parse_config_args(values[-1:]) if values else {}


def main() -> None:
    argv = sys.argv[1:]
    if len(argv) == 2 and argv[0] == "--app-sha256":
        print(project_app_sha256(argv[1]))
        return
    if any(a in ("-h", "--help", "-V", "--version") for a in argv):
        from flwr.supernode.cli import flower_supernode  # lazy: flwr (seconds); fab_sha256's importers need none

        flower_supernode()
        return
    pinned = str(node_config_of(argv).get(APP_PIN_KEY, "")).strip().lower()
    if len(pinned) != 64 or any(c not in "0123456789abcdef" for c in pinned):
        print(f"fedveil-supernode: error: the node config has no valid {APP_PIN_KEY}='<64 hex digits>': without it "
              f"this SuperNode would run any app a coordinator ships. Compute it from the project you trust: "
              f"python -m fedveil.client.supernode --app-sha256 PROJECT_DIR", file=sys.stderr)
        raise SystemExit(2)
    install_app_pin(pinned)
    install_prompt_polling()
    print(f"fedveil-supernode: runs only the app with FAB sha256 {pinned}", file=sys.stderr, flush=True)
    from flwr.supernode.cli import flower_supernode  # lazy: flwr (seconds); fab_sha256's importers need none

    flower_supernode()


if __name__ == "__main__":
    main()
