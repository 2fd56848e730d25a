"""``tenseal``'s contexts: the key holder's fresh one, the bytes each party holds, and the check
that a context is the one the config describes (the step and the digits are decoded with the
config's parameters, so a context of other parameters would decrypt to garbage)."""

from __future__ import annotations

import hashlib

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
