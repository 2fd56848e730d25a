#!/usr/bin/env bash
# The whole deployment on 127.0.0.1: CA and TLS, SuperNode keys registered with a SuperLink that
# requires them, 3 SuperNodes with their own demo data, the chosen backend (tenseal by default;
# BACKEND=crypten starts 3 aggregator parties and a TTP dealer), a 2-round run with `flwr run`
# under DP-SGD (dp=sample_level; each owner's policy requires DP and caps its epsilon), then every
# process stopped by its PID. Exits 0 only if the run finished, the owners' final adapters exist,
# the round ledger verifies, every owner's epsilon ledger was charged for the run's rounds, and
# then a run of a modified copy of the app (one changed line) is refused by every SuperNode (each
# pins the app's SHA-256) and does not finish. The owners' signatures over the final adapter are
# checked with `fedveil verify-adapter` (tenseal: each owner's adapter against its pinned roster;
# crypten: the server's adapter against the operator-signed roster).
# UP_ONLY=1: stop once the SuperNodes are online and leave everything up, the run config in
# $DEPLOY_DIR/federation.env (tests/deploy/test_net_faults.py runs, breaks and stops it).
# NET=hosts: the same steps with each role on its own host: a Linux network namespace per role, two
# bridges, shaped owner links (deploy/hosts.sh; needs root). Each role's command runs through
# `ip netns exec` on its host; the file steps (keys, data, policies, checks) stand for the out-of-band
# copies between hosts and run here.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEPLOY_DIR=${DEPLOY_DIR:-$PWD/outputs/deploy-demo}
NET=${NET:-loopback}
case "$NET" in loopback|hosts) ;; *) echo "deploy: error: NET must be loopback or hosts, not '$NET'" >&2; exit 2 ;; esac
[ "$NET" = loopback ] || [ "$(id -u)" = 0 ] || { echo "deploy: error: NET=hosts needs root (network namespaces, bridges, tc); run as root, or drop NET=hosts to stay on 127.0.0.1" >&2; exit 2; }
if [ -e "$DEPLOY_DIR" ]; then  # start clean, but never wipe a directory the demo did not make
  [ -f "$DEPLOY_DIR/.fedveil-deploy-demo" ] || { echo "deploy: error: $DEPLOY_DIR exists and is not a deploy-demo directory; choose another DEPLOY_DIR" >&2; exit 2; }
  bash deploy/stop.sh >/dev/null; bash deploy/hosts.sh down >/dev/null  # what a killed demo left
  rm -rf "$DEPLOY_DIR"
fi
mkdir -p "$DEPLOY_DIR" && touch "$DEPLOY_DIR/.fedveil-deploy-demo"
trap 'deploy/stop.sh >/dev/null; [ "$NET" = loopback ] || deploy/hosts.sh down >/dev/null' EXIT
trap 'exit 130' INT; trap 'exit 143' TERM  # an interrupted demo cleans up too
COORD_NS="" OWNER_NS=("" "" "")  # loopback: every role on this host
if [ "$NET" = hosts ]; then
  bash deploy/hosts.sh up "${BACKEND:-tenseal}"
  source "$DEPLOY_DIR/net/hosts.env"
  export SUPERLINK_HOST=$COORD_ADDR PARTY_NETNS PARTY_HOSTS TTP_NETNS RENDEZVOUS_HOST GLOO_IFNAME
fi
on() { local ns=$1; shift; if [ -n "$ns" ]; then ip netns exec "$ns" "$@"; else "$@"; fi; }  # on HOST_NS CMD...
source deploy/env.sh
BACKEND=${BACKEND:-tenseal} ROUNDS=${ROUNDS:-2} SUPERNODE_PORT=${SUPERNODE_PORT:-9094}  # owner k: SUPERNODE_PORT+k
# DP-SGD on every owner. Every value is public; the demo owners hold 120 records each, so delta=1e-5
# is far below 1/n (an owner refuses delta >= 1/its records). MAX_EPSILON: each owner's own cap
# (its policy), which the run's target must not exceed.
TARGET_EPSILON=${TARGET_EPSILON:-8.0} MAX_EPSILON=${MAX_EPSILON:-8.0} DELTA=${DELTA:-1e-5} SAMPLE_RATE=${SAMPLE_RATE:-0.05}
case "$BACKEND" in plain|tenseal|crypten) ;; *) die "BACKEND must be plain, tenseal or crypten, not '$BACKEND'" ;; esac
owners=(client_0 client_1 client_2)

