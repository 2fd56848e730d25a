"""``tenseal``'s exact bytes per round (``BackendSpec.cost``): what an owner uploads, what it downloads
of the encrypted global, and what the owner asked to re-encrypt the global uploads besides.

The figures follow the layouts of ``bfv.encrypt`` / ``ckks.encrypt`` (ciphertexts framed by
``core.io.pack``), ``backend.TensealOwner.protect`` (the tags beside the ciphertexts) and
``global_codec`` (the arrays the server sends); ``tests/privacy/test_planner.py`` checks them against
what those produce. One serialized ciphertext's size is taken from calibration.json where it holds
the parameters, else measured once with TenSEAL.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from dataclasses import replace
from typing import Any, Mapping, Optional

import numpy as np
from nacl.bindings import crypto_sign_BYTES

from fedveil.core.disk import owner_id
from fedveil.core.errors import UserError
from fedveil.privacy.secagg.base import Cost
from fedveil.privacy.secagg.tenseal import bfv, committee, eval_pair
from fedveil.privacy.secagg.tenseal.config import TensealConfig

SIGNATURE_BYTES = crypto_sign_BYTES  # Ed25519
TAGS = 64 + 32 + SIGNATURE_BYTES  # context id (hex SHA-256) + the ciphertext's SHA-256 + the owner's signature
FRAME = 4  # core.io.pack: a 4-byte length before each part
MEAN_BYTES = 8  # the revealing owner's reply: the held-out mean, one float64 (its metric record's key is not counted)
CALIBRATED = "tenseal_ciphertext_fixed_bytes"  # calibration.json's measured sizes, by parameter key


def _varint_len(value: int) -> int:
    return max(1, math.ceil(value.bit_length() / 7))


def _parameter_key(cfg: Any) -> str:
    if cfg.scheme == "ckks":
        return f"{cfg.poly_modulus_degree}/{list(cfg.coeff_mod_bit_sizes)}/{cfg.scale_bits}"
    return f"bfv/{cfg.poly_modulus_degree}/{list(cfg.coeff_mod_bit_sizes)}/{cfg.plain_modulus_bits}"


def ciphertext_fixed(cfg: Any, calibration: Optional[Mapping[str, Any]] = None) -> int:
    """Serialized bytes of one TenSEAL vector less the varint of its value count.

    At the default parameters this is the raw polynomials (2 x N x one 8-byte prime) plus 138 (CKKS)
    or 129 (BFV) bytes of SEAL/TenSEAL headers, whatever the values; with smaller primes SEAL's zstd
    compression makes it smaller and slightly data dependent, so parameters calibration.json does not
    hold are measured once with TenSEAL."""
    known = (calibration or {}).get(CALIBRATED, {})
    key = _parameter_key(cfg)
    if key in known:
        return int(known[key])
    return _measured_fixed(cfg.poly_modulus_degree, tuple(cfg.coeff_mod_bit_sizes), cfg.scale_bits, cfg.scheme,
                           cfg.plain_modulus_bits or 46)


@lru_cache(maxsize=None)
def _measured_fixed(poly_modulus_degree: int, coeff_mod_bit_sizes: tuple[int, ...], scale_bits: int, scheme: str,
                    plain_modulus_bits: int) -> int:
    import tenseal as ts  # lazy: TenSEAL loads only for parameters calibration.json does not hold

    rng = np.random.default_rng(0)
    if scheme == "bfv":
        t = bfv.plain_modulus(poly_modulus_degree, plain_modulus_bits)
        ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=poly_modulus_degree, plain_modulus=t,
                         coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
        slots = poly_modulus_degree
        sizes = [len(ts.bfv_vector(ctx, rng.integers(-(t // 2), t // 2, slots).tolist()).serialize()) for _ in range(3)]
        return max(sizes) - _varint_len(slots)
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=poly_modulus_degree,
                     coeff_mod_bit_sizes=list(coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** scale_bits
    slots = poly_modulus_degree // 2
    sizes = [len(ts.ckks_vector(ctx, (rng.standard_normal(slots) * 1e-2).tolist()).serialize()) for _ in range(3)]
    return max(sizes) - _varint_len(slots)


def blob_bytes(cfg: Any, values: int, kind: str = "update", calibration: Optional[Mapping[str, Any]] = None) -> int:
    """Exact bytes of a ciphertext blob (``core.io.pack`` framed) of ``values`` adapter values: an
    owner's ``update``, or a ``global`` it re-encrypts (BFV: header, ciphertexts, and for an update
    its sealed weight; CKKS: the ciphertexts, the weight in one extra slot)."""
    fixed = ciphertext_fixed(cfg, calibration)
    if cfg.scheme == "bfv":
        chunks = bfv.ciphertexts(values, cfg.poly_modulus_degree)
        extra = FRAME + bfv.HEADER.size + (FRAME + bfv.COUNT_BOX if kind == "update" else 0)
        return extra + sum(FRAME + fixed + _varint_len(c) for c in chunks)
    slots = cfg.poly_modulus_degree // 2
    total = values + 1  # the weight rides in one extra slot (1 for a global)
    return sum(FRAME + fixed + _varint_len(min(slots, total - i)) for i in range(0, total, slots))


def update_bytes(cfg: Any, values: int, owner: str = owner_id(0), server_round: int = 1,
                 calibration: Optional[Mapping[str, Any]] = None) -> int:
    """Exact bytes of one owner's protected update (the same for every owner and round)."""
    return blob_bytes(cfg, values, "update", calibration) + TAGS


