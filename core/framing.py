"""Length-prefixed framing of byte strings (ciphertext chunks, sealed shares)."""

from __future__ import annotations

from fedveil.core.errors import UserError


class FramingError(UserError):
    """A framed byte stream that is cut short or malformed."""


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
