#!/usr/bin/env bash
# Register an owner's SuperNode public key with the SuperLink (only registered keys may connect).
#   deploy/register-supernode.sh OWNER
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ -f "$DEPLOY_DIR/pki/$1.pub" ] || die "no public key $DEPLOY_DIR/pki/$1.pub: run deploy/make-pki.sh $1"
flwr supernode register "$DEPLOY_DIR/pki/$1.pub" "$CONNECTION" --name "$1"
