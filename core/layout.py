"""The adapter layout: which tensors travel, in which order, with which shapes.

Only LoRA adapter tensors leave a data owner. They travel as one flat float32 vector in a fixed,
named order; every message carries :attr:`AdapterLayout.digest`, and a party whose layout differs
refuses the message instead of reshaping it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from fedveil.core.errors import UserError


class LayoutMismatch(UserError):
    """Two parties disagree on the adapter layout (other model, LoRA rank or targets)."""


@dataclass(frozen=True)
class AdapterLayout:
    """Names, shapes and dtypes of the adapter tensors, in transmission order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    @classmethod
    def of(cls, tensors: Mapping[str, np.ndarray]) -> "AdapterLayout":
        return cls(
            names=tuple(tensors),
            shapes=tuple(tuple(int(d) for d in np.shape(t)) for t in tensors.values()),
            dtypes=tuple(str(np.asarray(t).dtype) for t in tensors.values()),
        )

    @property
    def size(self) -> int:
        """Number of scalar values in the flat vector."""
        return int(sum(int(np.prod(s)) for s in self.shapes))

    @property
    def digest(self) -> str:
        """Hex SHA-256 of the layout; equal digests mean identical layouts."""
        blob = json.dumps([self.names, self.shapes, self.dtypes], separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def check(self, digest: str, who: str) -> None:
        """Raise :class:`LayoutMismatch` unless ``digest`` is this layout's."""
        if digest != self.digest:
            raise LayoutMismatch(
                f"adapter layout mismatch from {who}: expected {self.digest[:12]}, got {str(digest)[:12]}; "
                "every party must use the same base model and model.lora settings"
            )

    def flatten(self, tensors: Mapping[str, np.ndarray]) -> np.ndarray:
        """Named tensors -> one float32 vector in layout order."""
        self.check(AdapterLayout.of(tensors).digest, "local tensors")
        return np.concatenate([np.asarray(tensors[n], dtype=np.float32).ravel() for n in self.names])

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """One vector -> named tensors (float32, layout shapes)."""
        vector = np.asarray(vector)
        if vector.ndim != 1 or vector.size != self.size:
            raise LayoutMismatch(
                f"adapter vector has shape {vector.shape}, the layout needs ({self.size},)"
            )
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes):
            n = int(np.prod(shape))
            out[name] = vector[offset : offset + n].reshape(shape).astype(np.float32, copy=False)
            offset += n
        return out
