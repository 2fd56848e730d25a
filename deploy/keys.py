"""Certificates and keys for a fedveil deployment (``fedveil.core.pki``, the `cryptography` library).

    python deploy/keys.py ca          DIR                   # DIR/ca.crt, DIR/ca.key
    python deploy/keys.py server      DIR HOST [HOST ...]   # DIR/server.pem, server.key (the SuperLink's)
    python deploy/keys.py node        DIR NAME              # DIR/NAME.key (OpenSSH, P-384), DIR/NAME.pub
    python deploy/keys.py party       DIR RANK HOST [HOST ...]  # DIR/party-RANK.pem, .key (a party's server cert)
    python deploy/keys.py coordinator DIR                   # DIR/coordinator.pem, .key (client cert,
                                                            # CN fedveil-coordinator)
    python deploy/keys.py owner-key   STATE_DIR             # prints an owner's Ed25519 verify key
                                                            # (hex; made if missing)
    python deploy/keys.py roster      DIR OWNER=HEX [...]   # DIR/owner-roster.json signed with DIR/roster-operator.key
                                                            # (made if missing; keep it with the operator), and
                                                            # DIR/roster-operator.pub: what every party pins

Every certificate is signed by DIR/ca.*. Private keys are created with mode 0600 (never readable
by others, not even for a moment). Existing files are kept (re-running is safe); ``roster``
re-signs the roster it is given.
"""

from __future__ import annotations

import sys
from pathlib import Path

from fedveil.core.errors import UserError
from fedveil.core.pki import COORDINATOR_CN, make_ca, make_cert, make_node_key
from fedveil.privacy.secagg.identity import OwnerKeys, write_signed_roster


def main(argv: list[str]) -> int:
    need = {"ca": 2, "server": 3, "node": 3, "party": 4, "coordinator": 2, "owner-key": 2, "roster": 3}
    if len(argv) < 2 or argv[0] not in need or len(argv) < need[argv[0]]:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "owner-key":  # run on the owner's host: its identity key never leaves it, only this line
        print(OwnerKeys("", argv[1]).member().verify_key.hex())
        return 0
    if argv[0] == "roster":
        try:
            owners = {o: bytes.fromhex(k) for o, _, k in (a.partition("=") for a in argv[2:])}
            if not all(o and len(k) == 32 for o, k in owners.items()):
                raise ValueError("an owner without an id or a 32-byte key")
            path, key = write_signed_roster(argv[1], owners)
        except (ValueError, UserError) as exc:
            print(f"deploy/keys.py: error: roster: {exc}; give OWNER=<64 hex> per owner "
                  f"(keys.py owner-key STATE_DIR prints it)", file=sys.stderr)
            return 2
        print(f"signed roster of {len(owners)} owners: {path} (roster key {key.hex()[:16]}..., parties pin "
              f"{Path(argv[1]) / 'roster-operator.pub'})")
        return 0
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
