"""``fedveil``: operator commands.

    fedveil verify-ledger PATH [--head HASH]    check a round ledger's hash chain; exit 1 where it breaks
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedveil.server.round_chain import verify


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedveil", description="fedveil operator commands")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify-ledger", help="check a round ledger (round_ledger.jsonl) for tampering")
    check.add_argument("path", type=Path, help="round_ledger.jsonl, or a run directory holding one")
    check.add_argument("--head", help="expected hash of the last entry (summary.json's ledger_head)")
    args = parser.parse_args(argv)
    path = args.path / "round_ledger.jsonl" if args.path.is_dir() else args.path
    ok, message = verify(path, args.head)
    print(message if ok else f"fedveil: error: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
