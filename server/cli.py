"""``fedveil``: operator commands.

    fedveil verify-chain PATH [--head HASH]     check a run's round chain; exit 1 where it breaks
                                                (alias: verify-ledger, after its file round_ledger.jsonl)
    fedveil plan [overrides] [--json]           each backend against the stated threats, its cost, the pick
    fedveil report DIR... [--out DIR]           compare finished runs or a sweep: a table and plots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedveil.server import round_chain


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["plan"]:  # overrides look like key=value, so the planner parses its own arguments
        from fedveil.experiments.plan import main as plan_main  # lazy: verify-chain starts without Hydra or torch

        return plan_main(argv[1:])
    if argv[:1] == ["report"]:
        from fedveil.experiments.report import main as report_main  # lazy: verify-chain starts without Hydra or torch

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fedveil", description="fedveil operator commands")
    sub = parser.add_subparsers(dest="command", required=True)
    # verify-ledger: the name deployments and scripts already type, after the file's historical name
    check = sub.add_parser("verify-chain", aliases=["verify-ledger"],
                           help=f"check a run's round chain ({round_chain.FILENAME}) for tampering")
    check.add_argument("path", type=Path, help=f"{round_chain.FILENAME}, or a run directory holding one")
    check.add_argument("--head", help="expected hash of the last entry (summary.json's ledger_head)")
    sub.add_parser("plan", help="each backend against the stated privacy.* threats, its cost, the pick "
                                "(fedveil plan [overrides] [--json])")
    sub.add_parser("report", help="compare finished runs or a multirun sweep: one table, comparison plots "
                                  "(fedveil report DIR... [--out DIR])")
    args = parser.parse_args(argv)
    path = args.path / round_chain.FILENAME if args.path.is_dir() else args.path
    ok, message = round_chain.verify(path, args.head)
    print(message if ok else f"fedveil: error: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
