"""The systemd units and compose file run the same owner processes as deploy/start-supernode.sh.

Neither systemd nor Docker runs here, so the templates are checked against the real command-line
parsers: every ExecStart / command must parse (a renamed or removed flag fails), and the three owner
processes must agree on the wiring (socket path, Runtime API port, pinned app).
"""

import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD = ROOT / "deploy" / "systemd"
ENV = {"SUPERLINK": "10.0.0.5:8000", "RUNTIME_PORT": "9094", "DATA_DIR": "/srv/data/client_0", "APP_SHA256": "a" * 64,
       "OWNER_THREADS": "4", "OWNER_ARGS": "--max-epsilon 8", "WORLD": "3", "RENDEZVOUS": "tcp://10.0.0.5:7199",
       "GLOO_IFNAME": "eth1", "LISTEN": "10.0.0.5:7100"}


def parser_of(argv: list[str]):
    """The real parser behind a template's command, and the arguments it gets."""
    prog = Path(argv[0]).name
    if prog == "fedveil-owner":
        from fedveil.client.worker import build_parser
        return build_parser(), argv[1:]
    if prog == "python" and argv[1:3] == ["-m", "fedveil.client.clientapp_runner"]:
        from fedveil.client.clientapp_runner import build_parser
        return build_parser(), argv[3:]
    if prog == "fedveil-supernode":
        from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode
        return _parse_args_run_supernode(), argv[1:]
    return None, argv


def unit_command(name: str, instance: str = "client_0") -> list[str]:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read_string((SYSTEMD / name).read_text())
    line = unit["Service"]["ExecStart"].replace("%i", instance)
    # systemd: "$VAR" alone is split into words (zero or more), "${VAR}" is one word
    line = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(ENV[m.group(1)]), line)
    line = re.sub(r"\$(\w+)", lambda m: ENV[m.group(1)], line)
    return shlex.split(line)


def parsed(argv: list[str]):
    parser, args = parser_of(argv)
    assert parser is not None, f"no parser known for {argv[:3]}"
    return parser.parse_args(args)


def node_config(args) -> dict:
    from flwr.common.config import parse_config_args

    return parse_config_args(args.node_config if isinstance(args.node_config, list) else [args.node_config])


@pytest.mark.parametrize("unit", ["fedveil-owner@.service", "fedveil-clientapp@.service", "fedveil-supernode@.service"])
def test_every_owner_unit_parses_with_the_real_cli(unit):
    parsed(unit_command(unit))  # SystemExit (argparse) on an unknown or missing flag fails the test


def test_systemd_owner_units_wire_worker_supernode_and_runner_together():
    worker = parsed(unit_command("fedveil-owner@.service"))
    supernode = parsed(unit_command("fedveil-supernode@.service"))
    runner = parsed(unit_command("fedveil-clientapp@.service"))
    config = node_config(supernode)
    assert config["worker"] == f"{worker.state_dir}/owner.sock"  # the SuperNode relays to the worker's socket
    assert supernode.isolation == "process"  # so the long-lived runner, not a fresh process, runs each message
    assert runner.runtime_api == f"127.0.0.1:{supernode.port}" and supernode.host == "127.0.0.1"
    assert runner.app_sha256 == config["app-sha256"] == ENV["APP_SHA256"]
    assert worker.max_epsilon == 8.0  # OWNER_ARGS reaches the worker
    units = {n: (SYSTEMD / n).read_text() for n in ("fedveil-supernode@.service", "fedveil-clientapp@.service")}
    assert "Requires=fedveil-owner@%i.service" in units["fedveil-supernode@.service"]
    assert "BindsTo=fedveil-supernode@%i.service" in units["fedveil-clientapp@.service"]


def test_compose_owners_run_worker_supernode_and_runner_with_only_their_own_files():
    services = yaml.safe_load((ROOT / "deploy" / "container" / "compose.yaml").read_text())["services"]
    for k in range(3):
        owner = f"client_{k}"
        cmd = {role: shlex.split(services[name]["command"].replace("${APP_SHA256:?set APP_SHA256}", "a" * 64))
               for role, name in (("worker", f"{owner}-worker"), ("node", owner), ("app", f"{owner}-app"))}
        worker, node, app = parsed(cmd["worker"]), parsed(cmd["node"]), parsed(cmd["app"])
        assert node_config(node)["worker"] == f"{worker.state_dir}/owner.sock" and node.isolation == "process"
        assert app.runtime_api == f"127.0.0.1:{node.port}"
        assert services[f"{owner}-app"]["network_mode"] == f"service:{owner}"  # the Runtime API stays on localhost
        mounts = {role: " ".join(services[name].get("volumes", []))
                  for role, name in (("worker", f"{owner}-worker"), ("node", owner), ("app", f"{owner}-app"))}
        assert f"./data/{owner}:/data:ro" in mounts["worker"] and "data" not in mounts["node"] + mounts["app"]
        assert ".key" not in mounts["worker"] + mounts["app"]  # the SuperNode's key only in the SuperNode
        others = [f"client_{j}" for j in range(3) if j != k]
        assert not any(o in " ".join(mounts.values()) for o in others)
