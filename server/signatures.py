"""The coordinator's part in signed results (``privacy/provenance.py``): ask, keep, claim.

The last round's evaluate message asks every owner to sign the global it evaluates
(:func:`sign_request`); the bundles in the replies are kept beside the final adapter
(:func:`keep_statements`, ``<run>/signatures/<owner>.json``, whichever backend: under tenseal the
server writes no adapter, each owner holds its own with its bundle inside, and these are the
cohort's); and the coordinator signs its round chain's head as its own claim
(:func:`claim_chain_head`, with its host's key: ``provenance.coordinator_key_file``). The coordinator can
neither make nor alter an owner's statement: it only stores what owners signed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Message

from fedveil.configs.schema import FedveilConfig, run_key
from fedveil.core import records, wire
from fedveil.core.console import progress
from fedveil.core.payload import PayloadError
from fedveil.privacy import provenance

def sign_request(cfg: FedveilConfig, server_round: int) -> dict[str, Any]:
    """The per-round value that asks owners to sign: in the run's last round only."""
    return {wire.SIGN_ADAPTER: True} if server_round == cfg.rounds else {}


def keep_statements(out: Path, replies: list[Message]) -> list[str]:
    """Write each owner bundle found in ``replies`` into ``out/signatures/``; the owners kept."""
    kept = []
    for m in replies:
        if not m.has_content() or m.has_error() or wire.META not in m.content:
            continue
        bundle = m.content.config_records[wire.META].get(wire.ADAPTER_STATEMENT)
        if not isinstance(bundle, bytes):
            continue
        who = records.owner_label(m)
        try:
            provenance.write_bundle(out, who, bundle)
        except PayloadError as exc:
            progress(f"  signed statement not kept: {exc}")
            continue
        kept.append(who)
    if kept:
        where = out / provenance.SIGNATURES_DIR
        progress(f"  {len(kept)} owners signed the final adapter ({where})")
    return kept


def claim_chain_head(out: Path, cfg: FedveilConfig, head: str | None) -> Path | None:
    """The coordinator's signed claim over its round chain's head, beside the owners' bundles; None
    (and a console line) where its key cannot be kept: the run's results stand without the claim."""
    try:
        claim = provenance.sign_chain_head(run_key(cfg), head, cfg.rounds)
    except (OSError, RuntimeError) as exc:  # RuntimeError: Path.home() with no home
        progress(f"coordinator's claim over the round chain not signed ({exc}): set FEDVEIL_COORDINATOR_KEY to a "
                 "writable path")
        return None
    return provenance.write_bundle(out, provenance.COORDINATOR, claim)
