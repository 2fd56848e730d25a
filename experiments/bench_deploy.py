"""Round time in a local deployment against the same federation in simulation, in one invocation.

    .venv/bin/python -m fedveil.experiments.bench_deploy [--backend tenseal] [--rounds 3] [--model tiny|mid]

Runs the same config (3 owners of the tiny model, or ``--model mid`` as in ``bench_secagg``, demo data
of 120 records each, 5 local steps, DP-SGD with the deploy demo's values: ``dp=sample_level``, target
epsilon 8, delta 1e-5, sample rate 0.05) twice: on Flower's Simulation Engine (``experiments/run.py``)
and as a local deployment
(``deploy/demo.sh``: TLS, SuperNode authentication, owner workers on, a weightless coordinator).
Round times come from each run's ``metrics.jsonl``; round 1 (worker warm-up, key set-up effects)
is left out of the mean when there are more rounds. ``--superlink-state`` picks the SuperLink's
state: ``file`` (the deploy scripts' default: a database that survives restarts), ``memory``
(``SUPERLINK_DATABASE=:flwr-in-memory:``) or ``both`` (one deployment each, same invocation).
Prints, last, ``deploy/simulation round time ratio: X.XX`` (of the last state measured). Needs the
ports the deploy demo uses (``SUPERLINK_PORT``, default 8000 and the next ones, and
``SUPERNODE_PORT`` + k, default 9094-9096) to be free.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from fedveil.core.metrics import read_rows
from fedveil.experiments.bench_secagg import MODELS

ROOT = Path(__file__).resolve().parent.parent
# deploy/demo.sh's DP (TARGET_EPSILON, DELTA, SAMPLE_RATE defaults): both sides run the same DP-SGD
DEMO_DP = ("dp=sample_level", "dp.target_epsilon=8.0", "dp.delta=1e-5", "dp.sample_rate=0.05")
SHAPE_KEYS = ("model.tiny.hidden", "model.tiny.layers", "model.tiny.heads")  # deploy/demo.sh's TINY_SHAPE, in order


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


def round_seconds(run_dir: Path) -> list[float]:
    return [r.seconds.round for r in read_rows(run_dir) if r.trained]


def steady(seconds: list[float]) -> float:
    return statistics.mean(seconds[1:] if len(seconds) > 1 else seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="tenseal", choices=["plain", "tenseal"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--superlink-state", default="both", choices=["file", "memory", "both"])
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    args = parser.parse_args()
    states = ["file", "memory"] if args.superlink_state == "both" else [args.superlink_state]
    model_env = deploy_model_env(MODELS[args.model])  # before the simulation: a model the demo cannot build fails first
    with tempfile.TemporaryDirectory() as tmp:
        sim = Path(tmp) / "simulation"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fedveil.experiments.run",
                f"hydra.run.dir={sim}",
                f"aggregation={args.backend}",
                f"rounds={args.rounds}",
                "num_clients=3",
                "data.demo_examples=120",
                "train.local_steps=5",
                *DEMO_DP,
                *MODELS[args.model],
            ],
            check=True,
            cwd=ROOT,
        )
        deployed: dict[str, list[float]] = {}
        for state in states:
            deploy = Path(tmp) / f"deployment-{state}"
            env = {**os.environ, "DEPLOY_DIR": str(deploy), "BACKEND": args.backend, "ROUNDS": str(args.rounds),
                   **model_env}
            if state == "memory":
                env["SUPERLINK_DATABASE"] = ":flwr-in-memory:"
            subprocess.run(["bash", "deploy/demo.sh"], check=True, cwd=ROOT, env=env)
            deployed[state] = round_seconds(deploy / "server")
        sim_s = round_seconds(sim)
    print(f"simulation round seconds: {', '.join(f'{s:.2f}' for s in sim_s)}")
    for state, dep_s in deployed.items():
        print(f"deployment round seconds, SuperLink state in {state}: {', '.join(f'{s:.2f}' for s in dep_s)} "
              "(owner workers, TLS, weightless coordinator)")
    print(json.dumps({"backend": args.backend, "model": args.model, "simulation": sim_s, "deployment": deployed}))
    for state, dep_s in deployed.items():  # the last state's line is printed last, unprefixed
        prefix = "" if state == states[-1] else f"SuperLink state in {state}: "
        print(f"{prefix}deploy/simulation round time ratio: {steady(dep_s) / steady(sim_s):.2f}")


if __name__ == "__main__":
    main()
