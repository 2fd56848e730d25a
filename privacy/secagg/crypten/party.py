"""An aggregator party of the ``crypten`` backend: one process per party, on its own host.

    fedveil-party --rank R --world K --rendezvous tcp://HOST:PORT --listen 127.0.0.1:PORT --state-dir DIR \
                  --tls-dir DIR          # or --ca FILE --cert FILE --key FILE; --insecure for a lab only
                  --roster FILE --roster-key HEX|FILE   # the operator-signed roster, the key pinned for it
    fedveil-party --ttp --world K --rendezvous tcp://HOST:PORT          # the triple dealer (rank K)
    fedveil-party --print-public-key --state-dir DIR                    # the X25519 key owners pin

TLS with client authentication: the service accepts only a client certificate signed by the
federation CA (``--ca``) whose common name is the coordinator's (``--coordinator-cn``, default
``fedveil-coordinator``); any other caller, plaintext or with another certificate, is refused
(the handshake fails, or ``UNAUTHENTICATED``). Without ``--tls-dir``/``--ca --cert --key`` a
party refuses to start unless ``--insecure`` is given. CrypTen's own gloo traffic between the
parties (``--rendezvous``) is NOT encrypted: keep it on a private network.

Party R joins CrypTen's gloo group (K parties plus the TTP dealer), keeps an X25519 key in its
state directory and serves two gRPC calls (raw bytes, no generated code):

- ``/fedveil.Party/PublicKey``: its X25519 public key, for owners to seal shares to;
- ``/fedveil.Party/Aggregate``: one round. The request (meta: ``run`` (default ""), ``round``,
  owners, layout, length, ``bound``, ``min_owners``, ``max_weight``) carries, sealed to this
  party, each owner's share and count. In order:

  1. the party takes the round up only if it is newer than the last round of that ``run`` it
     took up (kept in ``rounds.json`` in its state directory, written before any MPC, so a
     restart does not forget and a failed round is not retried); otherwise it refuses (replay);
  2. a share is opened only if its owner is on the signed roster (``not-rostered``) and the
     owner's signed bundle binds this round, layout, owner id, the owner's floor and this very
     sealed share (``unsigned``): the coordinator cannot seal shares for owners it made up, nor
     present one owner's shares as another's, nor change an owner's floor; a share sealed as a
     seed is expanded (``shares.expand_seed``);
  3. a sealed share whose exact bytes this party opened before (SHA-256 kept in ``seen-shares``
     in its state directory) is not opened again (``replayed``), whatever run or round the
     request names: the run id is the coordinator's choice, the sealed bytes are the owner's;
  4. the parties agree (a public all-gather) on every party's verdict on the request, on a
     digest of the request (all must have received the same), and on the owners whose shares
     every party could open with equal counts (else ``malformed``); any party refusing makes
     them all refuse, before any share enters the MPC;
  5. an owner whose count exceeds ``max_weight`` (the smaller of the request's and the party's
     own ``--max-weight``), or is so large that ``n * bound`` could wrap the ring, is
     ``over-weight``;
  6. if at least ``min_owners`` (the largest of the request's, every party's own ``--min-owners``,
     never below 2, and each opened owner's signed floor: under ``dp=owner_level`` its t) owners
     remain, the MPC checks every coordinate and then the norm (``mpc.party_aggregate``:
     ``over-bound``) and reveals the weighted sum, but only if at least ``min_owners`` owners
     passed; otherwise the response reveals nothing and says ``below_min_owners``.

The coordinator calls every party with the same owner list at the same time; a party that is
down or slow makes the call time out, which fails the round with a clear error. Starting and
stopping parties on one machine (simulation, tests) is ``launcher.py``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from fedveil.core.console import quiet_libraries
from fedveil.core.faults import maybe_die
from fedveil.core.io import pack, unpack
from fedveil.core.pki import COORDINATOR_CN
from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import sealing
from fedveil.privacy.secagg.identity import load_signed_roster, pinned_roster_key
from fedveil.privacy.secagg.crypten.shares import SCALE, NotRostered, ShareHeader, check_bundle, open_share

SERVICE = "fedveil.Party"
ROUNDS_FILE = "rounds.json"  # {run: last round taken up}, in the party's state directory
SEEN_FILE = "seen-shares"  # SHA-256 of every sealed share this party opened, 32 bytes each

OK, REPLAYED, UNCHECKABLE, DIFFERENT = 1, 2, 3, 4  # a party's verdict on a request, agreed before any MPC
# a party's verdict on one owner's share, and the status the parties agree on for it (worst first)
MALFORMED, OPENED, REPLAYED_SHARE, NOT_ROSTERED, UNSIGNED = 0.0, 1.0, 2.0, 3.0, 4.0
VERDICT_STATUS = {REPLAYED_SHARE: "replayed", NOT_ROSTERED: "not-rostered", UNSIGNED: "unsigned",
                  MALFORMED: "malformed"}
REFUSALS = {
    REPLAYED: "round {round} of run '{run}' is not newer than the last round the aggregator parties took up "
              "(a replay, or a retry of a failed round): refused, nothing revealed",
    UNCHECKABLE: "norm_bound={bound} over {length} values could wrap the fixed-point ring: refused, lower it",
    DIFFERENT: "the aggregator parties received different requests: refused",
}


def encode_request(meta: dict, sealed: list[bytes], bundles: list[bytes]) -> bytes:
    """One party's request: meta, then per owner (``meta["clients"]`` order) its sealed share, then its bundle."""
    return pack([json.dumps(meta).encode(), *sealed, *bundles])


