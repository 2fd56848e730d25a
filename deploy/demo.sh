#!/usr/bin/env bash
# The whole deployment on 127.0.0.1: CA and TLS, SuperNode keys registered with a SuperLink that
# requires them, 3 SuperNodes with their own demo data, the chosen backend (tenseal by default;
# BACKEND=crypten starts 3 aggregator parties and a TTP dealer), a 2-round run with `flwr run`,
# then every process stopped by its PID. Exits 0 only if the run finished, the owners' final
# adapters exist and the round ledger verifies.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEPLOY_DIR=${DEPLOY_DIR:-$PWD/outputs/deploy-demo}
if [ -e "$DEPLOY_DIR" ]; then  # start clean, but never wipe a directory the demo did not make
  [ -f "$DEPLOY_DIR/.fedveil-deploy-demo" ] || { echo "deploy: error: $DEPLOY_DIR exists and is not a deploy-demo directory; choose another DEPLOY_DIR" >&2; exit 2; }
  rm -rf "$DEPLOY_DIR"
fi
mkdir -p "$DEPLOY_DIR" && touch "$DEPLOY_DIR/.fedveil-deploy-demo"
source deploy/env.sh
BACKEND=${BACKEND:-tenseal} ROUNDS=${ROUNDS:-2}
case "$BACKEND" in plain|tenseal|crypten) ;; *) die "BACKEND must be plain, tenseal or crypten, not '$BACKEND'" ;; esac
owners=(client_0 client_1 client_2)
trap 'deploy/stop.sh >/dev/null' EXIT

deploy/make-pki.sh "${owners[@]}"
deploy/start-superlink.sh
for o in "${owners[@]}"; do deploy/register-supernode.sh "$o" >/dev/null; done
echo "registered ${#owners[@]} SuperNode keys"

python - "$DEPLOY_DIR" <<'PY'
import sys
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import TinySpec
from fedveil.task.tiny import build_tiny_model
root = sys.argv[1]
write_demo_data(f"{root}/owners", 3, 120, seed=0)   # one directory per owner, as if on its own host
build_tiny_model(TinySpec(), f"{root}/base_model", seed=0)
PY
if [ "$BACKEND" = tenseal ]; then  # each owner's keys, and one roster of them pinned at every owner
  # (stands in for the out-of-band exchange: each owner makes its keys on its host, the owners agree
  # on the roster of public keys and copy it into their state directories; the coordinator never sees it)
  python -c "from fedveil.privacy.secagg.identity import pin_roster; pin_roster({o: '$DEPLOY_DIR/state/' + o for o in '${owners[*]}'.split()}, '${owners[0]}')"
  echo "roster of ${#owners[@]} owners pinned in each state directory"
fi
for i in "${!owners[@]}"; do  # each owner's own policy: the backend it accepts, at most 10 rounds
  python -c "from fedveil.privacy.policy import OwnerPolicy, write_policy; write_policy('$DEPLOY_DIR/policies/${owners[$i]}.json', OwnerPolicy(allowed_backends=['$BACKEND'], max_rounds=10))"
  deploy/start-supernode.sh "${owners[$i]}" "$DEPLOY_DIR/owners/client_$i" $((9094 + i)) "$DEPLOY_DIR/policies/${owners[$i]}.json"
done
for _ in $(seq 90); do
  [ "$(flwr supernode list "$CONNECTION" 2>/dev/null | grep -c online)" -ge ${#owners[@]} ] && break; sleep 1
done
[ "$(flwr supernode list "$CONNECTION" 2>/dev/null | grep -c online)" -ge ${#owners[@]} ] || die "SuperNodes did not connect; see $DEPLOY_DIR/logs"
echo "${#owners[@]} SuperNodes online (TLS, authenticated)"

run_config="aggregation.name='$BACKEND' rounds=$ROUNDS num_clients=${#owners[@]} train.local_steps=5 data.name='node' output_dir='$DEPLOY_DIR/server' model.path='$DEPLOY_DIR/base_model'"
if [ "$BACKEND" = crypten ]; then
  addresses=$(deploy/start-parties.sh 3 $((7100 + RANDOM % 500)))
  run_config="$run_config aggregation.party_addresses='json:[\"${addresses//,/\",\"}\"]'"
  for a in ${addresses//,/ }; do
    for _ in $(seq 120); do python -c "from fedveil.privacy.secagg.crypten.party import call; import sys; sys.exit(call('$a','Ready',b'',2)!=b'1')" 2>/dev/null && break; sleep 1; done
  done
  echo "3 aggregator parties ready: $addresses"
fi
timeout 900 flwr run . "$CONNECTION" --stream --run-config "$run_config" | tee "$DEPLOY_DIR/logs/run.log"

grep -q "^\[fedveil\] done:" "$DEPLOY_DIR/logs/run.log" || die "the run did not finish; see $DEPLOY_DIR/logs"
if [ "$BACKEND" = tenseal ]; then
  for o in "${owners[@]}"; do
    [ -f "$DEPLOY_DIR/state/$o/final_adapter/adapter_model.safetensors" ] || die "owner $o has no final adapter"
  done
  [ ! -e "$DEPLOY_DIR/server/final_adapter" ] || die "the server wrote a plaintext adapter"
else
  [ -f "$DEPLOY_DIR/server/final_adapter/adapter_model.safetensors" ] || die "no final adapter"
fi
head=$(python -c "import json; print(json.load(open('$DEPLOY_DIR/server/summary.json'))['ledger_head'])")
fedveil verify-ledger "$DEPLOY_DIR/server" --head "$head"
echo "deploy-demo ($BACKEND): OK"
