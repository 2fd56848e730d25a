#!/usr/bin/env bash
# Start one data owner's SuperNode: its data and state directories stay on its host.
#   deploy/start-supernode.sh OWNER DATA_DIR PORT [POLICY_JSON]
# POLICY_JSON is the owner's own policy (privacy/policy.py: require_dp, max_epsilon, allowed_backends,
# ...); without it the owner reads $DEPLOY_DIR/state/OWNER/policy.json, or uses the defaults.
# APP_SHA256 (or the file $DEPLOY_DIR/app.sha256): the only app this SuperNode runs, the SHA-256 of
# the FAB of the project the owner trusts (deploy/app-sha256.sh PROJECT_DIR). Required.
# PARTY_KEYS (crypten): the owner's pinned party keys file (party-keys.json); keys that differ are refused.
# WORKER=1 (default): first start the owner's long-lived worker (fedveil-owner serve), which holds the
# model, data, keys, policy and ledger across rounds; the SuperNode's ClientApp only relays to its
# socket ($DEPLOY_DIR/state/OWNER/owner.sock, 0600), and that ClientApp runs in one long-lived process
# (python -m fedveil.client.clientapp_runner; the SuperNode runs with --isolation process) instead of a
# fresh flwr-clientapp process per message. WORKER=0: everything runs in Flower's per-message ClientApp.
# MODEL_PATH: the owner's own copy of the base model (default: the run's model.path).
# OWNER_THREADS: CPU threads of the owner worker (set it when several owners share one machine).
set -euo pipefail
source "$(dirname "$0")/env.sh"
[ $# -ge 3 ] || die "usage: deploy/start-supernode.sh OWNER DATA_DIR PORT [POLICY_JSON]"
owner=$1 data=$2 port=$3
[ -e "$data" ] || die "data directory $data does not exist"
app=${APP_SHA256:-$(cat "$DEPLOY_DIR/app.sha256" 2>/dev/null || true)}
[ -n "$app" ] || die "no pinned app: set APP_SHA256 or write $DEPLOY_DIR/app.sha256 (deploy/app-sha256.sh PROJECT_DIR)"
state=$DEPLOY_DIR/state/$owner
# the owner worker's and the ClientApp runner's Unix sockets live in $state: Linux caps their paths at 107 bytes
[ "${WORKER:-1}" != 1 ] || [ ${#state} -le 92 ] || die "DEPLOY_DIR is too deep for the owner's Unix sockets ($state/clientapp.wake is over 107 bytes); set DEPLOY_DIR to a shorter path, e.g. DEPLOY_DIR=/srv/fedveil"
owner_args=(--data-dir "$data" --state-dir "$state" --owner-id "$owner")
node_config="data-dir='$data' state-dir='$state' client-id='$owner' app-sha256='$app'"
if [ -n "${4:-}" ]; then
  [ -f "$4" ] || die "owner policy $4 does not exist"
  node_config="$node_config policy='$4'"; owner_args+=(--policy "$4")
fi
if [ -n "${PARTY_KEYS:-}" ]; then
  [ -f "$PARTY_KEYS" ] || die "pinned party keys $PARTY_KEYS do not exist"
  node_config="$node_config party-keys='$PARTY_KEYS'"; owner_args+=(--party-keys "$PARTY_KEYS")
fi
if [ -n "${MODEL_PATH:-}" ]; then
  [ -f "$MODEL_PATH/config.json" ] || die "MODEL_PATH $MODEL_PATH holds no model (config.json)"
  node_config="$node_config model-path='$MODEL_PATH'"; owner_args+=(--model-path "$MODEL_PATH")
fi
if [ "${WORKER:-1}" = 1 ]; then
  mkdir -p "$state" && chmod 700 "$state"
  start_bg "owner-$owner" fedveil-owner serve "${owner_args[@]}" --threads "${OWNER_THREADS:-0}"
  for _ in $(seq 120); do grep -q "listening on" "$DEPLOY_DIR/logs/owner-$owner.log" 2>/dev/null && break; sleep 0.5; done
  grep -q "listening on" "$DEPLOY_DIR/logs/owner-$owner.log" || die "the owner worker of $owner did not start; see $DEPLOY_DIR/logs/owner-$owner.log"
  node_config="worker='$state/owner.sock' app-sha256='$app'"  # the worker holds the rest
fi
isolation=()
[ "${WORKER:-1}" = 1 ] && isolation=(--isolation process)  # its ClientApps run in the long-lived runner below
# the SuperNode nudges its ClientApp runner through this socket when a message arrives (core/wake.py)
[ "${WORKER:-1}" = 1 ] && export FEDVEIL_WAKE_SOCKET="$state/clientapp.wake"
start_bg "supernode-$owner" fedveil-supernode --root-certificates "$DEPLOY_DIR/pki/ca.crt" \
  --superlink "$SUPERLINK_HOST:$SUPERLINK_PORT" --port "$port" "${isolation[@]}" \
  --auth-supernode-private-key "$DEPLOY_DIR/pki/$owner.key" --auth-supernode-public-key "$DEPLOY_DIR/pki/$owner.pub" \
  --node-config "$node_config"
if [ "${WORKER:-1}" = 1 ]; then  # one ClientApp process for all messages (Flower starts one per message)
  start_bg "clientapp-$owner" python -m fedveil.client.clientapp_runner --runtime-api "127.0.0.1:$port" \
    --app-sha256 "$app" --supernode-pid "$(cat "$DEPLOY_DIR/pids/supernode-$owner.pid")" --wake-socket "$FEDVEIL_WAKE_SOCKET"
fi
echo "SuperNode $owner started (pid $(cat "$DEPLOY_DIR/pids/supernode-$owner.pid")), state in $state, app pinned to ${app:0:12}$([ "${WORKER:-1}" = 1 ] && echo ", owner worker on $state/owner.sock")"
