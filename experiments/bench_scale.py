"""Seconds per round and peak memory against the number of simulated owners, per backend and DP.

    .venv/bin/python -m fedveil.experiments.bench_scale [--owners 10,100,1000]
        [--configs plain,plain+dp,tenseal+dp,crypten] [--sample 0.1] [--rounds 3]
        [--steps 2] [--crypten-max 100] [[CONFIG:]OVERRIDE ...]

Quick subsets: ``--owners 10,100 --configs plain,plain+dp`` (the DP overhead at 100 owners, a few
minutes); ``--owners 1000 --configs plain`` (does 1,000 owners fit?). An override goes to every
run; prefixed with a configuration's name it goes to that configuration's runs only, e.g.
``tenseal+dp:aggregation.download=committee``.

Issue 23's acceptance line: ``--owners 1000 --configs plain+dp,tenseal+dp --rounds 2``. For each
number of owners measured with both, the last lines give round 2's CPU seconds tenseal+dp /
plain+dp against the goal (``CPU_RATIO_GOAL``) and each configuration's peak memory against
``PEAK_GOAL_GIB``; every tenseal run's line names the scheme and parameters it resolved for its
cohort (``aggregation.*`` as the run used them).

Each configuration is one run of the experiment runner (Flower's Simulation Engine, tiny model,
``train.local_steps=--steps``) in its own process and run directory, with ``clients_per_round`` =
``--sample`` of the owners (at least 3, crypten's minimum cohort). Per round the figures come from
the run's ``metrics.jsonl`` (``seconds.round``). Round 1 includes each simulation worker's one-off
DP noise planning; in the last round every owner evaluates (the final adapter's held-out loss over
the whole federation; with tenseal each owner writes its final adapter), the other rounds only the
sampled cohort. Peak memory is the largest sum, over one sampling of the run's whole process tree
(the runner, Ray's processes and workers, crypten's parties), of each process's proportional set
size (PSS: shared pages counted once across the tree; RSS where PSS cannot be read), sampled every
``--poll`` seconds. CPU seconds are the tree's user + system time (per round: between the moments
metrics.jsonl got the round's row; less sensitive than seconds to other jobs on a shared machine). It prints
one line per configuration as it finishes, then seconds per round against the number of owners per
configuration (the growth), and last the ratio DP / no DP per round at each number of owners, all
from this one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from omegaconf import OmegaConf

from fedveil.configs.schema import from_dict
from fedveil.core.metrics import METRICS_FILE, read_rows

CONFIGS = {  # name -> overrides
    "plain": ["aggregation=plain", "dp=off"],
    "plain+dp": ["aggregation=plain", "dp=sample_level", "dp.target_epsilon=8"],
    "tenseal+dp": ["aggregation=tenseal", "dp=sample_level", "dp.target_epsilon=8"],
    "crypten": ["aggregation=crypten", "dp=off"],
    "crypten+dp": ["aggregation=crypten", "dp=sample_level", "dp.target_epsilon=8"],
    "tenseal": ["aggregation=tenseal", "dp=off"],
}
MIN_COHORT = 3  # crypten reveals no aggregate of fewer owners (aggregation.min_owners)
# issue 23's goals: round 2's CPU seconds of tenseal+dp at most twice plain+dp's; peak memory per run
GOAL_ROUND, CPU_RATIO_GOAL, PEAK_GOAL_GIB = 2, 2.0, 2.2
SHOWN_PARAMETERS = ("scheme", "poly_modulus_degree", "plain_modulus_bits", "max_owners", "download")


class TreeMonitor:
    """Peak memory (sum of PSS, else RSS) and CPU seconds of a process and all its descendants."""

    def __init__(self, pid: int, interval: float, metrics: Path) -> None:
        self.root, self.interval, self.metrics = psutil.Process(pid), interval, metrics
        self.peak, self.peak_processes, self.cpu = 0, 0, {}
        self.peak_at_row, self.peak_by_role = 0, {}  # rows metrics.jsonl had at the peak; PSS by role then
        self.roles: dict[int, str] = {}  # pid -> role (role_of) when last seen
        self.at_rows: list[float] = []  # the tree's CPU seconds when metrics.jsonl got its k-th row
        self.at_rows_by_role: list[dict[str, float]] = []  # the same, by role
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> "TreeMonitor":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        total, by_role = 0, {}
        for p in procs:
            try:
                self.roles[p.pid] = role_of(p, self.root.pid)  # each time: Ray retitles a worker once it is an actor
                memory = memory_of(p)
                total += memory
                by_role[self.roles[p.pid]] = by_role.get(self.roles[p.pid], 0) + memory
                t = p.cpu_times()
                self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), t.user + t.system)
            except psutil.Error:  # gone meanwhile
                continue
        try:
            rows = self.metrics.read_bytes().count(b"\n")
        except OSError:
            rows = 0
        if total > self.peak:
            self.peak, self.peak_processes, self.peak_at_row, self.peak_by_role = total, len(procs), rows, by_role
        while len(self.at_rows) < rows:
            self.at_rows.append(self.cpu_seconds)
            self.at_rows_by_role.append(self.cpu_by_role())

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def cpu_by_role(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            out[self.roles.get(pid, "ray")] = out.get(self.roles.get(pid, "ray"), 0.0) + seconds
        return out


ROLES = ("runner", "owners", "ray")  # the coordinator and Simulation Engine; Ray's workers (owners); Ray's services


def role_of(p: psutil.Process, root: int) -> str:
    """Which part of the run a process of the tree is (``ROLES``)."""
    if p.pid == root:
        return "runner"
    try:
        cmdline = " ".join(p.cmdline())
    except psutil.Error:
        return "ray"
    name = p.name()  # Ray retitles its workers: ray::ClientAppActor.run (an owner), ray::IDLE; its agents too
    worker = name.startswith("ray::") or (name.startswith("python") and "default_worker.py" in cmdline)
    return "owners" if worker and "Agent" not in name + cmdline else "ray"


def memory_of(p: psutil.Process) -> int:
    try:
        return p.memory_full_info().pss
    except (psutil.AccessDenied, AttributeError):
        return p.memory_info().rss


def cohort(owners: int, sample: float) -> int:
    return min(owners, max(MIN_COHORT, round(owners * sample)))


def overrides_for(config: str, extra: list[str]) -> list[str]:
    """The overrides of one configuration's runs: its own, then every unprefixed one of ``extra`` and
    those prefixed ``config:`` (prefix removed)."""
    chosen = []
    for item in extra:
        head, sep, rest = item.partition(":")
        if sep and head in CONFIGS:
            if head == config:
                chosen.append(rest)
        else:
            chosen.append(item)
    return [*CONFIGS[config], *chosen]


def resolved_aggregation(out: Path) -> dict:
    """The aggregation parameters the run used (its composed config, resolved for its cohort as the
    runner resolves it), those in ``SHOWN_PARAMETERS`` the backend has."""
    cfg = from_dict(OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "config.yaml"), resolve=True))
    agg = cfg.aggregation
    return {"name": agg.name, **{k: getattr(agg, k) for k in SHOWN_PARAMETERS if hasattr(agg, k)}}


def run(out: Path, owners: int, config: str, args: argparse.Namespace) -> dict:
    per_round = cohort(owners, args.sample)
    cmd = [sys.executable, "-m", "fedveil.experiments.run", f"hydra.run.dir={out}", f"num_clients={owners}",
           f"clients_per_round={per_round}", f"rounds={args.rounds}", f"train.local_steps={args.steps}",
           *overrides_for(config, args.extra)]
    log = out.with_suffix(".log")
    start = time.perf_counter()
    with open(log, "w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        with TreeMonitor(proc.pid, args.poll, out / METRICS_FILE) as monitor:
            code = proc.wait()
    wall = time.perf_counter() - start
    if code != 0:
        tail = log.read_text().strip().splitlines()[-5:]
        raise SystemExit(f"bench_scale: run failed ({owners} owners, {config}): " + " | ".join(tail))
    trained = [r for r in read_rows(out) if r.trained]
    return {"owners": owners, "config": config, "clients_per_round": per_round,
            "seconds_per_round": [r.seconds.round for r in trained],
            "seconds_evaluate": [r.seconds.evaluate for r in trained],
            "cpu_seconds_per_round": [b - a for a, b in zip(monitor.at_rows, monitor.at_rows[1:])],
            "cpu_seconds_per_round_by_role": [{k: b.get(k, 0.0) - a.get(k, 0.0) for k in ROLES}
                                              for a, b in zip(monitor.at_rows_by_role, monitor.at_rows_by_role[1:])],
            "peak_at": "set-up" if monitor.peak_at_row == 0 else
                       "the outputs after the last round" if monitor.peak_at_row > args.rounds else
                       f"round {monitor.peak_at_row}",
            "peak_memory_by_role": monitor.peak_by_role,
            "peak_memory_bytes": monitor.peak, "processes_at_peak": monitor.peak_processes,
            "cpu_seconds": monitor.cpu_seconds, "wall_seconds": wall,
            "console_lines": len(log.read_text().splitlines()), "aggregation": resolved_aggregation(out)}


def fmt_rounds(values: list[float]) -> str:
    return " / ".join(f"{s:.1f}" for s in values)


def fmt_roles(values: dict[str, float], unit: float, name: str) -> str:
    return ", ".join(f"{role} {values.get(role, 0) / unit:.{2 if name == 'GiB' else 1}f} {name}" for role in ROLES)


def fmt_aggregation(agg: dict) -> str:
    """``tenseal (scheme bfv, poly_modulus_degree 4096, ...)``: what the run resolved for its cohort."""
    shown = ", ".join(f"{k} {v}" for k, v in agg.items() if k != "name")
    return f"{agg['name']} ({shown})" if shown else agg["name"]


def goal_lines(results: list[dict], goal_round: int = GOAL_ROUND) -> list[str]:
    """Issue 23's figures: per number of owners, round ``goal_round``'s CPU seconds tenseal+dp / plain+dp
    against ``CPU_RATIO_GOAL``, and each run's peak memory against ``PEAK_GOAL_GIB``."""
    lines = []
    for owners in sorted({r["owners"] for r in results}):
        at = {r["config"]: r for r in results if r["owners"] == owners}
        base, secure = at.get("plain+dp"), at.get("tenseal+dp")
        if base and secure:
            i = goal_round - 1  # cpu_seconds_per_round[i]: round i + 1 (from round 0's row to round 1's first)
            if 0 <= i < min(len(base["cpu_seconds_per_round"]), len(secure["cpu_seconds_per_round"])):
                a, b = base["cpu_seconds_per_round"][i], secure["cpu_seconds_per_round"][i]
                ratio = b / a if a > 0 else float("inf")
                lines.append(f"{owners:5d} owners: round {goal_round} CPU seconds tenseal+dp / plain+dp = {b:.1f} / "
                             f"{a:.1f} = x{ratio:.2f} (goal <= x{CPU_RATIO_GOAL:g}: "
                             f"{'met' if ratio <= CPU_RATIO_GOAL else 'NOT met'}; "
                             f"{fmt_aggregation(secure['aggregation'])})")
            else:
                lines.append(f"{owners:5d} owners: no round {goal_round} to compare (--rounds {goal_round} or more)")
        for config, r in sorted(at.items()):
            gib = r["peak_memory_bytes"] / 2**30
            lines.append(f"{owners:5d} owners: {config} peak memory {gib:.2f} GiB (goal <= {PEAK_GOAL_GIB:g} GiB: "
                         f"{'met' if gib <= PEAK_GOAL_GIB else 'NOT met'})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--owners", default="10,100,1000")
    parser.add_argument("--configs", default="plain,plain+dp,tenseal+dp,crypten",
                        help=f"comma-separated, of {', '.join(CONFIGS)}")
    parser.add_argument("--sample", type=float, default=0.1, help="share of owners sampled to train each round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--crypten-max", type=int, default=100, help="crypten runs only up to this many owners")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--keep", default=None, help="keep the run directories under this path")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("extra", nargs="*", help="more overrides for every run, e.g. data.demo_examples=60")
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config {unknown[0]!r}: choose from {', '.join(CONFIGS)}")
    for item in args.extra:  # a prefix that names no measured configuration would silently do nothing
        head, sep, _ = item.partition(":")
        if sep and "=" not in head and head not in configs:
            parser.error(f"override {item!r} is for configuration {head!r}, which this invocation does not run "
                         f"(--configs {args.configs}): drop it or add {head!r} to --configs")
    owner_counts = [int(n) for n in args.owners.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        root.mkdir(parents=True, exist_ok=True)
        for owners in owner_counts:
            for config in configs:
                if config.startswith("crypten") and owners > args.crypten_max:
                    continue
                r = run(root / f"{owners}_{config.replace('+', '_')}", owners, config, args)
                results.append(r)
                print(
                    f"{owners:5d} owners {config:11s} ({r['clients_per_round']} per round): seconds per round "
                    f"{fmt_rounds(r['seconds_per_round'])} (rounds 1..{args.rounds}; evaluation "
                    f"{fmt_rounds(r['seconds_evaluate'])}); CPU seconds per round "
                    f"{fmt_rounds(r['cpu_seconds_per_round'])}; "
                    f"peak memory {r['peak_memory_bytes'] / 2**30:.2f} GiB ({r['processes_at_peak']} processes, in "
                    f"{r['peak_at']}: {fmt_roles(r['peak_memory_by_role'], 2**30, 'GiB')}); CPU seconds per round by "
                    f"role {' / '.join(fmt_roles(c, 1, 's') for c in r['cpu_seconds_per_round_by_role'])}; "
                    f"CPU {r['cpu_seconds']:.0f} s and {r['wall_seconds']:.0f} s for the whole run; "
                    f"{r['console_lines']} console lines; aggregation {fmt_aggregation(r['aggregation'])}",
                    flush=True,
                )
    print(f"\nseconds per round, rounds 1..{args.rounds} (CPU seconds of the process tree) | peak memory, by owners:")
    for config in configs:
        cells = [f"{r['owners']}: {fmt_rounds(r['seconds_per_round'])} ({fmt_rounds(r['cpu_seconds_per_round'])}) | "
                 f"{r['peak_memory_bytes'] / 2**30:.2f} GiB" for r in results if r["config"] == config]
        if cells:
            print(f"  {config:11s} " + "; ".join(cells))
    print(f"DP / no DP per round, rounds 1..{args.rounds} (round 1 includes each simulation worker's one-off noise "
          f"planning; in round {args.rounds} every owner evaluates):")
    for base in sorted({c.replace("+dp", "") for c in configs if c.endswith("+dp")}):
        for owners in owner_counts:
            off = next((r for r in results if r["owners"] == owners and r["config"] == base), None)
            on = next((r for r in results if r["owners"] == owners and r["config"] == f"{base}+dp"), None)
            if off and on:
                wall = [b / a for a, b in zip(off["seconds_per_round"], on["seconds_per_round"])]
                cpu = [b / a for a, b in zip(off["cpu_seconds_per_round"], on["cpu_seconds_per_round"]) if a > 0]
                print(f"{owners:5d} owners: {base}+dp / {base} seconds x{' / x'.join(f'{x:.2f}' for x in wall)}; "
                      f"CPU seconds x{' / x'.join(f'{x:.2f}' for x in cpu)}")
    goals = goal_lines(results)
    if goals:
        print(f"issue 23's goals (round {GOAL_ROUND}, CPU seconds of the process tree; peak memory of the tree):")
        for line in goals:
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