def decode_request(blob: bytes) -> tuple[dict, list[bytes], list[bytes]]:
    head, *rest = unpack(blob)
    meta = json.loads(head)
    n = len(meta["clients"])
    return meta, rest[:n], (rest[n : 2 * n] + [b""] * n)[:n]  # a missing bundle is an unsigned share


def encode_response(meta: dict, weighted_sum: np.ndarray | None) -> bytes:
    values = weighted_sum if weighted_sum is not None else np.zeros(0)
    return pack([json.dumps(meta).encode(), values.astype(np.float64).tobytes() or b"\0"])


def decode_response(blob: bytes) -> tuple[dict, np.ndarray]:
    head, body = unpack(blob)
    meta = json.loads(head)
    return meta, (np.frombuffer(body, np.float64) if meta.get("weight", 0) > 0 else np.zeros(0))


class Party:
    def __init__(self, rank: int, world: int, state_dir: Path, min_owners: int = 2,
                 max_weight: float | None = None, roster: dict[str, bytes] | None = None) -> None:
        from fedveil.privacy.secagg.crypten.mpc import MIN_OWNERS_FLOOR  # lazy: imports torch

        self.rank, self.world = rank, world
        self.private, self.public = sealing.keypair(state_dir)
        self.min_owners = max(int(min_owners), MIN_OWNERS_FLOOR)  # this party's own floor, whatever a request says
        self.max_weight = max_weight
        self.roster = dict(roster or {})  # owner id -> Ed25519 verify key (operator-signed); None: no owner
        self.rounds_file = Path(state_dir) / ROUNDS_FILE
        self.rounds: dict[str, int] = json.loads(self.rounds_file.read_text()) if self.rounds_file.exists() else {}
        self.seen_file = Path(state_dir) / SEEN_FILE
        raw = self.seen_file.read_bytes() if self.seen_file.exists() else b""
        self.seen = {raw[i : i + 32] for i in range(0, len(raw) - len(raw) % 32, 32)}
        self.lock = threading.Lock()
        self.ready = threading.Event()  # set once the MPC group has formed

    def public_key(self, request: bytes, context) -> bytes:
        return self.public

    def is_ready(self, request: bytes, context) -> bytes:
        return b"1" if self.ready.is_set() else b"0"

    def take_up(self, run: str, server_round: int) -> bool:
        """Whether ``server_round`` of ``run`` is newer than any taken up; if so it is recorded (on disk) now."""
        if server_round <= self.rounds.get(run, -1):
            return False
        self.rounds[run] = server_round
        tmp = self.rounds_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self.rounds, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.rounds_file)
        return True

    def remember(self, digests: list[bytes]) -> None:
        """Record sealed shares as used (on disk): the same sealed bytes are never opened again."""
        if digests:
            with open(self.seen_file, "ab") as f:
                f.write(b"".join(digests))
                f.flush()
                os.fsync(f.fileno())
            self.seen.update(digests)

    def open(self, owner: str, blob: bytes, bundle: bytes, server_round: int, layout_digest: str,
             length: int) -> tuple[float, float, np.ndarray | None, int]:
        """(verdict, count, share, the owner's signed floor) of one owner's sealed share: opened only
        if the owner is on the signed roster and its signed bundle covers this very share."""
        try:
            signed = check_bundle(bundle, blob, self.rank, owner, server_round, layout_digest, self.roster)
        except NotRostered:
            return NOT_ROSTERED, 0.0, None, 0
        except PayloadError:
            return UNSIGNED, 0.0, None, 0
        try:  # a seed expands for the run the owner signed, whatever run the request names
            count, share = open_share(blob, self.private, ShareHeader(server_round, owner, self.rank, layout_digest,
                                                                      length), signed.run)
        except PayloadError:
            return MALFORMED, 0.0, None, 0
        return OPENED, count, share, signed.min_owners

    def aggregate(self, request: bytes, context) -> bytes:
        import torch  # lazy: fedveil-party --help and the coordinator's `call` need no torch

        from fedveil.privacy.secagg.crypten.compat import import_crypten  # lazy: imports torch
        from fedveil.privacy.secagg.crypten.mpc import (  # lazy: imports torch
            RING_HEADROOM, norm_check_fits, party_aggregate)

        crypten = import_crypten()
        meta, sealed, bundles = decode_request(request)
        run, server_round, bound = str(meta.get("run", "")), int(meta["round"]), meta.get("bound")
        min_owners = max(self.min_owners, int(meta.get("min_owners") or 0))
        weights = [w for w in (self.max_weight, meta.get("max_weight")) if w is not None]
        max_weight = float(min(weights)) if weights else float("inf")
        digest = int.from_bytes(hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).digest()[:8], "big",
                                signed=True)
        if not self.ready.wait(timeout=60):
            raise RuntimeError("the MPC group has not formed: are all parties and the TTP running?")
        with self.lock:
            # taken up before anything else: whatever happens next, this round of this run never runs again
            code = OK if self.take_up(run, server_round) else REPLAYED
            maybe_die("crypten-party-mpc", server_round, str(self.rank))
            if code == OK and bound is not None and not norm_check_fits(float(bound), int(meta["length"])):
                code = UNCHECKABLE
            shares, counts, valid, opened = [], [], [], []
            for owner, blob, bundle in zip(meta["clients"], sealed, bundles):
                seen = hashlib.sha256(blob).digest()
                if code != OK:
                    verdict, count, share = MALFORMED, 0.0, None  # refused below; shares not opened
                elif seen in self.seen or seen in opened:
                    verdict, count, share = REPLAYED_SHARE, 0.0, None  # same sealed bytes, whatever the request says
                else:
                    verdict, count, share, signed_floor = self.open(owner, blob, bundle, server_round,
                                                                    meta["layout_digest"], meta["length"])
                    # the owner's own floor, under its signature: the request may raise it, never lower it
                    min_owners = max(min_owners, signed_floor)
                if verdict == OPENED:
                    opened.append(seen)
                valid.append(verdict)
                shares.append(share if share is not None else np.zeros(meta["length"], np.int64))
                counts.append(count)
            self.remember(opened)
            # public agreement (CrypTen's all_gather is int64: floats travel as their bit patterns): every
            # party's verdict on the request, a digest of the request (all must have got the same one), its
            # floors (the largest is everyone's), and per owner whether it opened the share and with which count
            mine = np.zeros((2, 4 + len(sealed)), np.float64)
            mine[0, 0], mine[0, 2], mine[0, 3], mine[0, 4:], mine[1, 4:] = code, min_owners, max_weight, valid, counts
            mine.view(np.int64)[0, 1] = digest
            everyone = [t.numpy().view(np.float64)
                        for t in crypten.comm.get().all_gather(torch.from_numpy(mine.view(np.int64)))]
            codes = {int(t[0, 0]) for t in everyone}
            if len({int(t.view(np.int64)[0, 1]) for t in everyone}) > 1:
                codes.add(DIFFERENT)
            min_owners = int(max(t[0, 2] for t in everyone))
            max_weight = float(min(t[0, 3] for t in everyone))
            n = len(sealed)
            if codes != {OK}:
                refused = "; ".join(REFUSALS[c].format(round=server_round, run=run, bound=bound, length=meta["length"])
                                    for c in sorted(codes - {OK}))
                return encode_response({"status": ["refused"] * n, "weight": 0.0, "min_owners": min_owners,
                                        "below_min_owners": False, "refused": refused}, None)
            ok = [all(t[0, 4 + k] == OPENED for t in everyone) and len({float(t[1, 4 + k]) for t in everyone}) == 1
                  for k in range(n)]
            dropped = [next((VERDICT_STATUS[v] for v in VERDICT_STATUS if any(t[0, 4 + k] == v for t in everyone)),
                            "malformed") for k in range(n)]  # all parties drop it, for the gravest reason any gave
            # the weighted term n * x must not wrap the ring either: with |x| <= bound, n * bound < 2^29
            heavy = [ok[k] and (counts[k] > max_weight or (bound is not None
                                and counts[k] * float(bound) * SCALE**2 >= RING_HEADROOM)) for k in range(n)]
            chosen = [k for k in range(n) if ok[k] and not heavy[k]]
            if len(chosen) >= min_owners:
                accepted, weighted_sum, weight = party_aggregate(
                    [shares[k] for k in chosen], [counts[k] for k in chosen], bound, min_owners)
            else:  # too few to reveal anything: the norm checks are not even run
                accepted, weighted_sum, weight = [False] * len(chosen), None, 0.0
        checked = {chosen[i]: a for i, a in enumerate(accepted)}
        status = [dropped[k] if not ok[k] else "over-weight" if heavy[k] else ("ok" if checked[k] else "over-bound")
                  if len(chosen) >= min_owners else "unchecked" for k in range(n)]
        return encode_response({"status": status, "weight": weight, "min_owners": min_owners,
                                "below_min_owners": weighted_sum is None, "refused": None}, weighted_sum)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the federation CA, this side's certificate and its private key."""

    ca: str
    cert: str
    key: str

    @classmethod
    def party(cls, tls_dir: str | Path, rank: int) -> "TlsFiles":
        d = Path(tls_dir)
        return cls(str(d / "ca.crt"), str(d / f"party-{rank}.pem"), str(d / f"party-{rank}.key"))

    @classmethod
    def coordinator(cls, tls_dir: str | Path) -> "TlsFiles":
        d = Path(tls_dir)
        return cls(str(d / "ca.crt"), str(d / "coordinator.pem"), str(d / "coordinator.key"))

    def read(self) -> tuple[bytes, bytes, bytes]:
        missing = [f for f in (self.ca, self.cert, self.key) if not Path(f).is_file()]
        if missing:
            raise FileNotFoundError(f"TLS file(s) missing: {', '.join(missing)}")
        return Path(self.ca).read_bytes(), Path(self.cert).read_bytes(), Path(self.key).read_bytes()


