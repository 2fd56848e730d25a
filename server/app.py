"""The ServerApp: reads the experiment from the run config and runs the federation.

A :class:`UserError` that ends the run (e.g. a round in which no owner trained) is printed as one
line and written to ``<output_dir>/run_error.txt``, which the runner turns into a non-zero exit.
At the end the run's outputs (report.md, then summary.json, once) are written; the simulation
runner builds its own ServerApp (:func:`server_app`) that hands it the summary instead, since it
adds what only it knows (the plan it printed first, the owners' own logs) before the one write.
"""

from __future__ import annotations

from typing import Callable, Optional

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedveil.configs.schema import from_run_config
from fedveil.core.console import progress, quiet_libraries
from fedveil.core.errors import UserError
from fedveil.core.metrics import RunSummary
from fedveil.server.federation import run_federation
from fedveil.server.outputs import write_outputs, write_run_error
from fedveil.server.prepare import prepare


def server_app(keep_summary: Optional[Callable[[RunSummary], None]] = None) -> ServerApp:
    """The ServerApp; at the end it writes the run's outputs, or gives the summary to ``keep_summary``."""
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
            summary = run_federation(grid, cfg)
        except UserError as exc:
            progress(f"error: {exc}")
            write_run_error(cfg.output_dir, str(exc))
            return
        if keep_summary is not None:
            keep_summary(summary)
        else:
            write_outputs(cfg.output_dir, summary)

    return app


app = server_app()  # pyproject's [tool.flwr.app.components] serverapp (flwr run, the deployment)
