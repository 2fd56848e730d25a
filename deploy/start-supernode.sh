#!/usr/bin/env bash
# Start one data owner's SuperNode: its data and state directories stay on its host.
#   deploy/start-supernode.sh OWNER DATA_DIR PORT [POLICY_JSON]
# POLICY_JSON is the owner's own policy (privacy/policy.py: require_dp, max_epsilon, allowed_backends,
# ...); without it the owner reads $DEPLOY_DIR/state/OWNER/policy.json, or uses the defaults.
# APP_SHA256 (or the file $DEPLOY_DIR/app.sha256): the only app this SuperNode runs, the SHA-256 of
# the FAB of the project the owner trusts (deploy/app-sha256.sh PROJECT_DIR). Required.
# PARTY_KEYS (crypten): the owner's pinned party keys file (party-keys.json); keys that differ are refused.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 3 ] || die "usage: deploy/start-supernode.sh OWNER DATA_DIR PORT [POLICY_JSON]"
owner=$1 data=$2 port=$3
[ -e "$data" ] || die "data directory $data does not exist"
app=${APP_SHA256:-$(cat "$DEPLOY_DIR/app.sha256" 2>/dev/null || true)}
[ -n "$app" ] || die "no pinned app: set APP_SHA256 or write $DEPLOY_DIR/app.sha256 (deploy/app-sha256.sh PROJECT_DIR)"
node_config="data-dir='$data' state-dir='$DEPLOY_DIR/state/$owner' client-id='$owner' app-sha256='$app'"
if [ -n "${4:-}" ]; then
  [ -f "$4" ] || die "owner policy $4 does not exist"
  node_config="$node_config policy='$4'"
fi
if [ -n "${PARTY_KEYS:-}" ]; then
  [ -f "$PARTY_KEYS" ] || die "pinned party keys $PARTY_KEYS do not exist"
  node_config="$node_config party-keys='$PARTY_KEYS'"
fi
start_bg "supernode-$owner" fedveil-supernode --root-certificates "$DEPLOY_DIR/pki/ca.crt" \
  --superlink "$SUPERLINK_HOST:$SUPERLINK_PORT" --port "$port" \
  --auth-supernode-private-key "$DEPLOY_DIR/pki/$owner.key" --auth-supernode-public-key "$DEPLOY_DIR/pki/$owner.pub" \
  --node-config "$node_config"
echo "SuperNode $owner started (pid $(cat "$DEPLOY_DIR/pids/supernode-$owner.pid")), state in $DEPLOY_DIR/state/$owner, app pinned to ${app:0:12}"