def caller_is(context, common_name: str) -> bool:
    """Whether the TLS peer presented a (CA-verified) client certificate with this common name."""
    auth = context.auth_context() or {}
    return auth.get("x509_common_name") == [common_name.encode()]


def authenticated(handler, common_name: str | None):
    """``handler`` for the coordinator only: any other caller gets ``UNAUTHENTICATED`` (None: no check)."""
    if common_name is None:
        return handler

    @functools.wraps(handler)
    def checked(request: bytes, context) -> bytes:
        if not caller_is(context, common_name):
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          f"only the coordinator ({common_name}, certified by the federation CA) may call this party")
        return handler(request, context)

    return checked


def serve(party: Party, listen: str, tls: TlsFiles | None = None, coordinator_cn: str = COORDINATOR_CN):
    """Serve the party on ``listen``: TLS requiring the coordinator's client certificate, or
    plaintext without any caller check when ``tls`` is None (``--insecure``)."""
    options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    cn = coordinator_cn if tls is not None else None
    handlers = {
        "PublicKey": grpc.unary_unary_rpc_method_handler(authenticated(party.public_key, cn)),
        "Ready": grpc.unary_unary_rpc_method_handler(authenticated(party.is_ready, cn)),
        "Aggregate": grpc.unary_unary_rpc_method_handler(authenticated(party.aggregate, cn)),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        ca, cert, key = tls.read()
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        port = server.add_secure_port(listen, credentials)
    if port == 0:
        raise SystemExit(f"fedveil-party: error: cannot listen on {listen}; pick a free port")
    server.start()
    return server


def call(address: str, method: str, payload: bytes, timeout: float, tls: TlsFiles | None = None) -> bytes:
    """One call to a party; over TLS with the coordinator's client certificate when ``tls`` is given."""
    options = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]
    if tls is None:
        channel = grpc.insecure_channel(address, options=options)
    else:
        ca, cert, key = tls.read()
        credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        channel = grpc.secure_channel(address, credentials, options=options)
    with channel:
        return channel.unary_unary(f"/{SERVICE}/{method}")(payload, timeout=timeout)


