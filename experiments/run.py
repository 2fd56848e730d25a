"""Run one experiment, or a sweep with ``-m``, from the Hydra config tree in ``configs/``.

    python -m fedveil.experiments.run hydra.run.dir=out/demo seed=1 rounds=3 num_clients=3 \\
        aggregation=plain dp=off
    python -m fedveil.experiments.run -m seed=0,1,2 train.lr=1e-3,3e-3

Steps: compose and validate the config, plan the run (``fedveil plan``'s decision, made once: it
also resolves ``aggregation=auto``), build the tiny model and the demo data where asked, check
every owner's data, print the plan, run the federation on Flower's Simulation Engine, then write
summary.json once (the coordinator's summary with the plan, planned vs measured and, under DP,
the owners' own held-out losses) and the run's plots. Outputs land in Hydra's run directory
(``hydra.run.dir``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no phoning home, read at flwr import
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import hydra  # noqa: E402
from hydra import compose, initialize_config_module  # noqa: E402
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from hydra.errors import HydraException  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402
from omegaconf.errors import OmegaConfBaseException  # noqa: E402

from fedveil.client.owner import EVALUATIONS_FILE  # noqa: E402
from fedveil.configs.schema import FedveilConfig, from_dict, register_schemas  # noqa: E402
from fedveil.core.console import progress, quiet_libraries  # noqa: E402
from fedveil.core.disk import owner_state_dir  # noqa: E402
from fedveil.core.errors import UserError  # noqa: E402
from fedveil.core.io import read_jsonl  # noqa: E402
from fedveil.core.metrics import PHASES, MetricsRow, RunSummary, read_rows, seconds_figure  # noqa: E402
from fedveil.experiments.plan import planned_run, planned_vs_measured, render  # noqa: E402
from fedveil.experiments.plots import plot_run  # noqa: E402
from fedveil.experiments.simulation import run_in_simulation  # noqa: E402
from fedveil.server.checkpoint import check_resumable  # noqa: E402
from fedveil.server.outputs import check_run_dir, clear_earlier_run, read_run_error, write_outputs  # noqa: E402
from fedveil.server.prepare import check_devices, check_inputs, prepare  # noqa: E402

CONFIG_MODULE = "fedveil.configs"


def fail(message: str) -> None:
    print(f"fedveil: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def hydra_error_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines and chains; say which key and what is wrong in one."""
    hint = " (valid keys and values: configs/ and docs/experiments.md, 'Experiment overrides')"
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    for err in chain:  # OmegaConf errors name the offending key
        key, msg = getattr(err, "full_key", None), getattr(err, "msg", None)
        if key and msg and "$" not in msg:
            msg = msg.split("\n")[0]
            if " not in " in msg:
                return f"unknown config key '{key}': check its spelling{hint}"
            return f"config key '{key}': {msg}{hint}"
    first = " ".join(line.strip() for line in str(chain[0]).splitlines() if line.strip())
    return first.split(" Config search path")[0] + hint


def job_overrides(overrides: list[str]) -> list[str]:
    """The overrides of the job's config (Hydra's own, ``hydra.*`` and ``hydra/...``, set the runner up)."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """Every job of a ``-m`` sweep, as Hydra's basic sweeper will launch them (in its order)."""
    return BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]


