"""``fedveil``: operator commands.

    fedveil verify-chain PATH [--head HASH]     check a run's round chain; exit 1 where it breaks
                                                (alias: verify-ledger, after its file round_ledger.jsonl)
    fedveil verify-epsilon STATE_DIR...         check each owner's ε ledgers (sample- and owner-level): chain, spend,
                                                budget; exit 1 naming the file that fails
    fedveil verify-adapter DIR --roster FILE    check the owners' signed statements over the adapter in DIR;
            [--roster-key KEY] [--signatures DIR] [--min-owners N] [--run RUN]   exit 1 naming each that fails
    fedveil plan [overrides] [--json]           each backend against the stated threats, its cost, the pick
    fedveil report DIR... [--out DIR]           compare finished runs or a sweep: a table and plots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedveil.core.errors import UserError
from fedveil.privacy import provenance
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
    epsilon = sub.add_parser("verify-epsilon", help="check owners' ε ledgers (privacy_ledger.json, "
                             "owner_level_ledger.json): chain intact, spend as its accountant gives it, within budget")
    epsilon.add_argument("state_dirs", type=Path, nargs="+", metavar="STATE_DIR",
                         help="an owner's state directory (simulation: <run>/clients/client_K)")
    adapter = sub.add_parser("verify-adapter", help="check that the federation's owners signed the adapter in DIR")
    adapter.add_argument("dir", type=Path, help="the final adapter folder (PEFT files)")
    adapter.add_argument("--roster", type=Path, required=True,
                         help="the federation's roster (roster.json, or the operator-signed owner-roster.json)")
    adapter.add_argument("--roster-key", help="the operator's roster verify key (64 hex characters, or a file such as "
                         "pki/roster-operator.pub): --roster must be the owner-roster.json it signed")
    adapter.add_argument("--signatures", type=Path,
                         help=f"the folder of bundles (default: DIR/{provenance.SIGNATURES_DIR}, else beside DIR)")
    adapter.add_argument("--min-owners", type=int, help="pass with this many owners that trained and signed "
                         "(default: every rostered owner must sign)")
    adapter.add_argument("--run", help="the run id every statement must name (default: the one most name)")
    sub.add_parser("plan", help="each backend against the stated privacy.* threats, its cost, the pick "
                                "(fedveil plan [overrides] [--json])")
    sub.add_parser("report", help="compare finished runs or a multirun sweep: one table, comparison plots "
                                  "(fedveil report DIR... [--out DIR])")
    args = parser.parse_args(argv)
    if args.command == "verify-adapter":
        return verify_adapter(args)
    if args.command == "verify-epsilon":
        return verify_epsilon(args.state_dirs)
    path = args.path / round_chain.FILENAME if args.path.is_dir() else args.path
    ok, message = round_chain.verify(path, args.head)
    print(message if ok else f"fedveil: error: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def verify_epsilon(state_dirs: list[Path]) -> int:
    """``fedveil verify-epsilon``: a line per ledger that verifies, one error line per state directory that
    does not; exit 1 on any."""
    from fedveil.privacy.dp import ledger_check  # lazy: the accountants import torch; verify-chain starts without it

    failed = 0
    for state in state_dirs:
        try:
            print("\n".join(ledger_check.verify(state)), flush=True)  # in order with the error lines
        except ledger_check.LedgerError as exc:
            print(f"fedveil: error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def verify_adapter(args: argparse.Namespace) -> int:
    """``fedveil verify-adapter``: one line per owner that fails (and the coordinator's claim); exit 1 on any."""
    try:
        if args.min_owners is not None and args.min_owners < 1:
            raise UserError(f"--min-owners {args.min_owners}: give a positive number of owners")
        roster = provenance.load_roster_keys(args.roster, args.roster_key)
        bundles = provenance.load_bundles(args.signatures or provenance.signatures_of(args.dir))
        verdict = provenance.verify_adapter(args.dir, roster, bundles, args.min_owners, args.run)
    except UserError as exc:
        print(f"fedveil: error: {exc}", file=sys.stderr)
        return 2
    if verdict.claim:
        print(verdict.claim)
    for failure in verdict.failures:
        print(f"fedveil: error: {failure}", file=sys.stderr)
    if not verdict.ok:
        return 1
    print(f"adapter {args.dir}: signed by {len(verdict.valid)} rostered owners ({', '.join(verdict.valid)}); "
          f"{len(verdict.trained)} of them trained in the run")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
