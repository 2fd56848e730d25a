#!/usr/bin/env bash
# Separate hosts on one machine: each role in its own Linux network namespace, joined by two bridges.
#   deploy/hosts.sh up [plain|tenseal|crypten] [stranger]  -> writes $DEPLOY_DIR/net/hosts.env (source it)
#   deploy/hosts.sh down                                   -> removes, by name, everything `up` made
# Hosts (namespace fvTAG-NAME; addresses from 198.18.0.0/15, the range reserved for benchmarking):
#   federation bridge 198.18.0.0/24: coordinator .1, owner k .1k (k = 0..2), party r's gRPC .2r, stranger .99
#   party bridge      198.19.0.0/24: party r .1r (gloo, rendezvous on party 0), dealer .2   (crypten only)
# Owners and strangers are not on the party bridge; the dealer is on it only. No host has a route
# off its bridges and the root namespace holds no address in the range, so traffic never leaves the
# namespaces made here. nftables is not installed on this machine, so the bridges express the
# topology: every port of the federation bridge except the coordinator's is isolated (`bridge link
# set ... isolated on`), so an owner, a party or a stranger reaches the coordinator's host only, never
# each other. On the coordinator's host, non-operator addresses reach the Fleet API only
# (fedveil-superlink); nothing else listens on its federation address.
# Shaping: `tc` tbf at OWNER_RATE (default 100mbit) on both ends of each owner's link. LATENCY (e.g.
# 20ms) adds delay with netem where the kernel has it; this one has none, and the script says so.
# Needs root and network namespaces: without them, one line and exit 2. Every object made is
# recorded in $DEPLOY_DIR/net/created as it is made; `down` (and a failed `up`) deletes those names.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then  # before env.sh, which makes directories: nothing is written
  echo "deploy: error: NET=hosts needs root (network namespaces, bridges, tc); run as root, or drop NET=hosts to stay on 127.0.0.1" >&2
  exit 2
fi
source "$(dirname "$0")/env.sh"
NETDIR=$DEPLOY_DIR/net
MANIFEST=$NETDIR/created
RANGE=198.18.0.0/15 FED=198.18.0 PRT=198.19.0

down() {  # delete, by name, in reverse order, what the manifest lists (processes are stopped first: stop.sh)
  [ -f "$MANIFEST" ] || return 0
  tac "$MANIFEST" | while read -r kind name; do
    case "$kind" in
      link) if ip link show "$name" >/dev/null 2>&1; then ip link del "$name"; fi ;;
      netns) if ip netns list | grep -qx "$name\( .*\)\?"; then ip netns del "$name"; fi ;;
    esac
  done
  rm -f "$MANIFEST" "$NETDIR/hosts.env"
}

if [ "${1:-}" = down ]; then down; echo "hosts: removed"; exit 0; fi
[ "${1:-}" = up ] || die "usage: deploy/hosts.sh up [plain|tenseal|crypten] [stranger] | down"
layout=${2:-tenseal} stranger=${3:-}
for tool in ip tc bridge; do command -v "$tool" >/dev/null || die "NET=hosts needs '$tool' (iproute2); install it, or drop NET=hosts"; done
[ ! -s "$MANIFEST" ] || die "$MANIFEST lists hosts already made: run deploy/hosts.sh down first"
# the range must be nobody's: no address or route of this machine may overlap it
overlap=$(python3 - "$RANGE" <<'PY'
import ipaddress, subprocess, sys
mine = ipaddress.ip_network(sys.argv[1])
out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout.split("\n")
out += subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout.split("\n")
nets = {w for line in out for w in line.split() if "." in w and w[0].isdigit()}
used = {ipaddress.ip_interface(n) for n in nets}  # an address and its local route are one
print(" ".join(sorted(u.with_prefixlen for u in used if u.network.overlaps(mine))))
PY
)
[ -z "$overlap" ] || die "this machine already uses $overlap, inside $RANGE that the hosts would use; free it, or run without NET=hosts"

