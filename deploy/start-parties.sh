#!/usr/bin/env bash
# Start K crypten aggregator parties and the triple dealer (TTP) on this host (one per host in production).
#   deploy/start-parties.sh K FIRST_PORT      -> prints the party addresses for aggregation.party_addresses
# Each party serves TLS and accepts only the coordinator's client certificate ($DEPLOY_DIR/pki:
# ca.crt, party-R.pem/.key, made here from the CA if missing). Its gRPC service, the rendezvous and
# gloo are bound to PARTY_HOST (default 127.0.0.1) / GLOO_IFNAME (default lo): CrypTen's gloo traffic
# is NOT encrypted, so in production use a private network interface. The parties' X25519 public
# keys go to $DEPLOY_DIR/pki/party-keys.json: the file owners pin (node config party-keys).
# Each party opens shares only from owners on the operator-signed roster ($DEPLOY_DIR/pki/owner-roster.json,
# from deploy/make-pki.sh) under the roster key it pins (pki/roster-operator.pub), and reveals no
# aggregate of fewer than 3 owners (--min-owners 3; a request can only raise it).
# On separate hosts (deploy/hosts.sh): PARTY_HOSTS="A0 A1 ..." party r's gRPC address (in its
# certificate), PARTY_NETNS="NS0 NS1 ..." its namespace, TTP_NETNS the dealer's, RENDEZVOUS_HOST party
# 0's address on the private party network, GLOO_IFNAME the party network's interface.
set -euo pipefail
source "$(dirname "$0")/env.sh"
K=${1:-3} first=${2:-7100} host=${PARTY_HOST:-127.0.0.1} ifname=${GLOO_IFNAME:-lo}
rendezvous="tcp://${RENDEZVOUS_HOST:-$host}:$((first + 99))"
read -r -a hosts <<<"${PARTY_HOSTS:-}"; read -r -a netns <<<"${PARTY_NETNS:-}"
PKI=$DEPLOY_DIR/pki
[ -f "$PKI/owner-roster.json" ] && [ -f "$PKI/roster-operator.pub" ] \
  || die "no signed roster in $PKI (owner-roster.json, roster-operator.pub): run deploy/make-pki.sh OWNER... first"
addresses=() keys=()
for r in $(seq 0 $((K - 1))); do
  host_r=${hosts[$r]:-$host}
  python "$(dirname "$0")/keys.py" party "$PKI" "$r" "$host_r" >&2
  keys+=("$(fedveil-party --print-public-key --state-dir "$DEPLOY_DIR/state/party-$r")")
  NETNS=${netns[$r]:-} start_bg "party-$r" fedveil-party --rank "$r" --world "$K" --rendezvous "$rendezvous" --gloo-ifname "$ifname" \
    --listen "$host_r:$((first + r))" --state-dir "$DEPLOY_DIR/state/party-$r" --tls-dir "$PKI" --min-owners 3 \
    --roster "$PKI/owner-roster.json" --roster-key "$PKI/roster-operator.pub"
  addresses+=("$host_r:$((first + r))")
done
NETNS=${TTP_NETNS:-} start_bg ttp fedveil-party --ttp --world "$K" --rendezvous "$rendezvous" --gloo-ifname "$ifname"
python -c "import sys; from fedveil.privacy.secagg.crypten.backend import write_pinned_party_keys as w; w(sys.argv[1], [bytes.fromhex(k) for k in sys.argv[2:]])" \
  "$PKI/party-keys.json" "${keys[@]}"
(IFS=,; echo "${addresses[*]}")
