"""The ServerApp: reads the experiment from the run config and runs the federation."""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedveil.configs.schema import from_run_config
from fedveil.core.console import quiet_libraries
from fedveil.server.federation import run_federation
from fedveil.server.prepare import prepare

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    quiet_libraries()
    run_federation(grid, prepare(from_run_config(context.run_config), report_data=False, check_dp=False))
