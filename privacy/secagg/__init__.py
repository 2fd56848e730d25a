"""Secure-aggregation backends, chosen by ``aggregation.name`` through a closed registry."""

from fedveil.core.errors import UserError
from fedveil.privacy.secagg.plain import PlainBackend, PlainConfig

# name -> (config dataclass, backend class). A run config names a key here; nothing else loads.
BACKENDS = {
    "plain": (PlainConfig, PlainBackend),
}


def backend_entry(name: str):
    if name not in BACKENDS:
        raise UserError(f"aggregation '{name}' is unknown: choose one of {sorted(BACKENDS)}")
    return BACKENDS[name]
