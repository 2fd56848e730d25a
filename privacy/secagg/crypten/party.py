"""An aggregator party of the ``crypten`` backend: one process per party, on its own host.

    fedveil-party --rank R --world K --rendezvous tcp://HOST:PORT --listen 127.0.0.1:PORT --state-dir DIR
    fedveil-party --ttp --world K --rendezvous tcp://HOST:PORT          # the triple dealer (rank K)

Party R joins CrypTen's gloo group (K parties plus the TTP dealer), keeps an X25519 key in its
state directory and serves two gRPC calls (raw bytes, no generated code):

- ``/fedveil.Party/PublicKey``: its X25519 public key, for owners to seal shares to;
- ``/fedveil.Party/Aggregate``: one round. The request lists the owners and carries, sealed to
  this party, each owner's share and count. The parties agree (a public all-gather) on the
  owners whose shares every party could open with equal counts, run the MPC norm check and sum
  (``mpc.party_aggregate``), and answer with the revealed weighted sum only.

The coordinator calls every party with the same owner list at the same time; a party that is
down or slow makes the call time out, which fails the round with a clear error. Starting and
stopping parties on one machine (simulation, tests) is ``launcher.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from concurrent import futures
from pathlib import Path

import numpy as np

from fedveil.core.io import pack, unpack
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg import sealing
from fedveil.privacy.secagg.crypten.shares import ShareHeader, open_share

SERVICE = "fedveil.Party"


def encode_request(meta: dict, sealed: list[bytes]) -> bytes:
    return pack([json.dumps(meta).encode(), *sealed])


def decode_request(blob: bytes) -> tuple[dict, list[bytes]]:
    head, *sealed = unpack(blob)
    return json.loads(head), sealed


def encode_response(meta: dict, weighted_sum: np.ndarray | None) -> bytes:
    return pack([json.dumps(meta).encode(), (weighted_sum if weighted_sum is not None else np.zeros(0)).astype(np.float64).tobytes() or b"\0"])


def decode_response(blob: bytes) -> tuple[dict, np.ndarray]:
    head, body = unpack(blob)
    meta = json.loads(head)
    return meta, (np.frombuffer(body, np.float64) if meta.get("weight", 0) > 0 else np.zeros(0))


class Party:
    def __init__(self, rank: int, world: int, state_dir: Path) -> None:
        self.rank, self.world = rank, world
        self.private, self.public = sealing.keypair(state_dir)
        self.lock = threading.Lock()
        self.ready = threading.Event()  # set once the MPC group has formed

    def public_key(self, request: bytes, context) -> bytes:
        return self.public

    def is_ready(self, request: bytes, context) -> bytes:
        return b"1" if self.ready.is_set() else b"0"

    def aggregate(self, request: bytes, context) -> bytes:
        import torch

        from fedveil.privacy.secagg.crypten.compat import import_crypten
        from fedveil.privacy.secagg.crypten.mpc import party_aggregate

        crypten = import_crypten()
        meta, sealed = decode_request(request)
        if not self.ready.wait(timeout=60):
            raise RuntimeError("the MPC group has not formed: are all parties and the TTP running?")
        with self.lock:
            shares, counts, valid = [], [], []
            for owner, blob in zip(meta["clients"], sealed):
                expected = ShareHeader(meta["round"], owner, self.rank, meta["layout_digest"], meta["length"])
                try:
                    count, share = open_share(blob, self.private, expected)
                    valid.append(1.0)
                except PayloadError:
                    count, share = 0.0, np.zeros(meta["length"], np.int64)
                    valid.append(0.0)
                shares.append(share)
                counts.append(count)
            # public agreement: an owner counts only if every party opened its share, with equal counts
            # (CrypTen's all_gather is int64: counts travel as the bit patterns of their float64s)
            mine = torch.from_numpy(np.stack([np.array(valid, np.float64), np.array(counts, np.float64)]).view(np.int64))
            everyone = [t.numpy().view(np.float64) for t in crypten.comm.get().all_gather(mine)]
            ok = [all(t[0, k] == 1.0 for t in everyone) and len({float(t[1, k]) for t in everyone}) == 1
                  for k in range(len(sealed))]
            chosen = [k for k, good in enumerate(ok) if good]
            accepted, weighted_sum, weight = party_aggregate([shares[k] for k in chosen], [counts[k] for k in chosen],
                                                             meta.get("bound"))
        norm_ok = {chosen[i]: a for i, a in enumerate(accepted)}
        status = ["malformed" if not ok[k] else ("ok" if norm_ok[k] else "over-bound") for k in range(len(sealed))]
        return encode_response({"status": status, "weight": weight}, weighted_sum)


def serve(party: Party, listen: str):
    import grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=[("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)])
    handlers = {
        "PublicKey": grpc.unary_unary_rpc_method_handler(party.public_key),
        "Ready": grpc.unary_unary_rpc_method_handler(party.is_ready),
        "Aggregate": grpc.unary_unary_rpc_method_handler(party.aggregate),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"fedveil-party: error: cannot listen on {listen}; pick a free port")
    server.start()
    return server


def call(address: str, method: str, payload: bytes, timeout: float) -> bytes:
    import grpc

    with grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 1 << 30),
                                                  ("grpc.max_send_message_length", 1 << 30)]) as channel:
        return channel.unary_unary(f"/{SERVICE}/{method}")(payload, timeout=timeout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fedveil-party", description=__doc__.split("\n")[0])
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, required=True, help="number of aggregator parties K")
    parser.add_argument("--rendezvous", required=True, help="tcp://HOST:PORT shared by all parties and the TTP")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT of this party's gRPC service")
    parser.add_argument("--state-dir", default=".", help="where this party keeps its X25519 key")
    parser.add_argument("--ttp", action="store_true", help="run the trusted triple dealer instead of a party")
    args = parser.parse_args(argv)
    os.environ.update({"WORLD_SIZE": str(args.world), "RANK": str(args.world if args.ttp else args.rank),
                       "RENDEZVOUS": args.rendezvous, "DISTRIBUTED_BACKEND": "gloo"})
    from fedveil.core.console import quiet_libraries
    from fedveil.privacy.secagg.crypten.compat import import_crypten

    quiet_libraries()
    crypten = import_crypten()
    crypten.cfg.mpc.provider = "TTP"
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.ttp:
        crypten.init()
        crypten.mpc.provider.TTPServer()  # serves triples until the parties leave
        return
    party = Party(args.rank, args.world, Path(args.state_dir))
    server = serve(party, args.listen)
    print(f"fedveil-party {args.rank}/{args.world} listening on {args.listen}", flush=True)
    crypten.init()  # blocks until all parties and the TTP have joined
    party.ready.set()
    print(f"fedveil-party {args.rank}: MPC group ready", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main(sys.argv[1:])

