#!/usr/bin/env bash
# Create the CA, the SuperLink's TLS certificate, the coordinator's client certificate (the only
# caller crypten parties accept), one authentication key per SuperNode, and the operator-signed
# roster of owners (crypten's parties open shares from these owners only): each owner's Ed25519
# identity key in $DEPLOY_DIR/state/OWNER (made there if missing: on one host, as in the demo; on
# many hosts each owner runs `keys.py owner-key` and sends the operator that line), signed with
# pki/roster-operator.key into pki/owner-roster.json; parties pin pki/roster-operator.pub.
# Private keys are created 0600 (deploy/keys.py, fedveil.core.pki).
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
rostered=()
for owner in "$@"; do rostered+=("$owner=$(python "$keys" owner-key "$DEPLOY_DIR/state/$owner")"); done
python "$keys" roster "$DEPLOY_DIR/pki" "${rostered[@]}"
echo "PKI in $DEPLOY_DIR/pki: ca.crt, server.pem, coordinator.pem, a key pair per owner and the signed roster ($*)"
