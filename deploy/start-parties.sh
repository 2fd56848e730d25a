#!/usr/bin/env bash
# Start K crypten aggregator parties and the triple dealer (TTP) on this host (one per host in production).
#   deploy/start-parties.sh K FIRST_PORT      -> prints the party addresses for aggregation.party_addresses
set -euo pipefail
source "$(dirname "$0")/env.sh"
K=${1:-3} first=${2:-7100} rendezvous="tcp://127.0.0.1:$((first + 99))"
addresses=()
for r in $(seq 0 $((K - 1))); do
  start_bg "party-$r" fedveil-party --rank "$r" --world "$K" --rendezvous "$rendezvous" \
    --listen "127.0.0.1:$((first + r))" --state-dir "$DEPLOY_DIR/state/party-$r"
  addresses+=("127.0.0.1:$((first + r))")
done
start_bg ttp fedveil-party --ttp --world "$K" --rendezvous "$rendezvous"
(IFS=,; echo "${addresses[*]}")
