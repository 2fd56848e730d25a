"""Certificates and keys for a fedveil deployment (``fedveil.core.pki``, the `cryptography` library).

    python deploy/keys.py ca          DIR                   # DIR/ca.crt, DIR/ca.key
    python deploy/keys.py server      DIR HOST [HOST ...]   # DIR/server.pem, server.key (the SuperLink's)
    python deploy/keys.py node        DIR NAME              # DIR/NAME.key (OpenSSH, P-384), DIR/NAME.pub
    python deploy/keys.py party       DIR RANK HOST [HOST ...]  # DIR/party-RANK.pem, .key (a party's server cert)
    python deploy/keys.py coordinator DIR                   # DIR/coordinator.pem, .key (client cert, CN fedveil-coordinator)

Every certificate is signed by DIR/ca.*. Private keys are created with mode 0600 (never readable
by others, not even for a moment). Existing files are kept (re-running is safe).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedveil.core.pki import COORDINATOR_CN, make_ca, make_cert, make_node_key


def main(argv: list[str]) -> int:
    need = {"ca": 2, "server": 3, "node": 3, "party": 4, "coordinator": 2}
    if len(argv) < 2 or argv[0] not in need or len(argv) < need[argv[0]]:
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(argv[1])
    d.mkdir(parents=True, exist_ok=True)
    if argv[0] == "ca":
        make_ca(d)
    elif argv[0] == "server":
        make_cert(d, "server", argv[2], argv[2:])
    elif argv[0] == "node":
        make_node_key(d, argv[2])
    elif argv[0] == "party":
        make_cert(d, f"party-{int(argv[2])}", f"fedveil-party-{int(argv[2])}", argv[3:])
    else:
        make_cert(d, "coordinator", COORDINATOR_CN, client=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
