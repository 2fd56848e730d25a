"""``tenseal``'s contexts: the key holder's fresh one, the bytes each party holds, and the check
that a context is the one the config describes (the step and the digits are decoded with the
config's parameters, so a context of other parameters would decrypt to garbage).

An owner side is built for every message (Flower runs one per message; a simulation worker plays
many owners), and deserializing its two contexts was most of that build (~8 of ~10 ms per
message at N=4096). :func:`cached_context` keeps the last few contexts a process loaded, keyed by
the SHA-256 of their bytes: the same bytes always deserialize to the same context, and nothing
sets a loaded context's parameters or keys, so a context is shared only with holders of
byte-identical keys and no owner accepts or decrypts anything it would not with a fresh load.
Every check of the files it came from (``keys.held_context``: the run, roster, mode and context id)
still runs on every message.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

from fedveil.core.errors import UserError
from fedveil.core.payload import PayloadError
from fedveil.privacy.secagg.tenseal import bfv
from fedveil.privacy.secagg.tenseal.config import TensealConfig


def make_context(cfg: TensealConfig):
    """A fresh secret context (the key holder's), BFV or CKKS."""
    import tenseal as ts  # lazy: SEAL loads only where tenseal is used; configs import us

    if cfg.scheme == "bfv":
        return ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=cfg.poly_modulus_degree,
                          plain_modulus=bfv.plain_modulus(cfg.poly_modulus_degree, cfg.plain_modulus_bits),
                          coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes))
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=cfg.poly_modulus_degree,
                     coeff_mod_bit_sizes=list(cfg.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** cfg.scale_bits
    return ctx


def public_bytes(ctx) -> bytes:
    """The context without its secret key: all the server ever holds."""
    return ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)


def secret_bytes(ctx) -> bytes:
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def context_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()


CACHED_CONTEXTS = 4  # a process serves one run at a time: its public and secret context, and room for a next run
_cache: OrderedDict[bytes, tuple] = OrderedDict()  # SHA-256 of the bytes -> (context, canonical bytes)
_cache_lock = threading.Lock()  # an owner worker answers on socket threads (one instruction at a time, yet)


def cached_context(data: bytes) -> tuple:
    """``(context, canonical)`` of ``data`` (:func:`load_context`), deserialized once per process for
    the same bytes. ``canonical``: :func:`secret_bytes` of the context as loaded, from which owners
    derive their shared keys; it is taken before any use, since TenSEAL serializes a context that
    has encrypted or decrypted differently (one flag byte, same keys)."""
    key = hashlib.sha256(data).digest()
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    ctx = load_context(data)
    entry = (ctx, secret_bytes(ctx))
    with _cache_lock:
        _cache[key] = entry
        while len(_cache) > CACHED_CONTEXTS:
            _cache.popitem(last=False)
    return entry


def load_context(data: bytes):
    import tenseal as ts  # lazy: SEAL loads only where tenseal is used; configs import us

    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare ValueError/RuntimeError on bad bytes
        raise PayloadError(f"tenseal context bytes are unreadable ({exc}); ask the key holder to resend them") from exc


def check_parameters(ctx, cfg: TensealConfig) -> None:
    """Refuse a context not of the configured scheme, ring and (BFV) plain modulus."""
    parms = ctx.seal_context().data.first_context_data().parms()
    scheme = str(parms.scheme()).rsplit(".", 1)[-1].lower()
    t = parms.plain_modulus().value() if scheme == "bfv" else 0  # CKKS has none (SEAL throws on asking)
    want = bfv.plain_modulus(cfg.poly_modulus_degree, cfg.plain_modulus_bits) if scheme == "bfv" else 0
    if (scheme, parms.poly_modulus_degree(), t) != (cfg.scheme, cfg.poly_modulus_degree, want):
        raise UserError(f"the federation's context is {scheme.upper()} at N={parms.poly_modulus_degree()}"
                        f"{f', t={t}' if t else ''}, but aggregation says scheme={cfg.scheme}, "
                        f"N={cfg.poly_modulus_degree}, plain_modulus_bits={cfg.plain_modulus_bits}: "
                        "use the config the federation was keyed with")
