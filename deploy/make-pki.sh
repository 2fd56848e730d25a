#!/usr/bin/env bash
# Create the CA, the SuperLink's TLS certificate, the coordinator's client certificate (the only
# caller crypten parties accept) and one authentication key per SuperNode. Private keys are
# created 0600 (deploy/keys.py, fedveil.core.pki).
#   deploy/make-pki.sh OWNER [OWNER ...]        (SUPERLINK_SANS="HOST ..." adds names to server.pem)
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 1 ] || die "usage: deploy/make-pki.sh OWNER [OWNER ...]"
umask 077
keys="$(dirname "$0")/keys.py"
python "$keys" ca "$DEPLOY_DIR/pki"
python "$keys" server "$DEPLOY_DIR/pki" "$SUPERLINK_HOST" localhost ${SUPERLINK_SANS:-}
python "$keys" coordinator "$DEPLOY_DIR/pki"
for owner in "$@"; do python "$keys" node "$DEPLOY_DIR/pki" "$owner"; done
echo "PKI in $DEPLOY_DIR/pki: ca.crt, server.pem, coordinator.pem, and a key pair per owner ($*)"
