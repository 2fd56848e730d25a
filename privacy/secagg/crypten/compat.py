"""CrypTen 0.4.1 on torch 2.13: every fix in one place, applied by :func:`import_crypten`.

CrypTen is unmaintained; these are the problems met here and what is done about each:

1. ``import crypten`` fails: ``crypten.nn.onnx_converter`` imports
   ``torch.onnx._internal.registration``, which torch 2.13 no longer has. It is used only to
   convert PyTorch models to CrypTen models, which fedveil never does; a stand-in module is
   registered whose ``registry`` raises a clear error if anything does touch it.
2. ``FixedPointEncoder.decode`` divides negative values by ``2^16 - 1`` instead of ``2^16``: a
   value ``t < 0`` with ``0 < (t mod 2^16) < |t div 2^16|`` decodes exactly 1.0 too low (weighted
   sums of updates hit it). Replaced by floor division plus the remainder.
3. ``FixedPointEncoder.encode`` truncates (``.long()``) instead of rounding, biasing every
   encoded value toward zero by up to one ulp (2^-16). Replaced by rounding to nearest.
4. ``crypten.load`` needs ``weights_only=False`` on torch >= 2.6. fedveil never calls it on
   untrusted bytes: :func:`load_trusted` is the only door, for files CrypTen itself wrote.

Importing this module does not import CrypTen; :func:`import_crypten` does, once.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import torch

_PATCHED = False


class _NoOnnxRegistry:
    def __getattr__(self, name: str):
        raise RuntimeError(
            "CrypTen's PyTorch-to-ONNX conversion is unavailable on torch 2.13 (fedveil does not use it)"
        )


def _stand_in_onnx_registration() -> None:
    name = "torch.onnx._internal.registration"
    if name in sys.modules:
        return
    try:
        found = importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        found = False
    if not found:
        module = types.ModuleType(name)
        module.registry = _NoOnnxRegistry()
        sys.modules[name] = module


def encode(self, x, device=None):
    """Fixed-point encoding with rounding to nearest (CrypTen truncates)."""
    from crypten.common.tensor_types import is_float_tensor, is_int_tensor  # lazy: after import_crypten's torch shim
    from crypten.cryptensor import CrypTensor  # lazy: after import_crypten's torch shim

    if isinstance(x, CrypTensor):
        return x
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return torch.tensor(round(self._scale * x), dtype=torch.long, device=device)
    if isinstance(x, list):
        x = torch.tensor(x, dtype=torch.float64, device=device)
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x).to(device)
    if is_float_tensor(x):
        return torch.round(x.double() * self._scale).long()
    if is_int_tensor(x):
        return self._scale * x.long()
    raise TypeError(f"Cannot encode input of type {type(x).__name__} / dtype {getattr(x, 'dtype', None)}")


def decode(self, tensor):
    """Exact fixed-point decoding: floor(t / 2^p) + (t mod 2^p) / 2^p."""
    from crypten.common.tensor_types import is_int_tensor  # lazy: after import_crypten's torch shim

    if tensor is None:
        return None
    if not is_int_tensor(tensor):
        raise TypeError("input must be a LongTensor")
    whole = tensor.div(self._scale, rounding_mode="floor")
    remainder = tensor - whole * self._scale  # in [0, scale)
    return (whole.double() + remainder.double() / self._scale).float()


def import_crypten():
    """``crypten``, importable and patched for torch 2.13 (idempotent)."""
    global _PATCHED
    _stand_in_onnx_registration()
    import crypten  # lazy: only after the onnx stand-in above
    from crypten.encoder import FixedPointEncoder  # lazy: only after the onnx stand-in above

    if not _PATCHED:
        FixedPointEncoder.encode = encode
        FixedPointEncoder.decode = decode
        _PATCHED = True
    return crypten


def load_trusted(path):
    """``crypten.load`` for a file CrypTen itself wrote in this deployment (pickle: trusted only)."""
    crypten = import_crypten()
    return crypten.load(path, weights_only=False)
