#!/usr/bin/env bash
# Start one data owner's SuperNode: its data and state directories stay on its host.
#   deploy/start-supernode.sh OWNER DATA_DIR PORT [MAX_EPSILON]
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 3 ] || die "usage: deploy/start-supernode.sh OWNER DATA_DIR PORT [MAX_EPSILON]"
owner=$1 data=$2 port=$3
[ -e "$data" ] || die "data directory $data does not exist"
node_config="data-dir='$data' state-dir='$DEPLOY_DIR/state/$owner' client-id='$owner'"
[ -n "${4:-}" ] && node_config="$node_config max-epsilon=$4"
start_bg "supernode-$owner" flower-supernode --root-certificates "$DEPLOY_DIR/pki/ca.crt" \
  --superlink "$SUPERLINK_HOST:$SUPERLINK_PORT" --port "$port" \
  --auth-supernode-private-key "$DEPLOY_DIR/pki/$owner.key" --auth-supernode-public-key "$DEPLOY_DIR/pki/$owner.pub" \
  --node-config "$node_config"
echo "SuperNode $owner started (pid $(cat "$DEPLOY_DIR/pids/supernode-$owner.pid")), state in $DEPLOY_DIR/state/$owner"
