#!/usr/bin/env bash
# Create the CA, the SuperLink's TLS certificate and one authentication key per SuperNode.
#   deploy/make-pki.sh OWNER [OWNER ...]
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 1 ] || die "usage: deploy/make-pki.sh OWNER [OWNER ...]"
python "$(dirname "$0")/keys.py" ca "$DEPLOY_DIR/pki"
python "$(dirname "$0")/keys.py" server "$DEPLOY_DIR/pki" "$SUPERLINK_HOST" localhost
for owner in "$@"; do python "$(dirname "$0")/keys.py" node "$DEPLOY_DIR/pki" "$owner"; done
echo "PKI in $DEPLOY_DIR/pki: ca.crt, server.pem, and a key pair per owner ($*)"
