"""``crypten``'s exact bytes per round (``BackendSpec.cost``): each owner's sealed shares and signed
bundle (``shares.seal_shares``, ``shares.sign_bundle``), the clear global it downloads, and what each
of the K parties receives and returns. The parties' own MPC traffic is not counted.
``tests/privacy/test_planner.py`` checks the update against ``CryptenBackend.protect``.

With ``aggregation.shares=seeded`` an owner sends one full share and K-1 sealed seeds, whichever
party gets the full share (a header is as long for either form); ``full`` sends K full shares.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from nacl.bindings import crypto_box_SEALBYTES, crypto_sign_BYTES

from fedveil.core.disk import owner_id
from fedveil.privacy.secagg.base import Cost, clear_global_bytes
from fedveil.privacy.secagg.crypten import eval_pair
from fedveil.privacy.secagg.crypten.backend import CryptenConfig
from fedveil.privacy.secagg.crypten.shares import FULL, SEED, SEED_BYTES, ShareBundle, ShareHeader, full_party

HEAD_LENGTH = 4  # shares.seal_share: the header's length before the header
COUNT = 8  # shares.seal_share: the owner's example count (float64) before the int64 shares or the seed


LAYOUT = "0" * 64  # a layout digest's length (the planner prices any layout)


def header_bytes(values: int, party: int, server_round: int = 1, owner: str = owner_id(0),
                 layout: str = LAYOUT, form: str = FULL) -> int:
    """Length of the JSON header a share is bound to (``shares.ShareHeader``)."""
    return len(ShareHeader(server_round, owner, party, layout, values, form).encode())


def share_bytes(values: int, party: int, server_round: int = 1, owner: str = owner_id(0),
                layout: str = LAYOUT) -> int:
    """One sealed full share: sealed box of (header length, header, float64 count, int64 shares)."""
    return (crypto_box_SEALBYTES + HEAD_LENGTH + header_bytes(values, party, server_round, owner, layout) + COUNT
            + 8 * values)


def seed_bytes(values: int, party: int, server_round: int = 1, owner: str = owner_id(0),
               layout: str = LAYOUT) -> int:
    """One sealed seed: sealed box of (header length, header, float64 count, 32-byte seed)."""
    return (crypto_box_SEALBYTES + HEAD_LENGTH + header_bytes(values, party, server_round, owner, layout, SEED)
            + COUNT + SEED_BYTES)


def sealed_bytes(cfg: Any, values: int, server_round: int = 1, owner: str = owner_id(0),
                 layout: str = LAYOUT) -> int:
    """One owner's sealed shares to all K parties (``shares.seal_shares``)."""
    if cfg.shares == "full":
        return sum(share_bytes(values, p, server_round, owner, layout) for p in range(cfg.parties))
    full = full_party(owner, server_round, cfg.parties)
    return sum((share_bytes if p == full else seed_bytes)(values, p, server_round, owner, layout)
               for p in range(cfg.parties))


def bundle_bytes(parties: int, server_round: int = 1, owner: str = owner_id(0), run: str = "",
                 layout: str = LAYOUT, min_owners: int = 3) -> int:
    """The owner's signed bundle over its sealed shares (``shares.ShareBundle``: SHA-256 per party, its
    ``aggregation.min_owners``, Ed25519)."""
    return len(ShareBundle(run, server_round, layout, owner, (bytes(32),) * parties,
                           bytes(crypto_sign_BYTES), min_owners).encode())


def update_bytes(cfg: Any, values: int, owner: str = owner_id(0), server_round: int = 1,
                 calibration: Optional[Mapping[str, Any]] = None) -> int:
    """Exact bytes of one owner's protected update: its sealed shares (or seeds) and the signed bundle
    (the headers name the owner and the round, so their lengths vary by a few bytes)."""
    return (sealed_bytes(cfg, values, server_round, owner)
            + bundle_bytes(cfg.parties, server_round, owner, min_owners=cfg.min_owners))


def pair_bytes(cfg: Any, owner: str, run: str, layout_digest: str, server_round: int) -> int:
    """Exact bytes of one owner's protected held-out pair (``eval_pair.protect``): its sealed shares
    and the signed bundle, as an update's but of 2 values under the pair's purpose tag."""
    tag = eval_pair.purpose_tag(layout_digest)
    return (sealed_bytes(cfg, eval_pair.LENGTH, server_round, owner, tag)
            + bundle_bytes(cfg.parties, server_round, owner, run, tag, cfg.min_owners))


def pair_up_bytes(cfg: Any, owner: str = owner_id(0), server_round: int = 1) -> int:
    """:func:`pair_bytes` priced as an update is: run id "" and an all-zero layout digest of its length."""
    return pair_bytes(cfg, owner, "", LAYOUT, server_round)


def party_in_bytes(cfg: Any, values: int, owners: int, dp_on: bool) -> int:
    """What one party receives per round, the mean over the K parties (rounded down): each owner's
    share or seed sealed to it and the owner's whole signed bundle, for the update and, without DP,
    the held-out pair. With ``shares=seeded`` the full shares rotate (``shares.full_party``): a
    party gets floor or ceil(owners / K) of them, the mean is exact when K divides the owners."""
    tag = eval_pair.purpose_tag(LAYOUT)
    sealed = owners * (sealed_bytes(cfg, values)
                       + (0 if dp_on else sealed_bytes(cfg, eval_pair.LENGTH, layout=tag)))
    bundle = bundle_bytes(cfg.parties, min_owners=cfg.min_owners)
    bundles = owners * (bundle + (0 if dp_on else bundle_bytes(cfg.parties, layout=tag, min_owners=cfg.min_owners)))
    return sealed // cfg.parties + bundles


def cost(cfg: Any, values: int, owners: int, calibration: Optional[Mapping[str, Any]] = None, *,
         dp_on: bool, carried: bool = False) -> Cost:
    """One round's bytes: every owner's shares in to the parties, the float64 aggregate out of each;
    without DP also every owner's held-out pair, shared the same way, and its float64 sum out. The clear
    global down as plain's (``carried``: the train message alone but in the last round). Carried, a
    round's pairs reach the parties with the next round's updates: the same per steady round."""
    up = update_bytes(cfg, values)
    pair = 0 if dp_on else pair_up_bytes(cfg)
    down = clear_global_bytes(values, 1 if carried else 2)
    last = clear_global_bytes(values, 1)  # the evaluate message (carried: the last round's only)
    return Cost("crypten", values, owners, up, down, down, party_in=party_in_bytes(cfg, values, owners, dp_on),
                party_out=8 * values + (0 if dp_on else 8 * eval_pair.LENGTH), parties=cfg.parties, eval_up=pair,
                carried=carried, evaluate_down=last, evaluate_down_first=last)


def priced_config(owners: int, parties: int = 0) -> CryptenConfig:
    """The config the planner prices: K = the independent parties stated (none stated: 3)."""
    return CryptenConfig(parties=max(2, parties or 3))


def picked_values(parties: int) -> dict:
    """What ``aggregation=auto`` sets when it picks crypten: the K parties stated."""
    return {"parties": parties}