deploy/make-pki.sh "${owners[@]}"
export APP_SHA256=$(deploy/app-sha256.sh "$PWD")   # the owners pin the app they reviewed: this project's FAB
echo "owners pin the app: FAB sha256 $APP_SHA256"
on "$COORD_NS" deploy/start-superlink.sh
for o in "${owners[@]}"; do on "$COORD_NS" deploy/register-supernode.sh "$o" >/dev/null; done
echo "registered ${#owners[@]} SuperNode keys"

# the model's shape: TINY_SHAPE='HIDDEN LAYERS HEADS' (default the tiny model: 64 2 4; benchmarks pass larger ones)
python - "$DEPLOY_DIR" ${TINY_SHAPE:-64 2 4} <<'PY'
import sys
from fedveil.task.demo_data import write_demo_data
from fedveil.task.model import TinySpec
from fedveil.task.tiny import build_tiny_model
root, (hidden, layers, heads) = sys.argv[1], map(int, sys.argv[2:5])
write_demo_data(f"{root}/owners", 3, 120, seed=0)   # one directory per owner, as if on its own host
build_tiny_model(TinySpec(hidden=hidden, layers=layers, heads=heads), f"{root}/base_model", seed=0)
PY
# the coordinator gets the model's config.json only (no weights); each owner keeps the full model
mkdir -p "$DEPLOY_DIR/server_model" && cp "$DEPLOY_DIR/base_model/config.json" "$DEPLOY_DIR/server_model/"
export MODEL_PATH=$DEPLOY_DIR/base_model OWNER_THREADS=${OWNER_THREADS:-1}  # 3 owners share this machine
echo "coordinator model: $(ls "$DEPLOY_DIR/server_model") (no weight files); owners: $MODEL_PATH"
base_config="aggregation.name='$BACKEND' rounds=$ROUNDS num_clients=${#owners[@]} train.local_steps=5 data.name='node' model.path='$DEPLOY_DIR/server_model'"
dp_config="dp.name='sample_level' dp.target_epsilon=$TARGET_EPSILON dp.delta=$DELTA dp.sample_rate=$SAMPLE_RATE"
echo "run: aggregation=$BACKEND dp=sample_level (target epsilon $TARGET_EPSILON, delta $DELTA, sample rate $SAMPLE_RATE), $ROUNDS rounds"
if [ "$BACKEND" = crypten ]; then  # parties first: the owners pin their public keys
  addresses=$(deploy/start-parties.sh 3 $((7100 + RANDOM % 500)))
  export PARTY_KEYS=$DEPLOY_DIR/pki/party-keys.json
  base_config="$base_config aggregation.tls_dir='$DEPLOY_DIR/pki' aggregation.party_addresses='json:[\"${addresses//,/\",\"}\"]'"
  for a in ${addresses//,/ }; do
    for _ in $(seq 120); do on "$COORD_NS" python -c "from fedveil.privacy.secagg.crypten.party import call, TlsFiles; import sys; sys.exit(call('$a','Ready',b'',2,tls=TlsFiles.coordinator('$DEPLOY_DIR/pki'))!=b'1')" 2>/dev/null && break; sleep 1; done
  done
  echo "3 aggregator parties ready (TLS, coordinator only): $addresses; owners pin their keys ($PARTY_KEYS)"
fi
if [ "$BACKEND" != plain ]; then  # each owner's keys, and one roster of them pinned at every owner
  # (stands in for the out-of-band exchange: each owner makes its keys on its host, the owners agree
  # on the roster of public keys and copy it into their state directories; the coordinator never sees it).
  # tenseal's key set-up needs it; under crypten the owners sign their final adapter with the keys it names
  python -c "from fedveil.privacy.secagg.identity import pin_roster; pin_roster({o: '$DEPLOY_DIR/state/' + o for o in '${owners[*]}'.split()}, '${owners[0]}')"
  echo "roster of ${#owners[@]} owners pinned in each state directory"
fi
for i in "${!owners[@]}"; do  # each owner's own policy: DP required, its epsilon cap, the backend it accepts, at most 10 rounds
  python -c "from fedveil.privacy.policy import OwnerPolicy, write_policy; write_policy('$DEPLOY_DIR/policies/${owners[$i]}.json', OwnerPolicy(require_dp=True, max_epsilon=$MAX_EPSILON, allowed_backends=['$BACKEND'], max_rounds=10))"
  on "${OWNER_NS[$i]}" deploy/start-supernode.sh "${owners[$i]}" "$DEPLOY_DIR/owners/client_$i" $((SUPERNODE_PORT + i)) "$DEPLOY_DIR/policies/${owners[$i]}.json"
done
echo "owner policies: require_dp=true, max_epsilon=$MAX_EPSILON, allowed_backends=[$BACKEND]"
for _ in $(seq 90); do
  [ "$(on "$COORD_NS" flwr supernode list "$CONNECTION" 2>/dev/null | grep -c online)" -ge ${#owners[@]} ] && break; sleep 1
done
[ "$(on "$COORD_NS" flwr supernode list "$CONNECTION" 2>/dev/null | grep -c online)" -ge ${#owners[@]} ] || die "SuperNodes did not connect; see $DEPLOY_DIR/logs"
echo "${#owners[@]} SuperNodes online (TLS, authenticated)"
run_config="$base_config $dp_config output_dir='$DEPLOY_DIR/server'"
if [ "${UP_ONLY:-0}" = 1 ]; then  # tests/deploy: the federation stays up; the caller runs it, breaks it and stops it
  { printf 'COORD_NS=%q CONNECTION=%q\n' "$COORD_NS" "$CONNECTION"; printf 'RUN_CONFIG=%q\n' "$run_config"; } \
    >"$DEPLOY_DIR/federation.env"
  trap - EXIT INT TERM
  echo "federation up: $DEPLOY_DIR/federation.env (run config); stop it with deploy/stop.sh and deploy/hosts.sh down"
  exit 0
fi

on "$COORD_NS" timeout 900 flwr run . "$CONNECTION" --stream --run-config "$run_config" | tee "$DEPLOY_DIR/logs/run.log"

grep -q "^\[fedveil\] done:" "$DEPLOY_DIR/logs/run.log" || die "the run did not finish; see $DEPLOY_DIR/logs"
if [ "$BACKEND" = tenseal ]; then
  for o in "${owners[@]}"; do
    [ -f "$DEPLOY_DIR/state/$o/final_adapter/adapter_model.safetensors" ] || die "owner $o has no final adapter"
  done
  [ ! -e "$DEPLOY_DIR/server/final_adapter" ] || die "the server wrote a plaintext adapter"
else
  [ -f "$DEPLOY_DIR/server/final_adapter/adapter_model.safetensors" ] || die "no final adapter"
fi
for o in "${owners[@]}"; do  # each owner worker loaded the model once for the whole run
  loads=$(grep -c "model loaded" "$DEPLOY_DIR/logs/owner-$o.log" || true)
  [ "$loads" = 1 ] || die "owner worker $o loaded the model $loads times (expected once); see $DEPLOY_DIR/logs/owner-$o.log"
done
echo "each owner worker loaded the model once for ${ROUNDS} rounds"
head=$(python -c "import json; print(json.load(open('$DEPLOY_DIR/server/summary.json'))['ledger_head'])")
fedveil verify-chain "$DEPLOY_DIR/server" --head "$head"
if [ "$BACKEND" = tenseal ]; then  # each owner's adapter, checked as anyone would: against the owners' roster
  for o in "${owners[@]}"; do
    fedveil verify-adapter "$DEPLOY_DIR/state/$o/final_adapter" --roster "$DEPLOY_DIR/state/$o/roster.json" \
      --signatures "$DEPLOY_DIR/server/signatures" || die "owner $o's final adapter does not verify"
  done
elif [ "$BACKEND" = crypten ]; then  # the server's adapter, against the roster the operator signed (parties pin it too)
  fedveil verify-adapter "$DEPLOY_DIR/server/final_adapter" --roster "$DEPLOY_DIR/pki/owner-roster.json" \
    --roster-key "$DEPLOY_DIR/pki/roster-operator.pub" || die "the final adapter's signatures do not verify"
fi
# Each owner's epsilon ledgers (its own state directory): every one present verifies (chain, spend as
# its accountant gives it, within its budget; fedveil verify-epsilon), and the run's unit was charged
# once per round of this run, epsilon spent above 0 and within the owner's cap. An owner that spent
# nothing did not train under DP, and the demo fails.
fedveil verify-epsilon "${owners[@]/#/$DEPLOY_DIR/state/}" || die "an owner's epsilon ledger does not verify"
python - "$DEPLOY_DIR/state" "$ROUNDS" "${owners[@]}" <<'PY' || exit 2  # it printed which owner
import sys
from fedveil.privacy.dp import epsilon_ledger, owner_ledger
state, rounds, owners = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
bad = []
for owner in owners:  # the unit this run charged: owner-level where the owner holds that ledger
    ledger = owner_ledger.load(f"{state}/{owner}") or epsilon_ledger.load(f"{state}/{owner}")
    charged = sorted({s.round for s in ledger.history}) if ledger else []
    if ledger is None or charged != list(range(1, rounds + 1)) or not 0 < ledger.spent_epsilon <= ledger.budget_epsilon:
        bad.append(f"{owner} (rounds charged {charged}, epsilon {ledger.spent_epsilon if ledger else 0:g})")
        continue
    print(f"owner {owner}: epsilon ledger charged for rounds {charged}: spent {ledger.spent_epsilon:.3f} of its "
          f"budget {ledger.budget_epsilon:g} (delta {ledger.delta:g})")
if bad:
    sys.exit(f"deploy: error: epsilon ledger not charged for every round: {', '.join(bad)}")
print(f"every owner's epsilon ledger was charged ({len(owners)} owners, {rounds} rounds)")
PY
[ "${DEMO_RUN_ONLY:-0}" = 1 ] && { echo "deploy-demo ($BACKEND): the run checked; refusals skipped (DEMO_RUN_ONLY=1, bench_deploy)"; exit 0; }

# The coordinator asks for the same run without DP. Every owner's policy requires DP: the owners
# refuse before training, no round runs, and no ledger changes (not even a reservation).
ledgers=$(cat "$DEPLOY_DIR"/state/*/privacy_ledger.json | sha256sum)
echo "submitting the run with dp.name='off' (every owner's policy has require_dp=true)"
on "$COORD_NS" timeout 300 flwr run . "$CONNECTION" --stream --run-config "$base_config dp.name='off' output_dir='$DEPLOY_DIR/dp-off-run'" \
  >"$DEPLOY_DIR/logs/dp-off-run.log" 2>&1 || true
! grep -q "^\[fedveil\] done:" "$DEPLOY_DIR/logs/dp-off-run.log" || die "the run without DP ran to the end"
! grep -q "^\[fedveil\] round 1/" "$DEPLOY_DIR/logs/dp-off-run.log" || die "a round without DP was trained"
[ "$(cat "$DEPLOY_DIR"/state/*/privacy_ledger.json | sha256sum)" = "$ledgers" ] || die "an epsilon ledger changed in the run without DP"
grep -o -m1 "owner policy require_dp[^;)]*" "$DEPLOY_DIR/logs/dp-off-run.log" || true
echo "the run without DP was refused: no round trained, no ledger changed"

# A coordinator ships a modified app: a copy of this project with one changed line. Every SuperNode
# must refuse it before any of its code runs, and the run must not finish.
copy=$DEPLOY_DIR/modified-app
python - "$PWD" "$copy" <<'PY'
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], ignore=shutil.ignore_patterns(
    ".git", ".venv", "outputs", "multirun", "__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis", ".whl", "build"))
PY
[ "$(deploy/app-sha256.sh "$copy")" = "$APP_SHA256" ] || die "an unmodified copy of the app does not hash to the pin"
echo 'import os; os.environ.get("HOME")  # the one changed line: any code could be here' >> "$copy/client/app.py"
echo "submitting a modified copy of the app (FAB sha256 $(deploy/app-sha256.sh "$copy" | cut -c1-12)...)"
on "$COORD_NS" timeout 300 flwr run "$copy" "$CONNECTION" --stream --run-config "$base_config $dp_config output_dir='$DEPLOY_DIR/modified-run'" \
  >"$DEPLOY_DIR/logs/modified-run.log" 2>&1 || true
! grep -q "^\[fedveil\] done:" "$DEPLOY_DIR/logs/modified-run.log" || die "the modified app ran to the end"
for o in "${owners[@]}"; do
  grep -q "fedveil-supernode: refused run" "$DEPLOY_DIR/logs/supernode-$o.log" || die "SuperNode $o did not refuse the modified app"
done
grep -h "fedveil-supernode: refused run" "$DEPLOY_DIR/logs/supernode-${owners[0]}.log" | head -1
echo "the modified app was refused by all ${#owners[@]} SuperNodes; the run did not finish"
echo "deploy-demo ($BACKEND$([ "$NET" = hosts ] && echo ", separate hosts")): OK"
