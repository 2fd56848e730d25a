"""Bytes on disk and on the wire: crash-safe replacement, durable JSON lines, length framing.

- :func:`atomic_write_bytes`: a reader sees the old file or the new one, never half of one;
  each write has its own temp file (:func:`leftover_temps` finds those a crash left).
- :func:`append_jsonl` / :func:`read_jsonl`: one JSON object per line, each append fsynced, so a
  crash loses at most the line being written.
- :func:`pack` / :func:`unpack`: length-prefixed byte strings (ciphertext chunks, sealed shares).
"""

from __future__ import annotations

import glob
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

from fedveil.core.errors import UserError
from fedveil.core.faults import maybe_die


class FramingError(UserError):
    """A framed byte stream that is cut short or malformed."""


def leftover_temps(path: str | os.PathLike) -> list[Path]:
    """Temp files that :func:`atomic_write_bytes` left beside ``path`` (a write that was cut off).

    Covers the unique names written now (``.NAME.<random>.tmp``) and the fixed name older
    versions used (``.NAME.tmp``). A writer that is still running also has one; callers that
    must tell the two apart hold a lock around their writes.
    """
    path = Path(path)
    found = set(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    legacy = path.with_name(f".{path.name}.tmp")
    if legacy.exists():
        found.add(legacy)
    return sorted(found)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int = 0o666, failpoint: str | None = None) -> None:
    """Write ``data`` to a fresh temp file beside ``path``, fsync it, rename it over ``path``,
    fsync the directory.

    The temp name is unique per call (``.NAME.<random>.tmp``, created with ``O_EXCL``), so two
    writers never share one; the last rename wins. ``mode`` is filtered by the umask as for
    ``open``. If the write fails, the temp file is removed and ``path`` is left as it was.
    ``failpoint``: a :mod:`fedveil.core.faults` point (WHO: the parent folder's name) between the
    fsynced temp file and the rename, for the fault-injection tests.
    """
    path = Path(path)
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            break
        except FileExistsError:  # pragma: no cover - 64 random bits
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if failpoint:
            maybe_die(failpoint, who=path.parent.name)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def json_line(row: dict[str, Any]) -> str:
    """One JSON line as every fedveil JSONL file holds it (sorted keys)."""
    return json.dumps(row, sort_keys=True) + "\n"


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Append one JSON line (sorted keys) and fsync it."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json_line(row))
        fh.flush()
        os.fsync(fh.fileno())


def keep_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> None:
    """Rewrite ``path`` atomically with only the lines ``keep`` accepts (left as it is when all are)."""
    rows = read_jsonl(path)
    kept = [r for r in rows if keep(r)]
    if len(kept) < len(rows):
        atomic_write_bytes(path, "".join(json_line(r) for r in kept).encode("utf-8"))


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
