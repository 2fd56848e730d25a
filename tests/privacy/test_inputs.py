"""The owner's check of the global adapter: each check refuses alone, with a public code and name."""

from __future__ import annotations

import numpy as np
import pytest

from fedveil.core.errors import Refusal
from fedveil.privacy.inputs import GLOBAL_CHECKS, check_global


def refused(vector, size=4, bound=100.0) -> Refusal:
    with pytest.raises(Refusal) as caught:
        check_global(vector, size, bound)
    assert caught.value.code == "bad-global" and caught.value.public["check"] in GLOBAL_CHECKS
    assert "\n" not in str(caught.value)
    return caught.value


def test_a_good_global_comes_back_as_itself():
    vector = np.array([0.5, -100.0, 100.0, 0.0], np.float32)
    assert check_global(vector, 4, 100.0) is vector


@pytest.mark.parametrize("vector", [
    np.zeros(4, np.float64), np.zeros(4, np.float16), np.zeros(4, np.int64), np.zeros(4, np.int32),
    np.zeros(4, ">f4"),  # float32 of the other byte order: refused, never reinterpreted
    np.array(["1", "2", "3", "4"]), np.array([1.0, "x", None, 2.0], dtype=object),
    np.array([b"a", b"b", b"c", b"d"]), [0.0, 0.0, 0.0, 0.0], "0000", None, 0.0,
])
def test_every_dtype_but_float32_is_refused_by_the_dtype_check(vector):
    assert refused(vector).public == {"check": "dtype"}


@pytest.mark.parametrize("vector", [np.zeros(3, np.float32), np.zeros(5, np.float32), np.zeros((2, 2), np.float32),
                                    np.zeros((4, 1), np.float32), np.zeros((), np.float32)])
def test_any_other_shape_is_refused_by_the_shape_check(vector):
    assert refused(vector).public == {"check": "shape"}


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_refused_by_the_finite_check(bad):
    vector = np.zeros(4, np.float32)
    vector[2] = bad
    assert refused(vector).public == {"check": "finite"}


@pytest.mark.parametrize("big", [100.5, -101.0, 1e30, np.finfo(np.float32).max, -np.finfo(np.float32).max])
def test_a_value_beyond_the_bound_is_refused_by_the_bound_check(big):
    vector = np.zeros(4, np.float32)
    vector[1] = big
    assert refused(vector).public == {"check": "bound"}


def test_a_bound_beyond_float32s_range_admits_every_finite_global_and_a_nan_bound_admits_none():
    vector = np.full(4, np.finfo(np.float32).max, np.float32)
    assert check_global(vector, 4, 1e39) is vector
    assert refused(np.zeros(4, np.float32), bound=float("nan")).public == {"check": "bound"}


def test_the_checks_run_in_order_and_read_no_owner_state():
    # an object array of the wrong size is a dtype refusal; a float32 NaN of the wrong size a shape one
    assert refused(np.array([None] * 9, dtype=object)).public == {"check": "dtype"}
    assert refused(np.full(9, np.nan, np.float32)).public == {"check": "shape"}
    assert refused(np.array([np.nan, 1e30, 0, 0], np.float32)).public == {"check": "finite"}