def signed_set_bytes(owners: int, signed: int) -> int:
    """A round's signed payloads as ``global_codec.RoundUpdates`` frames them: a JSON head naming the
    round and the owners (the simulation's ids, round 1), then each owner's payload and signature
    (``signed``: their bytes together)."""
    head = len(json.dumps({"round": 1, "owners": sorted(owner_id(i) for i in range(owners))}))
    return FRAME + head + owners * (2 * FRAME + signed)


def cost(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None, *,
         dp_on: bool, carried: bool = False) -> Cost:
    """One round's bytes with ``owners`` owners, each sending its signed update; the server sends the
    round's signed updates (``global_codec``) and, to an owner that does not keep the global it last
    opened (``tenseal/kept.py``), the signed re-encrypted global besides. Without DP each owner also
    sends its signed, boxed held-out pair, and the server sends the round's pairs to one owner, which
    replies with the mean (``eval_pair.py``). Priced for an owner that took part in the round before
    (it keeps that global: every owner at ``clients_per_round = num_clients``); one that did not
    downloads :func:`base_bytes` more. ``carried``: the holder's arrays in the train message alone (see
    below), the evaluate message in the last round only."""
    up = update_bytes(cfg, values, calibration=calibration)
    glob = blob_bytes(cfg, values, "global", calibration)  # Enc(global), as an owner re-encrypts it
    updates = signed_set_bytes(owners, (up - TAGS) + SIGNATURE_BYTES)  # global_codec.RoundUpdates
    pairs = {} if dp_on else {"eval_up": eval_pair.PAIR_BYTES, "evalsum_up": MEAN_BYTES,
                              "evalsum_down": signed_set_bytes(owners, eval_pair.PAIR_BYTES)}  # the boxed pairs
    # apart: round r's train sends nothing (the owner keeps the global after r - 1 from its evaluate message),
    # its evaluate round r's signed updates
    if not carried:
        return Cost("tenseal", values, owners, up, global_down=updates, global_down_first=updates,
                    reencrypt_up=glob + SIGNATURE_BYTES, evaluate_down=updates, evaluate_down_first=updates, **pairs)
    # carried: round r's train sends round r - 1's updates (round 1 nothing; the owner keeps the global after
    # r - 2 from round r - 1's train); the last round's evaluate its own
    return Cost("tenseal", values, owners, up, global_down=updates, global_down_first=0,
                reencrypt_up=glob + SIGNATURE_BYTES, carried=True,
                evaluate_down=updates, evaluate_down_first=updates, **pairs)


def base_bytes(cfg: Any, values: int, calibration: Optional[Mapping[str, Any]] = None) -> int:
    """The signed re-encrypted global (``global_codec`` arrays ``base-ct*``): what an owner that keeps no
    global of the round before (new, back after missing a round, restarted, or after a coordinator's
    resume) downloads on top of a round's figure."""
    claim = len(json.dumps({"round": 1, "signer": owner_id(0)}))  # global_codec.BASE_CLAIM
    return blob_bytes(cfg, values, "global", calibration) + SIGNATURE_BYTES + claim


FORMS = ("every", "committee", "sum")  # who downloads what of a round: see tenseal/committee.py
COMMIT_BYTES = 32 + SIGNATURE_BYTES  # beside an update: the nonce commitment and the signed contribution


def sum_blob_bytes(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None) -> int:
    """Exact bytes of the ciphertext blob of ``owners`` updates' sum (``_Side.combine``): an update's
    ciphertexts, and under BFV every owner's sealed weight."""
    boxes = (owners - 1) * (FRAME + bfv.COUNT_BOX) if cfg.scheme == "bfv" else 0
    return blob_bytes(cfg, values, "update", calibration) + boxes


def _zeros(n: int) -> bytes:
    return bytes(n)


