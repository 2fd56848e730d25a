"""Round time in a deployment against the same federation in simulation, for every setting, in one invocation.

    .venv/bin/python -m fedveil.experiments.bench_deploy [--model tiny|mid|both] [--net loopback|hosts|both]
        [--superlink-state file|memory|both] [--backend tenseal] [--rounds 3] [--out DIR]

The defaults measure the whole matrix: tiny and mid, each with the SuperLink's state in a file
(the deploy scripts' default: it survives a restart) and in memory (``SUPERLINK_DATABASE=
:flwr-in-memory:``), on loopback (every role on 127.0.0.1) and on separate hosts (``NET=hosts``:
a network namespace per role, owner links shaped to ``OWNER_RATE``, default 100mbit; needs root).
That is two simulations and eight deployments: 17 minutes on a shared 2-core machine at low load (40
under heavy load); ``--net loopback`` needs no root and halves it. Each model runs the same config
on both sides (3 owners of the tiny model, or ``mid`` as in ``bench_secagg``; demo data of 120
records each, 5 local steps, the deploy demo's DP-SGD: ``dp=sample_level``, target epsilon 8, delta
1e-5, sample rate 0.05): once on Flower's Simulation Engine (``experiments/run.py``) and once per
deployment (``deploy/demo.sh`` with ``DEMO_RUN_ONLY=1``: TLS, SuperNode authentication, owner
workers, a weightless coordinator; the refusal checks after the run are skipped).

Round times come from each run's ``metrics.jsonl``; round 1 (worker warm-up, key set-up) is left
out of the mean when there are more rounds. Printed last: a table with, per setting, the ratio, the
fixed overhead per round over simulation (deployment minus simulation seconds; goal for tiny: at
most 0.5 s) and, on hosts, the time the shaped owner link needs for the round's bytes (the largest
owner's bytes down and up at ``OWNER_RATE``; goal for mid: at most 1.2x simulation plus that
transfer time, on loopback 1.2x). Goals are reported, not asserted. Loopback deployments need the
ports ``SUPERLINK_PORT`` (default 8000 and the next ones) and ``SUPERNODE_PORT`` + k (default
9094-9096) free; the hosts' namespaces have their own.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fedveil.core.metrics import MetricsRow, read_rows
from fedveil.experiments.bench_secagg import MODELS

ROOT = Path(__file__).resolve().parent.parent
# deploy/demo.sh's DP (TARGET_EPSILON, DELTA, SAMPLE_RATE defaults): both sides run the same DP-SGD
DEMO_DP = ("dp=sample_level", "dp.target_epsilon=8.0", "dp.delta=1e-5", "dp.sample_rate=0.05")
SHAPE_KEYS = ("model.tiny.hidden", "model.tiny.layers", "model.tiny.heads")  # deploy/demo.sh's TINY_SHAPE, in order
NETS = ("loopback", "hosts")
STATES = ("file", "memory")
OWNER_RATE = "100mbit"  # deploy/hosts.sh's default shaping of each owner's link
TINY_OVERHEAD_GOAL_S = 0.5  # issue 22: at most this fixed overhead per round over simulation
MID_RATIO_GOAL = 1.2  # issue 22: at most this times simulation, plus the shaped link's transfer time
RATE_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}  # tc's bit rates (its "bps" units are bytes: refused)


def deploy_model_env(overrides: list[str]) -> dict[str, str]:
    """deploy/demo.sh's environment for a benchmark model given as simulation overrides.

    The shape goes to the demo's ``TINY_SHAPE``; any other override must already be the deployed
    owners' setting (``configs/data/node.yaml``: ``flwr run`` accepts only the app's declared keys).
    """
    values = dict(o.split("=", 1) for o in overrides)
    node = OmegaConf.load(ROOT / "configs" / "data" / "node.yaml")
    for key, value in values.items():
        if key not in SHAPE_KEYS and not (key.startswith("data.") and str(node.get(key[5:])) == value):
            raise SystemExit(f"bench_deploy: {key}={value} is not what the deployed owners use; "
                             "benchmark a model whose other settings match configs/data/node.yaml")
    if not any(k in values for k in SHAPE_KEYS):
        return {}
    return {"TINY_SHAPE": " ".join(values.get(k, d) for k, d in zip(SHAPE_KEYS, ("64", "2", "4")))}


def parse_rate(text: str) -> float:
    """Bits per second of a tc rate such as ``100mbit``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", text.lower())
    if not m or m.group(2) not in RATE_UNITS:
        raise SystemExit(f"bench_deploy: OWNER_RATE={text!r} is not a rate this bench reads; "
                         f"give one as tc does, in {', '.join(RATE_UNITS)} (e.g. 100mbit)")
    return float(m.group(1)) * RATE_UNITS[m.group(2)]


def steady(seconds: list[float]) -> float:
    return statistics.mean(seconds[1:] if len(seconds) > 1 else seconds)


def trained(rows: list[MetricsRow]) -> list[MetricsRow]:
    return [r for r in rows if r.trained]


def transfer_seconds(rows: list[MetricsRow], rate_bps: float) -> float:
    """Per round (steady mean), the time the busiest owner's shaped link needs for its bytes down and up."""
    return steady([max((o.bytes_down or 0) + (o.bytes_up or 0) for o in r.per_client.values()) * 8 / rate_bps
                   for r in trained(rows)])


