"""Bytes on disk and on the wire: crash-safe replacement, durable JSON lines, length framing.

- :func:`atomic_write_bytes`: a reader sees the old file or the new one, never half of one.
- :func:`append_jsonl` / :func:`read_jsonl`: one JSON object per line, each append fsynced, so a
  crash loses at most the line being written.
- :func:`pack` / :func:`unpack`: length-prefixed byte strings (ciphertext chunks, sealed shares).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedveil.core.errors import UserError


class FramingError(UserError):
    """A framed byte stream that is cut short or malformed."""


def temp_path(path: Path) -> Path:
    """Where the new content is written before it replaces ``path``."""
    return path.with_name(f".{path.name}.tmp")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file, fsync it, rename it over ``path``, fsync the directory."""
    path = Path(path)
    tmp = temp_path(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (sorted keys) and fsync it."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every JSON line of ``path`` ([] if it does not exist)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def pack(chunks: list[bytes]) -> bytes:
    return b"".join(len(c).to_bytes(4, "big") + c for c in chunks)


def unpack(blob: bytes) -> list[bytes]:
    chunks, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise FramingError("byte stream is truncated (dangling length prefix)")
        n = int.from_bytes(blob[pos : pos + 4], "big")
        if n == 0 or pos + 4 + n > len(blob):
            raise FramingError("byte stream is truncated (a part is cut short)")
        chunks.append(blob[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return chunks
