"""Seconds per round against the number of simulated owners, with and without DP.

    .venv/bin/python -m fedveil.experiments.bench_scale [--owners 10,100] [--rounds 2] [--steps 2]

Each configuration is one run of the experiment runner (Flower's Simulation Engine, tiny model,
``train.local_steps=--steps``) in its own process and run directory; the figures come from the
run's ``metrics.jsonl`` (``seconds.round`` per round, and the time spent in the measured phases:
the slowest owner's training, aggregation, evaluation). It prints one line per configuration and
the ratio DP / no DP at each number of owners, all from this one invocation. Round 1 includes each
simulation worker's one-off DP noise planning; later rounds are the steady state.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, owners: int, dp: bool, rounds: int, steps: int, extra: list[str]) -> dict:
    args = [sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", f"num_clients={owners}",
            f"rounds={rounds}", f"train.local_steps={steps}", "aggregation=plain",
            *(["dp=sample_level", "dp.target_epsilon=8"] if dp else ["dp=off"]), *extra]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"bench_scale: run failed ({owners} owners, dp={dp}): {proc.stderr.strip()[-500:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r["round"] > 0]
    per_round = [r["seconds"]["round"] for r in trained]
    phases = [r["seconds"]["train"] + r["seconds"]["aggregate"] + r["seconds"]["evaluate"] for r in trained]
    return {"owners": owners, "dp": dp, "seconds_per_round": per_round, "measured_phases": phases, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--owners", default="10,100")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("extra", nargs="*", help="more overrides for every run, e.g. data.demo_examples=60")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for owners in (int(n) for n in args.owners.split(",")):
            for dp in (False, True):
                r = run(Path(tmp) / f"{owners}_{int(dp)}", owners, dp, args.rounds, args.steps, args.extra)
                results.append(r)
                print(f"{owners:5d} owners dp={'on ' if dp else 'off'}: seconds per round "
                      f"{' / '.join(f'{s:.1f}' for s in r['seconds_per_round'])} (rounds 1..{args.rounds}); "
                      f"train+aggregate+evaluate {' / '.join(f'{s:.1f}' for s in r['measured_phases'])}; "
                      f"whole run {r['wall']:.0f} s", flush=True)
    for owners in sorted({r["owners"] for r in results}):
        off, on = (next(r for r in results if r["owners"] == owners and r["dp"] is d) for d in (False, True))
        ratios = [b / a for a, b in zip(off["seconds_per_round"], on["seconds_per_round"])]
        print(f"{owners:5d} owners: DP / no DP seconds per round x{' / x'.join(f'{x:.2f}' for x in ratios)} "
              f"(rounds 1..{len(ratios)})")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
