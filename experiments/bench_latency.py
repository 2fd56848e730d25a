"""What an owner's training latency says about its data size under DP (a residual channel).

    .venv/bin/python -m fedveil.experiments.bench_latency [--sizes 100,400] [--rounds 8] [--steps 2]

Under DP an owner releases no timings, but the coordinator still sees how long a train message
takes. With Poisson sampling the expected batch is q·n, so a step's work, and the message's
latency, grow with the owner's record count n. This bench plays one owner per size on the tiny
model, sends each the same DP train messages (interleaved, so machine noise hits both), and prints
the median latency per size, their ratio and the correlation of latency with n over all messages.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from fedveil.client.operations import handle
from fedveil.client.owner import Owner, OwnerIdentity
from fedveil.client.protocol import Instruction
from fedveil.configs.schema import from_dict, to_run_config
from fedveil.core import wire
from fedveil.core.console import quiet_libraries
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import TinySpec
from fedveil.task.tiny import build_tiny_model


def correlation(xs: list[float], ys: list[float]) -> float:
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    cov = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    return cov / (sum((x - mx) ** 2 for x in xs) * sum((y - my) ** 2 for y in ys)) ** 0.5


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,400", help="owners' record counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="train.local_steps")
    parser.add_argument("--sample-rate", type=float, default=0.1)
    args = parser.parse_args(argv)
    quiet_libraries()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench_latency_"))
    model = build_tiny_model(TinySpec(arch="gpt2", hidden=64, layers=2, heads=4), root / "model")
    cfg = from_dict({"seed": 1, "rounds": args.rounds, "num_clients": 1, "output_dir": str(root / "run"),
                     "model": {"path": str(model)}, "data": {"max_length": 64},
                     "train": {"local_steps": args.steps}, "aggregation": {"name": "plain"},
                     "dp": {"name": "sample_level", "target_epsilon": 8.0, "delta": 1e-5,
                            "sample_rate": args.sample_rate, "accountant": "rdp"}})
    owners = {n: OwnerIdentity(f"owner_{n}", write_demo_data(root / f"data_{n}", 1, n, seed=n)[0], str(root / f"s{n}"))
              for n in sizes}
    start = Owner(cfg, owners[sizes[0]])
    latencies: dict[int, list[float]] = {n: [] for n in sizes}
    for server_round in range(1, args.rounds + 1):
        for n in (sizes if server_round % 2 else sizes[::-1]):  # interleaved: drift hits every size alike
            instruction = Instruction(
                "train",
                to_run_config(cfg),
                {wire.ROUND: server_round, wire.LAYOUT_DIGEST: start.layout.digest},
                {wire.CLEAR_GLOBAL: start.initial},
            )
            t0 = time.perf_counter()
            handle(instruction, owners[n], cfg)
            latencies[n].append(time.perf_counter() - t0)
    for n in sizes:
        latencies[n] = latencies[n][1:]  # round 1 loads and tokenizes the owner's data
    medians = {n: statistics.median(v) for n, v in latencies.items()}
    fastest = {n: min(v) for n, v in latencies.items()}  # least disturbed by other load on the machine
    xs = [float(n) for n in sizes for _ in latencies[n]]
    ys = [t for n in sizes for t in latencies[n]]
    result = {"median_seconds": medians, "min_seconds": fastest, "ratio": medians[sizes[-1]] / medians[sizes[0]],
              "min_ratio": fastest[sizes[-1]] / fastest[sizes[0]],
              "correlation_with_n": correlation(xs, ys), "messages_per_size": len(latencies[sizes[0]])}
    print(f"DP train message latency, q={args.sample_rate}, local_steps={args.steps}, tiny gpt2:")
    for n in sizes:
        print(f"  n={n:5d}: median {medians[n] * 1e3:7.1f} ms, fastest {fastest[n] * 1e3:7.1f} ms "
              f"over {len(latencies[n])} messages")
    print(f"  ratio of medians {result['ratio']:.2f}, of the fastest {result['min_ratio']:.2f}; "
          f"correlation of latency with n: {result['correlation_with_n']:.2f}")
    return result


if __name__ == "__main__":
    main()