tag=fv$(python3 -c "import secrets; print(secrets.token_hex(2))")   # names of parallel runs do not collide
# namespaces at all? (before anything is recorded: one line, nothing left); also: does this kernel have netem?
ip netns add "$tag-probe" 2>/dev/null || die "cannot create a network namespace here (a container without CAP_SYS_ADMIN?); run without NET=hosts"
netem=no
tc -n "$tag-probe" qdisc add dev lo root netem delay 1ms 2>/dev/null && netem=yes
ip netns del "$tag-probe"
[ "$netem" = yes ] && [ -n "${LATENCY:-}" ] || netem_delay=no
mkdir -p "$NETDIR"
trap 'status=$?; [ $status = 0 ] || { down; echo "deploy: error: making the hosts $tag-* failed (above); everything made was removed" >&2; }' EXIT
made() { echo "$1 $2" >>"$MANIFEST"; }
ns_add() { ip netns add "$1"; made netns "$1"; ip -n "$1" link set lo up; }
bridge_add() { ip link add "$1" type bridge; made link "$1"; ip link set "$1" up; }
# plug NS BRIDGE HOST_END IFNAME ADDRESS [isolated]: a veth from the bridge into the namespace
plug() {
  ip link add "$3" type veth peer name "$4" netns "$1"; made link "$3"
  ip link set "$3" master "$2" up
  [ "${6:-}" != isolated ] || bridge link set dev "$3" isolated on
  ip -n "$1" addr add "$5/24" dev "$4"; ip -n "$1" link set "$4" up
}
rate=${OWNER_RATE:-100mbit}
shape() {  # shape NS DEV: tbf at $rate (and netem's delay first where it exists); tbf shapes what leaves DEV
  local at=(); [ -n "$1" ] && at=(-n "$1")
  if [ "${netem_delay:-yes}" = yes ]; then
    tc "${at[@]}" qdisc add dev "$2" root handle 1: netem delay "$LATENCY"
    tc "${at[@]}" qdisc add dev "$2" parent 1: handle 10: tbf rate "$rate" burst 256kb latency 100ms
  else
    tc "${at[@]}" qdisc add dev "$2" root tbf rate "$rate" burst 256kb latency 100ms
  fi
}

bridge_add "${tag}fed"
ns_add "$tag-coordinator"; plug "$tag-coordinator" "${tag}fed" "${tag}c" fed "$FED.1"
owner_ns=()
for k in 0 1 2; do
  ns_add "$tag-owner$k"; plug "$tag-owner$k" "${tag}fed" "${tag}o$k" fed "$FED.1$k" isolated
  shape "" "${tag}o$k"; shape "$tag-owner$k" fed   # the coordinator's sends to it; its sends
  owner_ns+=("$tag-owner$k")
done
party_ns=() party_hosts=()
if [ "$layout" = crypten ]; then
  bridge_add "${tag}prt"
  for r in 0 1 2; do
    ns_add "$tag-party$r"
    plug "$tag-party$r" "${tag}fed" "${tag}p${r}f" fed "$FED.2$r" isolated
    plug "$tag-party$r" "${tag}prt" "${tag}p${r}p" prt "$PRT.1$r"
    party_ns+=("$tag-party$r") party_hosts+=("$FED.2$r")
  done
  ns_add "$tag-dealer"; plug "$tag-dealer" "${tag}prt" "${tag}d" prt "$PRT.2"
fi
if [ "$stranger" = stranger ]; then
  ns_add "$tag-stranger"; plug "$tag-stranger" "${tag}fed" "${tag}s" fed "$FED.99" isolated
fi
cat >"$NETDIR/hosts.env" <<ENV
# made by deploy/hosts.sh up: the namespace that stands for each host, and its addresses
COORD_NS=$tag-coordinator COORD_ADDR=$FED.1
OWNER_NS=(${owner_ns[*]}) OWNER_ADDRS=($FED.10 $FED.11 $FED.12) OWNER_LINKS=(${tag}o0 ${tag}o1 ${tag}o2)  # bridge ends
PARTY_NETNS="${party_ns[*]}" PARTY_HOSTS="${party_hosts[*]}" TTP_NETNS=$([ "$layout" = crypten ] && echo "$tag-dealer")
RENDEZVOUS_HOST=$PRT.10 GLOO_IFNAME=prt PARTY_ADDRS=($PRT.10 $PRT.11 $PRT.12)
STRANGER_NS=$([ "$stranger" = stranger ] && echo "$tag-stranger") STRANGER_ADDR=$FED.99
ENV
if [ "$netem" = no ]; then delay="no added latency: this kernel has no netem"
elif [ -z "${LATENCY:-}" ]; then delay="no added latency (netem exists; LATENCY unset)"
else delay="netem delay $LATENCY"; fi
echo "hosts ($tag-*): coordinator $FED.1; owners $FED.10-12 on the federation bridge, each link tbf $rate, $delay$([ "$layout" = crypten ] && echo "; parties' gRPC $FED.20-22, party bridge $PRT.0/24: parties $PRT.10-12, dealer $PRT.2")$([ "$stranger" = stranger ] && echo "; stranger $FED.99"); only the coordinator's port is not isolated (no nftables here: the bridges are the firewall)"