@dataclass
class Measured:
    model: str
    net: str
    state: str
    simulation_s: float  # seconds per round, steady mean
    deployment_s: float
    transfer_s: float | None  # the shaped link's time for the round's bytes (hosts only)
    rounds: list[float]  # the deployment's round seconds, every round

    @property
    def ratio(self) -> float:
        return self.deployment_s / self.simulation_s

    @property
    def overhead_s(self) -> float:
        return self.deployment_s - self.simulation_s

    def goal(self) -> tuple[str, bool]:
        """The issue's goal for this model, and whether this measurement meets it."""
        if self.model == "tiny":
            return f"overhead <= {TINY_OVERHEAD_GOAL_S} s", self.overhead_s <= TINY_OVERHEAD_GOAL_S
        bound = MID_RATIO_GOAL * self.simulation_s + (self.transfer_s or 0.0)
        return f"<= {bound:.2f} s ({MID_RATIO_GOAL}x sim{' + transfer' if self.transfer_s else ''})", \
            self.deployment_s <= bound


def table(results: list[Measured]) -> str:
    head = ("| model | net | SuperLink state | simulation s/round | deployment s/round | deploy/simulation | "
            "overhead s/round | link transfer s/round | goal | met |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for m in results:
        goal, met = m.goal()
        transfer = "-" if m.transfer_s is None else f"{m.transfer_s:.2f}"
        lines.append(f"| {m.model} | {m.net} | {m.state} | {m.simulation_s:.2f} | {m.deployment_s:.2f} | "
                     f"x{m.ratio:.2f} | {m.overhead_s:+.2f} | {transfer} | {goal} | {'yes' if met else 'no'} |")
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """(model, net, state) of every deployment asked for, models first: one simulation per model."""
    models = sorted(MODELS, key=lambda m: m != "tiny") if args.model == "both" else [args.model]
    nets = list(NETS) if args.net == "both" else [args.net]
    states = list(STATES) if args.superlink_state == "both" else [args.superlink_state]
    return [(m, n, s) for m in models for n in nets for s in states]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="tenseal", choices=["plain", "tenseal"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--superlink-state", default="both", choices=[*STATES, "both"])
    parser.add_argument("--model", default="both", choices=[*sorted(MODELS), "both"])
    parser.add_argument("--net", default="both", choices=[*NETS, "both"])
    parser.add_argument("--out", type=Path, help="keep every run's directory and log here (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.net != "loopback" and os.geteuid() != 0:
        parser.error("--net hosts needs root (network namespaces, bridges, tc); run as root, or pass --net loopback")
    return args


def logged(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> None:
    """Run cmd with its output in log; on failure, the log's tail and one line naming the log."""
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.stdout.write("".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:]))
        raise SystemExit(f"bench_deploy: {' '.join(cmd[:3])}... failed (exit {proc.returncode}); its log: {log}")


def simulate(model: str, args: argparse.Namespace, out: Path) -> list[MetricsRow]:
    logged([sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", f"aggregation={args.backend}",
            f"rounds={args.rounds}", "num_clients=3", "data.demo_examples=120", "train.local_steps=5", *DEMO_DP,
            *MODELS[model]], out.with_suffix(".log"))
    return read_rows(out)


def deploy(model: str, net: str, state: str, args: argparse.Namespace, out: Path) -> list[MetricsRow]:
    env = {**os.environ, "DEPLOY_DIR": str(out), "BACKEND": args.backend, "ROUNDS": str(args.rounds), "NET": net,
           "DEMO_RUN_ONLY": "1", **deploy_model_env(MODELS[model])}
    if state == "memory":
        env["SUPERLINK_DATABASE"] = ":flwr-in-memory:"
    logged(["bash", "deploy/demo.sh"], out.with_suffix(".log"), env)
    return read_rows(out / "server")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    todo = settings(args)
    for model in dict.fromkeys(m for m, _, _ in todo):  # a model the demo cannot build fails before any run
        deploy_model_env(MODELS[model])
    rate = os.environ.get("OWNER_RATE", OWNER_RATE)
    rate_bps = parse_rate(rate)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.out or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        sims: dict[str, list[MetricsRow]] = {}
        results: list[Measured] = []
        started = time.monotonic()
        for i, (model, net, state) in enumerate(todo, 1):
            if model not in sims:
                print(f"bench_deploy: {model}: simulation ...", flush=True)
                sims[model] = simulate(model, args, root / f"simulation-{model}")
            print(f"bench_deploy: [{i}/{len(todo)}] {model}, {net}, SuperLink state in {state} ...", flush=True)
            rows = deploy(model, net, state, args, root / f"deployment-{model}-{net}-{state}")
            seconds = [r.seconds.round for r in trained(rows)]
            results.append(Measured(model, net, state, steady([r.seconds.round for r in trained(sims[model])]),
                                    steady(seconds), transfer_seconds(rows, rate_bps) if net == "hosts" else None,
                                    seconds))
            print(f"bench_deploy: round seconds {', '.join(f'{s:.2f}' for s in seconds)} "
                  f"(x{results[-1].ratio:.2f}; {time.monotonic() - started:.0f} s so far)", flush=True)
    print(json.dumps({"backend": args.backend, "rounds": args.rounds, "owner_rate": rate,
                      "simulation": {m: [r.seconds.round for r in trained(rows)] for m, rows in sims.items()},
                      "results": [asdict(m) for m in results]}))
    print(f"{args.backend}, {args.rounds} rounds, 3 owners; hosts: owner links at {rate}; "
          f"{time.monotonic() - started:.0f} s in all")
    print(table(results))
    print(f"deploy/simulation round time ratio: {results[-1].ratio:.2f}")  # the last setting's, as before


if __name__ == "__main__":
    main()