def validate_jobs(overrides: list[str], sweep: bool) -> None:
    """Compose and check every job before Hydra starts any, so a bad key, value, input path or an
    earlier run in a job's directory (or ``resume=true`` with none) is one line and no job has run yet.

    ``aggregation=auto`` is resolved here without the adapter's size (a pure check of the config);
    each job's run plans with it (:func:`hydra_main`), once."""
    where = ""
    try:
        jobs = sweep_jobs(overrides) if sweep else [overrides]
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            for num, job in enumerate(jobs):
                where = f"sweep job {num} ({' '.join(job_overrides(job))}): " if sweep else ""
                dcfg = compose("config", overrides=[*job, *([f"hydra.job.num={num}"] if sweep else [])],
                               return_hydra_config=True)
                h = dcfg.hydra
                out = f"{h.sweep.dir}/{h.sweep.subdir}" if sweep else str(h.run.dir)
                with open_dict(dcfg):
                    del dcfg["hydra"]
                cfg = from_dict(OmegaConf.to_container(dcfg, resolve=True))
                check_run_dir(out, cfg.resume, cfg.overwrite)
                if cfg.resume:
                    check_resumable(out)
                check_inputs(cfg)
                check_devices(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        fail(where + hydra_error_line(exc))
    except UserError as exc:
        fail(where + str(exc))


def run_experiment(cfg: FedveilConfig, plan: dict) -> RunSummary:
    """Prepare and run one experiment planned as ``plan`` (printed once the inputs are checked,
    before the federation starts); writes summary.json, once, and the run's plots."""
    check_run_dir(cfg.output_dir, cfg.resume, cfg.overwrite)  # before anything is written there
    check_devices(cfg)
    if cfg.overwrite:
        clear_earlier_run(cfg.output_dir)
    prepare(cfg, write_policies=True)  # fail fast, before the Simulation Engine starts
    check_limits(cfg, plan)
    for line in render(plan).splitlines():
        progress(f"plan | {line}")
    out = Path(cfg.output_dir)
    coordinators = run_in_simulation(cfg)
    error = read_run_error(out)
    if error:
        raise UserError(error)
    if coordinators is None:
        raise RuntimeError(f"the federation ended without a summary (rounds logged: {len(read_rows(out))}); "
                           "see the log above")
    summary = runner_summary(coordinators, plan, read_rows(out),
                             owners_eval_losses(out, cfg.num_clients) if cfg.dp.name != "off" else None)
    write_outputs(out, summary)
    report_summary(summary)
    plots = plot_run(out)
    progress(f"plots: {', '.join(sorted(plots))} in {out / 'plots'}")
    return summary


def runner_summary(coordinators: RunSummary, plan: dict, rows: list[MetricsRow],
                   owners_losses: dict[int, float] | None) -> RunSummary:
    """The coordinator's summary with what the runner adds: the plan it printed first, planned vs
    measured per figure, and (simulation under DP) the owners' held-out losses from their own logs."""
    compared = planned_vs_measured(plan, rows, coordinators.max_epsilon)
    return replace(coordinators, plan=plan, planned_vs_measured=compared, owners_eval_loss_by_round=owners_losses)


def report_summary(summary: RunSummary) -> None:
    """The runner's additions to the summary, on the console."""
    losses = summary.owners_eval_loss_by_round
    if losses:
        (r0, first), (r1, last) = min(losses.items()), max(losses.items())
        progress(f"owners' held-out loss (their own logs; under DP never sent to the server): "
                 f"{first:.4f} (round {r0}) -> {last:.4f} (round {r1})")
    shown = [f"{name.replace('_per_owner_per_round', '/owner/round')} x{f.ratio:.3f}"
             for name, f in (summary.planned_vs_measured or {}).items()
             if f.ratio is not None and name not in {seconds_figure(p) for p in PHASES}]
    if shown:
        progress("measured / planned: " + ", ".join(shown) + " (all figures: summary.json planned_vs_measured)")


def check_limits(cfg: FedveilConfig, plan: dict) -> None:
    """``privacy.max_bytes_per_round`` / ``max_seconds_per_round``: refuse at start a named backend over
    them (``aggregation=auto`` already picked within them), at the cost the plan priced for the run."""
    p, cost = cfg.privacy, plan["run"]
    if p.max_bytes_per_round is not None and cost["per_owner"] > p.max_bytes_per_round:
        raise UserError(f"aggregation={cfg.aggregation.name} moves {cost['per_owner']:,} bytes per owner per round, "
                        f"over privacy.max_bytes_per_round={p.max_bytes_per_round:,}: raise the limit or relax the "
                        "threats (see `fedveil plan`)")
    if p.max_seconds_per_round is not None and cost["seconds"] > p.max_seconds_per_round:
        raise UserError(f"aggregation={cfg.aggregation.name} adds ~{cost['seconds']:.2f} s per round, over "
                        f"privacy.max_seconds_per_round={p.max_seconds_per_round:g}: raise the limit or relax the "
                        "threats (see `fedveil plan`)")


def owners_eval_losses(out: Path, num_owners: int) -> dict[int, float]:
    """Simulation only (the runner plays every owner): the federation-level held-out loss per round,
    token-weighted over the owners' own logs. Under DP no owner sends its loss to the coordinator,
    so in a deployment nobody but each owner sees these figures."""
    per_round: dict[int, dict[int, tuple[float, int]]] = {}
    for k in range(num_owners):
        for row in read_jsonl(owner_state_dir(out, k) / EVALUATIONS_FILE):
            if row.get("run") == str(out) and "eval_loss" in row:
                per_round.setdefault(int(row["round"]), {})[k] = (float(row["eval_loss"]), int(row["eval_tokens"]))
    return {r: sum(loss * n for loss, n in owners.values()) / max(1, sum(n for _, n in owners.values()))
            for r, owners in sorted(per_round.items())}


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")
def hydra_main(dcfg: DictConfig) -> float | None:
    quiet_libraries()
    values = OmegaConf.to_container(dcfg, resolve=True)
    values["output_dir"] = HydraConfig.get().runtime.output_dir
    try:
        cfg, plan = planned_run(values)  # the planner, once for this run
        if cfg is None:
            fail(plan["reason"])
        if plan["requested"] == "auto":
            progress(f"planner (aggregation=auto): {plan['reason']}"
                     + (f"; DP-SGD to epsilon {cfg.dp.target_epsilon:g}" if cfg.privacy.epsilon is not None else ""))
        summary = run_experiment(cfg, plan)
    except UserError as exc:
        fail(str(exc))
    return summary.final_eval_loss


def main() -> None:
    register_schemas()
    quiet_libraries()
    args = sys.argv[1:]
    flags = {a for a in args if a.startswith("-")}
    if flags <= {"-m", "--multirun"}:  # a run or a sweep (not --help, --cfg, ...): check every job up front
        validate_jobs([a for a in args if not a.startswith("-")], sweep=bool(flags))
    hydra_main()


if __name__ == "__main__":
    main()
