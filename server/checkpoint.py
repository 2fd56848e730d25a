"""Per-round global adapter checkpoints, written atomically, and resuming from the latest.

``<out>/checkpoints/round_0003.safetensors`` holds the flat global vector with the round and
the layout digest in its metadata. A file is written to a temporary name, flushed, fsynced and
renamed, so a crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError

from fedveil.core.atomic import atomic_write_bytes
from fedveil.core.errors import UserError
from fedveil.core.layout import AdapterLayout

NAME = re.compile(r"round_(\d{4})\.safetensors$")


def save(out_dir: Path, server_round: int, vector: np.ndarray, layout: AdapterLayout) -> Path:
    from safetensors.numpy import save

    folder = Path(out_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round_{server_round:04d}.safetensors"
    blob = save({"adapter": np.ascontiguousarray(vector, np.float32)},
                metadata={"round": str(server_round), "layout_digest": layout.digest})
    atomic_write_bytes(path, blob)
    return path


def latest(out_dir: Path, layout: AdapterLayout) -> tuple[int, np.ndarray] | None:
    """The newest checkpoint as (round, vector), or None; a foreign layout is an error."""
    folder = Path(out_dir) / "checkpoints"
    found = sorted(p for p in folder.glob("round_*.safetensors") if NAME.search(p.name)) if folder.is_dir() else []
    if not found:
        return None
    path = found[-1]
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            vector = fh.get_tensor("adapter")
    except (SafetensorError, OSError, KeyError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); delete it to resume from the one before") from exc
    layout.check(meta.get("layout_digest", ""), f"checkpoint {path.name}")
    return int(meta["round"]), vector
