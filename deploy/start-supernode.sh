#!/usr/bin/env bash
# Start one data owner's SuperNode: its data and state directories stay on its host.
#   deploy/start-supernode.sh OWNER DATA_DIR PORT [POLICY_JSON]
# POLICY_JSON is the owner's own policy (privacy/policy.py: require_dp, max_epsilon, allowed_backends,
# ...); without it the owner reads $DEPLOY_DIR/state/OWNER/policy.json, or uses the defaults.
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 3 ] || die "usage: deploy/start-supernode.sh OWNER DATA_DIR PORT [POLICY_JSON]"
owner=$1 data=$2 port=$3
[ -e "$data" ] || die "data directory $data does not exist"
node_config="data-dir='$data' state-dir='$DEPLOY_DIR/state/$owner' client-id='$owner'"
if [ -n "${4:-}" ]; then
  [ -f "$4" ] || die "owner policy $4 does not exist"
  node_config="$node_config policy='$4'"
fi
start_bg "supernode-$owner" flower-supernode --root-certificates "$DEPLOY_DIR/pki/ca.crt" \
  --superlink "$SUPERLINK_HOST:$SUPERLINK_PORT" --port "$port" \
  --auth-supernode-private-key "$DEPLOY_DIR/pki/$owner.key" --auth-supernode-public-key "$DEPLOY_DIR/pki/$owner.pub" \
  --node-config "$node_config"
echo "SuperNode $owner started (pid $(cat "$DEPLOY_DIR/pids/supernode-$owner.pid")), state in $DEPLOY_DIR/state/$owner"
