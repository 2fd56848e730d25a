"""``fedveil-superlink``: Flower's SuperLink whose Control and Runtime APIs answer only the operator.

    fedveil-superlink [flower-superlink options]      # same options; FEDVEIL_OPERATOR_ADDRESSES adds hosts

Why: Flower 1.42 serves the Fleet API (SuperNodes), the Control API (``flwr run``, ``flwr
supernode register``...) and the Runtime API (the ServerApp) on ONE HTTPS listener,
``--host:--port`` (``flwr/superlink/cli/flower_superlink.py:_run_superlink_http_api``: a single
uvicorn server with only ``ssl_keyfile``/``ssl_certfile``, no client certificates).
``--control-api-address`` is deprecated and only used by an internal legacy gRPC server
(``FLWR_INTERNAL_GRPC_CONTROL_API``); Control API account authentication exists only as an OIDC
plugin of Flower's enterprise edition (``flwr/superlink/config_loader.py:load_control_authn_plugin``:
"unavailable in this Flower distribution"); the default plugin is ``NoOpControlAuthnPlugin``. So
with stock ``flower-superlink``, anyone who can reach the SuperNodes' address can register a
SuperNode key, submit runs and stop them.

This wrapper starts the same SuperLink with one more middleware, outermost
(``flwr/superlink/main.py:_get_middleware``): a request from an address that is not the
operator's is served only if its path is the Fleet API's (``/v1/fleet/``, the router prefix in
``flwr/superlink/routers/fleet/router.py``); everything else (``/v1/control/``, ``/v1/runtime/``,
``/docs``...) gets 403. The operator's addresses are the loopback ones, the SuperLink's own
``--host`` if it is a specific address (the ServerApp's runtime connection comes from there) and
any listed in ``FEDVEIL_OPERATOR_ADDRESSES`` (comma-separated). The operator therefore runs
``flwr`` on the SuperLink host (or through an SSH tunnel). It relies on the peer address of the
TCP connection, so it is only as good as the network's protection against address spoofing
(TCP handshakes make blind spoofing impractical; a host on the same path can still do anything).
"""

from __future__ import annotations

import ipaddress
import os
import sys

import flwr.superlink.main as superlink_main
from flwr.superlink.cli import flower_superlink
from starlette.middleware import Middleware

from fedveil.server.superlink_state import install_from_env

FLEET_PREFIX = "/v1/fleet/"
REFUSAL = (b'{"detail": "fedveil-superlink: the Control and Runtime APIs answer only the operator\'s host; '
           b'this address may use the Fleet API only"}')


def operator_addresses(argv: list[str]) -> set[str]:
    hosts = {"::1"}
    host = None
    for i, a in enumerate(argv):
        if a == "--host" and i + 1 < len(argv):
            host = argv[i + 1]
        elif a.startswith("--host="):
            host = a.split("=", 1)[1]
    if host and host not in ("0.0.0.0", "::", ""):
        hosts.add(host)
    hosts.update(h.strip() for h in os.environ.get("FEDVEIL_OPERATOR_ADDRESSES", "").split(",") if h.strip())
    return hosts


def is_operator(client: str | None, allowed: set[str]) -> bool:
    if not client:
        return False
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return client in allowed
    if ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback):
        return True
    return client in allowed


class OperatorOnly:
    """ASGI middleware: non-operator peers may reach the Fleet API only."""

    def __init__(self, app, allowed: set[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and not scope.get("path", "").startswith(FLEET_PREFIX):
            client = (scope.get("client") or (None,))[0]
            if not is_operator(client, self.allowed):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(REFUSAL)).encode())]})
                await send({"type": "http.response.body", "body": REFUSAL})
                return
        await self.app(scope, receive, send)


def install_operator_only(allowed: set[str]) -> None:
    original = superlink_main._get_middleware
    superlink_main._get_middleware = lambda: [Middleware(OperatorOnly, allowed=allowed), *original()]


def main() -> None:
    allowed = operator_addresses(sys.argv[1:])
    install_operator_only(allowed)
    print(install_from_env(), file=sys.stderr, flush=True)
    print(f"fedveil-superlink: Control and Runtime APIs answer only loopback and {sorted(allowed)}; "
          f"other addresses reach the Fleet API only", file=sys.stderr, flush=True)
    flower_superlink()


if __name__ == "__main__":
    main()
