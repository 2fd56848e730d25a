"""Per-round global adapter checkpoints, written atomically, and resuming from the latest.

``<out>/checkpoints/round_0003.safetensors`` holds what the server has of the global adapter
(the flat vector for ``plain``; ciphertext bytes for sealed backends) with the round and the
layout digest in its metadata. A file is written to a temporary name, flushed, fsynced and
renamed, so a crash leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save as save_safetensors

from fedveil.core.io import atomic_write_bytes
from fedveil.core.errors import UserError
from fedveil.core.layout import AdapterLayout
from fedveil.server.outputs import earlier_run

NAME = re.compile(r"round_(\d{4})\.safetensors$")


def save(out_dir: Path, server_round: int, arrays: dict[str, np.ndarray], layout: AdapterLayout) -> Path:
    folder = Path(out_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"round_{server_round:04d}.safetensors"
    blob = save_safetensors({k: np.ascontiguousarray(v) for k, v in arrays.items()} or {"empty": np.zeros(0, np.uint8)},
                metadata={"round": str(server_round), "layout_digest": layout.digest})
    atomic_write_bytes(path, blob)
    return path


def latest(out_dir: Path, layout: AdapterLayout) -> tuple[int, dict[str, np.ndarray]] | None:
    """The newest checkpoint as (round, arrays), or None; a foreign layout is an error."""
    folder = Path(out_dir) / "checkpoints"
    found = sorted(p for p in folder.glob("round_*.safetensors") if NAME.search(p.name)) if folder.is_dir() else []
    if not found:
        return None
    path = found[-1]
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            arrays = {k: fh.get_tensor(k) for k in fh.keys() if k != "empty"}
    except (SafetensorError, OSError, KeyError) as exc:
        raise UserError(f"checkpoint {path} is unreadable ({exc}); delete it to resume from the one before") from exc
    layout.check(meta.get("layout_digest", ""), f"checkpoint {path.name}")
    return int(meta["round"]), arrays


def check_resumable(out_dir: str | Path) -> None:
    """``resume=true`` needs an earlier run in ``out_dir``: a checkpoint, or what a run writes before
    its first one (round 0's row in metrics.jsonl: a run killed in round 1 resumes from round 1).
    Without any, resuming would silently start a fresh run, perhaps in the wrong directory."""
    if not earlier_run(out_dir):
        raise UserError(f"resume=true but {out_dir} holds no checkpoint and no earlier run to resume: drop resume=true "
                        "to start a fresh run, or point hydra.run.dir (output_dir under flwr run) at the run to resume")
