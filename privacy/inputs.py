"""The owner's checks on what the coordinator sends, run before any data is touched or ε reserved.

A check here reads only the coordinator's input and public values (the layout's size, the
policy's bound), so whether it refuses, and which check it names, says nothing about the owner's
data: the refusal may leave the owner as its code and the check's name.
"""

from __future__ import annotations

import numpy as np

from fedveil.core.errors import Refusal

# The checks, in the order they run; a refusal names one (its public parameter ``check``).
GLOBAL_CHECKS = ("dtype", "shape", "finite", "bound")


def check_global(vector, size: int, bound: float) -> np.ndarray:
    """The global adapter as a 1-D float32 array, or a ``Refusal("bad-global", ..., check=...)``.

    Parameters
    ----------
    vector
        What the coordinator sent (any object: an array of another dtype is refused, never cast).
    size
        The number of values of the owner's adapter layout.
    bound
        The largest ``|v|`` the owner trains on (public: a policy value). A finite global can still
        make the forward pass overflow on some records; the bound limits that, and DP-SGD zeroes
        what still overflows (``privacy/dp/sgd.py``).

    Returns
    -------
    numpy.ndarray
        ``vector`` itself as a 1-D float32 array (no copy when it already is one).
    """
    dtype = getattr(vector, "dtype", None)
    if not isinstance(vector, np.ndarray) or dtype != np.float32:
        # a float64 global would be rounded silently, and an object or str one raises in numpy
        raise Refusal("bad-global", f"the global adapter is {_describe(vector)}, not a float32 array: "
                      "the coordinator must send the layout's float32 vector", check="dtype")
    if vector.ndim != 1 or vector.size != size:
        raise Refusal("bad-global", f"the global adapter has shape {vector.shape}, not ({size},) of the "
                      "owner's layout: the coordinator must send the layout's vector", check="shape")
    if not bool(np.isfinite(vector).all()):
        raise Refusal("bad-global", "the global adapter holds NaN or infinite values: the owner trains only on a "
                      "finite global", check="finite")
    # max |v| of a finite float32 array cannot overflow; compared in float64 so a bound above
    # float32's range still means what it says
    largest = float(np.max(np.abs(vector))) if size else 0.0
    if not largest <= float(bound):
        raise Refusal("bad-global", f"the global adapter has |v| up to {largest:.3g}, above the owner's bound "
                      f"{float(bound):g}: the coordinator must send a global within it, or the owner raises the "
                      "bound in its policy", check="bound")
    return vector


def _describe(vector) -> str:
    dtype = getattr(vector, "dtype", None)
    return f"of dtype {dtype}" if dtype is not None else f"a {type(vector).__name__}"