def party_roster(path: str | None, key: str | None) -> dict[str, bytes]:
    """The signed roster a party starts with; exits 2 with one line if it is missing or not signed
    by the pinned key (before the MPC group forms, so nothing waits on a party that cannot serve)."""
    if not path or not key:
        print("fedveil-party: error: no signed roster: a party opens shares only from owners the operator rostered. "
              "Pass --roster owner-roster.json and --roster-key roster-operator.pub (deploy/keys.py roster makes them)",
              file=sys.stderr)
        raise SystemExit(2)
    try:
        return load_signed_roster(path, pinned_roster_key(key))
    except UserError as exc:
        print(f"fedveil-party: error: {exc}", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedveil-party", description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, help="number of aggregator parties K (required)")
    parser.add_argument("--rendezvous", help="tcp://HOST:PORT shared by all parties and the TTP (required); keep it "
                        "on a private network: CrypTen's gloo traffic is not encrypted")
    parser.add_argument("--gloo-ifname", help="network interface gloo binds to (GLOO_SOCKET_IFNAME), e.g. lo or a "
                        "private interface")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of this party's gRPC service")
    parser.add_argument("--state-dir", default=".",
                        help="where this party keeps its X25519 key and the last round per run")
    parser.add_argument("--min-owners", type=int, default=3,
                        help="reveal no aggregate of fewer owners, whatever a request asks (default %(default)s, at "
                        "least 2); a request can only raise it")
    parser.add_argument("--roster", help="the operator-signed roster of owners (owner-roster.json): shares from any "
                        "other owner are never opened (required)")
    parser.add_argument("--roster-key", help="the operator's roster verify key this party pins: 64 hex characters or "
                        "a file of them (roster-operator.pub; required)")
    parser.add_argument("--max-weight", type=float, default=None, help="drop an owner whose example count exceeds this")
    parser.add_argument("--ttp", action="store_true", help="run the trusted triple dealer instead of a party")
    parser.add_argument("--tls-dir", help="TLS files: DIR/ca.crt, DIR/party-RANK.pem, DIR/party-RANK.key")
    parser.add_argument("--ca", help="the federation CA certificate (PEM): only clients it certified get in")
    parser.add_argument("--cert", help="this party's server certificate (PEM), signed by --ca")
    parser.add_argument("--key", help="this party's private key (PEM)")
    parser.add_argument("--coordinator-cn", default=COORDINATOR_CN,
                        help="the common name of the only client certificate accepted (default: %(default)s)")
    parser.add_argument("--insecure", action="store_true",
                        help="serve plaintext gRPC and accept ANY caller (a lab only)")
    parser.add_argument("--print-public-key", action="store_true",
                        help="print this party's X25519 public key (hex; created if missing) and exit")
    args = parser.parse_args(argv)
    if args.print_public_key:
        print(sealing.keypair(args.state_dir)[1].hex())
        return
    if args.world is None or args.rendezvous is None:
        parser.error("--world and --rendezvous are required")
    if args.gloo_ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = args.gloo_ifname
    tls = None
    if not args.ttp:
        if args.tls_dir and (args.ca or args.cert or args.key):
            parser.error("give either --tls-dir or --ca/--cert/--key, not both")
        if args.tls_dir:
            tls = TlsFiles.party(args.tls_dir, args.rank)
        elif args.ca or args.cert or args.key:
            if not (args.ca and args.cert and args.key):
                parser.error("--ca, --cert and --key go together")
            tls = TlsFiles(args.ca, args.cert, args.key)
        elif not args.insecure:
            print("fedveil-party: error: no TLS files: without them anyone who can reach --listen could call this "
                  "party (read its key, submit rounds) in plaintext. Pass --tls-dir DIR (or --ca/--cert/--key), "
                  "or --insecure to accept that explicitly (a lab only).", file=sys.stderr)
            raise SystemExit(2)
        if tls is not None:
            try:
                tls.read()
            except FileNotFoundError as exc:
                print(f"fedveil-party: error: {exc}", file=sys.stderr)
                raise SystemExit(2)
        else:
            print("fedveil-party: WARNING: --insecure: plaintext gRPC, every caller accepted", file=sys.stderr,
                  flush=True)
        roster = party_roster(args.roster, args.roster_key)
        print(f"fedveil-party {args.rank}: {len(roster)} owners on the signed roster {args.roster}", flush=True)
    os.environ.update({"WORLD_SIZE": str(args.world), "RANK": str(args.world if args.ttp else args.rank),
                       "RENDEZVOUS": args.rendezvous, "DISTRIBUTED_BACKEND": "gloo"})
    from fedveil.privacy.secagg.crypten.compat import import_crypten  # lazy: torch, after the environment above

    quiet_libraries()
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.ttp:
        crypten.init()
        crypten.mpc.provider.TTPServer()  # serves triples until the parties leave
        return
    party = Party(args.rank, args.world, Path(args.state_dir), args.min_owners, args.max_weight, roster)
    server = serve(party, args.listen, tls, args.coordinator_cn)
    print(f"fedveil-party {args.rank}/{args.world} listening on {args.listen} "
          f"({'TLS, coordinator ' + args.coordinator_cn + ' only' if tls else 'PLAINTEXT, anyone'})", flush=True)
    crypten.init()  # blocks until all parties and the TTP have joined
    party.ready.set()
    print(f"fedveil-party {args.rank}: MPC group ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1:])

