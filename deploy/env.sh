# Shared settings for the deploy scripts; every value can be set in the environment first.
DEPLOY_DIR=${DEPLOY_DIR:-$PWD/deploy-state}      # certificates, keys, databases, logs, PIDs, owners' state
VENV=${VENV:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv}
SUPERLINK_HOST=${SUPERLINK_HOST:-127.0.0.1}           # the address SuperNodes and `flwr` dial (in server.pem)
SUPERLINK_BIND=${SUPERLINK_BIND:-$SUPERLINK_HOST}    # where the SuperLink listens (0.0.0.0: every interface)
SUPERLINK_PORT=${SUPERLINK_PORT:-8000}             # Flower 1.42 serves Fleet, Control and Runtime APIs here
CONNECTION=${CONNECTION:-fedveil}                  # name of the SuperLink connection for `flwr`
export FLWR_HOME=${FLWR_HOME:-$DEPLOY_DIR/flwr}    # the `flwr` CLI's config lives here, not in ~/.flwr
export FLWR_TELEMETRY_ENABLED=0
export PATH="$VENV/bin:$PATH"
mkdir -p "$DEPLOY_DIR"/{pki,logs,pids,state}
die() { echo "deploy: error: $*" >&2; exit 2; }
start_bg() {  # start_bg NAME CMD...: own process group in the background, log and PID under DEPLOY_DIR
  local name=$1; shift  # NETNS=NS: on the host that namespace stands for (deploy/hosts.sh; the PID stays the same)
  setsid ${NETNS:+ip netns exec "$NETNS"} "$@" >"$DEPLOY_DIR/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$DEPLOY_DIR/pids/$name.pid"
}
