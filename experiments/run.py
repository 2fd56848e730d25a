"""Run one experiment, or a sweep with ``-m``, from the Hydra config tree in ``configs/``.

    python -m fedveil.experiments.run hydra.run.dir=out/demo seed=1 rounds=3 num_clients=3 \\
        aggregation=plain dp=off
    python -m fedveil.experiments.run -m seed=0,1,2 train.lr=1e-3,3e-3

Steps: compose and validate the config, build the tiny model and the demo data where asked,
check every owner's data, then run the federation on Flower's Simulation Engine. Outputs land
in Hydra's run directory (``hydra.run.dir``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no phoning home, read at flwr import
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import hydra  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from fedveil.configs.schema import FedveilConfig, from_dict, register_schemas  # noqa: E402
from fedveil.core.errors import UserError  # noqa: E402
from fedveil.core.console import quiet_libraries  # noqa: E402

CONFIG_MODULE = "fedveil.configs"


def fail(message: str) -> None:
    print(f"fedveil: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def hydra_error_line(exc: BaseException) -> str:
    """Hydra/OmegaConf errors span lines and chains; say which key and what is wrong in one."""
    hint = " (valid keys and values: configs/ and the README's 'Experiment overrides')"
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


def validate_overrides(overrides: list[str]) -> None:
    """Compose once before Hydra starts, so a bad key or value is one line, not a report."""
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    job_overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    try:
        with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            cfg = compose("config", overrides=job_overrides)
            from_dict(OmegaConf.to_container(cfg, resolve=True))
    except (HydraException, OmegaConfBaseException) as exc:
        fail(hydra_error_line(exc))
    except UserError as exc:
        fail(str(exc))


def run_experiment(cfg: FedveilConfig) -> dict:
    """Prepare and run one experiment; returns the run summary."""
    from fedveil.experiments.simulation import run_in_simulation
    from fedveil.server.prepare import prepare
    from fedveil.server.outputs import read_metrics

    prepare(cfg)  # fail fast, before the Simulation Engine starts
    out = Path(cfg.output_dir)
    run_in_simulation(cfg)
    if not (out / "summary.json").is_file():
        rows = read_metrics(out)
        raise RuntimeError(f"the federation ended without a summary (rounds logged: {len(rows)}); see the log above")
    import json

    return json.loads((out / "summary.json").read_text())


@hydra.main(config_path=f"pkg://{CONFIG_MODULE}", config_name="config", version_base="1.3")
def hydra_main(dcfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    quiet_libraries()
    values = OmegaConf.to_container(dcfg, resolve=True)
    values["output_dir"] = HydraConfig.get().runtime.output_dir
    try:
        summary = run_experiment(from_dict(values))
    except UserError as exc:
        fail(str(exc))
    return summary.get("final_eval_loss")


def main() -> None:
    register_schemas()
    quiet_libraries()
    args = sys.argv[1:]
    if not any(a.startswith("-") for a in args):  # a plain run: check the overrides up front
        validate_overrides(args)
    hydra_main()


if __name__ == "__main__":
    main()