def variant(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None, *, dp_on: bool,
            form: str, committee_size: Optional[int] = None, carried: bool = False) -> Cost:
    """One round's bytes in download form ``form`` (steady state; an owner keeps the global it opened, so a
    message carries one round's part and no signed base: :func:`cost`):

    - ``every`` (what runs today, :func:`cost`): every owner downloads every signed update of the round;
    - ``committee``: every owner commits beside its update (``COMMIT_BYTES``), is shown its place in the
      committed set (a Merkle path; priced at the longest, so the mean over owners is over by at most
      a few hashes) and reveals its nonce with its signature over the set,
      and downloads the sum with its certificate; the ``committee_size`` members
      (``committee_size``, default the config's; the first ids: their length moves the figure by a byte
      or two) also download every signed update
      and the set with its nonces, and upload a signature;
    - ``sum``: the coordinator's sum alone, no certificate (honest-but-curious coordinator and owners).

    ``carried``: round r's train message sends round r-1's part (round 1 nothing); the last round's
    evaluate message sends its own. A committee member's extra is priced as apart.

    Every figure prices full participation (every owner in the cohort). An owner outside a round's cohort
    downloads the round's sum with its full certificate instead of the lean one: per contributor its update
    digest, contribution signature, nonce and reveal signature (32 + 64 + 32 + 64 B, framed: about 200 B,
    20 KB at cohort 100), beside one ciphertext set; not priced here.
    """
    if form not in FORMS:
        raise UserError(f"aggregation.download must be one of {list(FORMS)}, got '{form}'")
    every = cost(cfg, values, owners, calibration, dp_on=dp_on, carried=carried)
    if form == "every":
        return every
    total = _zeros(sum_blob_bytes(cfg, values, owners, calibration))
    if form == "sum":
        pending = len(committee.certified_round(1, total, None))
        return replace(every, global_down=pending, **_round_parts(pending, carried))
    ids = [owner_id(i) for i in range(owners)]
    members = tuple(ids[:max(1, min(committee_size or cfg.committee_size, owners))])
    contributions = tuple(committee.Contribution(o, _zeros(32), _zeros(32), _zeros(SIGNATURE_BYTES)) for o in ids)
    reveals = {o: _zeros(committee.NONCE_BYTES) for o in ids}
    signed = committee.Certificate(1, contributions, reveals, members, {m: _zeros(SIGNATURE_BYTES) for m in members},
                                   True)
    query = max(len(q.encode()) for q in committee.reveal_queries("", "", 1, list(contributions)).values())
    draft = len(committee.Certificate(1, contributions, reveals, members, {}, True).encode())
    lean = signed.lean("", "")
    certified = len(committee.certified_round(1, total, lean))
    # a member: the draft and every other signed update (it has its own), and of the round it certified the
    # certificate without the sum (it computed it). Apart, that comes in the same round's evaluate message; carried,
    # in the next round's train message: a round's member got the round before's as that round's committee did
    # (the most: from outside it), and the round's c owners that were on the round before's committee save the sum
    others = signed_set_bytes(owners - 1, (every.update_up - TAGS) + SIGNATURE_BYTES)
    bare = len(committee.certified_round(1, b"", lean))
    member = query + draft + others + (certified if carried else bare)
    outside = query + certified
    return replace(every, update_up=every.update_up + COMMIT_BYTES, reveal_up=committee.NONCE_BYTES + SIGNATURE_BYTES,
                   global_down=outside, **_round_parts(outside, carried), committee=len(members),
                   committee_down=member, committee_up=SIGNATURE_BYTES, member_kept=certified - bare if carried else 0)


def _round_parts(part: int, carried: bool) -> dict[str, Any]:
    """A download form's first, second and evaluate figures from one round's part (an owner keeps the global
    it opened: no signed base; apart, round r's train message carries nothing, its evaluate message the part)."""
    if not carried:
        return {"global_down_first": part, "global_down_second": None, "evaluate_down": part,
                "evaluate_down_first": part}
    return {"global_down_first": 0, "global_down_second": None, "evaluate_down": part, "evaluate_down_first": part}


def priced(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None, *, dp_on: bool,
           carried: bool = False) -> Cost:
    """``BackendSpec.cost``: the round's bytes in the config's download form (``aggregation.download``; ``auto``,
    not yet resolved for the stated threats, as ``every``: what any round may fall back to, and the most)."""
    form = getattr(cfg, "download", "every")
    return variant(cfg, values, owners, calibration, dp_on=dp_on, form=form if form in FORMS else "every",
                   carried=carried)


def variants(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None, *, dp_on: bool,
             committee_size: Optional[int] = None, carried: bool = False) -> dict[str, Cost]:
    """Every download form's bytes (:func:`variant`), by form."""
    return {form: variant(cfg, values, owners, calibration, dp_on=dp_on, form=form, committee_size=committee_size,
                          carried=carried)
            for form in FORMS}


def priced_config(owners: int, parties: int = 0) -> TensealConfig:
    """The config the planner prices for ``owners`` per round: BFV's parameters chosen for the cohort,
    as the run's are; where no BFV set holds the cohort, CKKS (the run's refusal names the limit)."""
    try:
        return TensealConfig(max_owners=owners)
    except UserError:
        return TensealConfig(scheme="ckks", max_owners=owners)
