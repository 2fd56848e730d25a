#!/usr/bin/env bash
# Stop every process the deploy scripts started (by the PIDs they recorded).
set -uo pipefail
source "$(dirname "$0")/env.sh"
for f in "$DEPLOY_DIR"/pids/*.pid; do
  [ -e "$f" ] || continue
  pid=$(cat "$f"); kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 -- "-$pid" 2>/dev/null; kill -9 "$pid" 2>/dev/null
  rm -f "$f"
done
echo "stopped"
