"""The ServerApp: reads the experiment from the run config and runs the federation.

A :class:`UserError` that ends the run (e.g. a round in which no owner trained) is printed as one
line and written to ``<output_dir>/run_error.txt``, which the runner turns into a non-zero exit.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedveil.configs.schema import from_run_config
from fedveil.core.console import progress, quiet_libraries
from fedveil.core.errors import UserError
from fedveil.server.federation import run_federation
from fedveil.server.outputs import write_run_error
from fedveil.server.prepare import prepare

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_libraries()
    try:  # e.g. resume=true with nothing to resume: one line, nothing written
        cfg = prepare(from_run_config(context.run_config), report_data=False, check_dp=False)
    except UserError as exc:
        progress(f"error: {exc}")
        return
    try:
        run_federation(grid, cfg)
    except UserError as exc:
        progress(f"error: {exc}")
        write_run_error(cfg.output_dir, str(exc))
