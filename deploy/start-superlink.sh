#!/usr/bin/env bash
# Start the SuperLink with TLS and SuperNode authentication; state survives restarts (database file,
# SQLite WAL: a killed SuperLink loses nothing committed). fedveil-superlink answers the reads every
# poll makes (node authentication, an empty pull, run status) from a plain SQLite read instead of
# Flower's ORM (server/superlink_state.py): half the CPU the SuperLink spent in its state
# (deploy/README.md, Latency). SUPERLINK_DATABASE=:flwr-in-memory: keeps the state in memory
# instead: a restarted SuperLink has then forgotten the registered SuperNode keys (run
# register-supernode.sh again) and its runs (resume=true).
# fedveil-superlink is flower-superlink whose Control and Runtime APIs answer only the operator's
# host (loopback, the bind address, FEDVEIL_OPERATOR_ADDRESSES); other addresses reach the Fleet
# API only (server/superlink.py). Run `flwr` (register, run, stop) on this host.
#   deploy/start-superlink.sh [--insecure]      (SUPERLINK_BIND=0.0.0.0 to serve SuperNodes on other hosts)
set -euo pipefail
source "$(dirname "$0")/env.sh"
PKI=$DEPLOY_DIR/pki
if [ "${1:-}" = "--insecure" ]; then
  echo "deploy: WARNING: starting the SuperLink WITHOUT TLS, as asked (--insecure)" >&2
  TLS=(--insecure)
else
  [ -f "$PKI/server.pem" ] && [ -f "$PKI/ca.crt" ] || die "no TLS certificate in $PKI: run deploy/make-pki.sh first, or pass --insecure explicitly"
  TLS=(--ssl-ca-certfile "$PKI/ca.crt" --ssl-certfile "$PKI/server.pem" --ssl-keyfile "$PKI/server.key")
fi
start_bg superlink fedveil-superlink "${TLS[@]}" --host "$SUPERLINK_BIND" --port "$SUPERLINK_PORT" --enable-supernode-auth --disable-runtime-dependency-installation \
  --database "${SUPERLINK_DATABASE:-$DEPLOY_DIR/state/superlink.db}"
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<TOML
[superlink]
default = "$CONNECTION"

[superlink.$CONNECTION]
address = "$SUPERLINK_HOST:$SUPERLINK_PORT"
$( [ "${1:-}" = "--insecure" ] && echo 'insecure = true' || echo "root-certificates = \"$PKI/ca.crt\"" )
TOML
# Wait by the clock, not by a count of probes: on a loaded host one `flwr` probe takes seconds.
deadline=$((SECONDS + ${SUPERLINK_START_S:-120}))
while [ "$SECONDS" -lt "$deadline" ]; do
  timeout 20 flwr supernode list "$CONNECTION" >/dev/null 2>&1 && { echo "SuperLink up on $SUPERLINK_BIND:$SUPERLINK_PORT (pid $(cat "$DEPLOY_DIR/pids/superlink.pid"); Control API: operator's host only)"; exit 0; }
  sleep 1
done
die "the SuperLink did not come up in ${SUPERLINK_START_S:-120} s; see $DEPLOY_DIR/logs/superlink.log (SUPERLINK_START_S=... to wait longer)"
