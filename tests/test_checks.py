"""fastpose.checks: the one home of parameter checks (finite, in range, of the right kind, never converted
before checked) and the argparse types that name the flag."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from fastpose import checks


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), "nan", "1e999", 10 ** 400])
def test_number_rejects_non_finite(value):
    with pytest.raises(ValueError, match="x must be a finite number"):
        checks.number(value, "x")


@pytest.mark.parametrize("value", [True, None, "abc", 1j, [1.0], object()])
def test_number_rejects_non_numbers(value):
    with pytest.raises(ValueError, match="x must be a number"):
        checks.number(value, "x")


def test_number_bounds_and_kinds():
    assert checks.number(np.float32(2.5), "x", lo=0) == 2.5 and checks.number("3", "x") == 3.0
    assert checks.number(None, "x", none_ok=True) is None
    with pytest.raises(ValueError, match=r"x must be a finite number > 0, got 0"):
        checks.number(0, "x", lo=0, lo_open=True)
    with pytest.raises(ValueError, match=r"in \[0, 1\], got 1.5"):
        checks.number(1.5, "x", lo=0, hi=1)
    with pytest.raises(ValueError, match=r"in \[0, 1\), got 1"):
        checks.number(1, "x", lo=0, hi=1, hi_open=True)


def test_integer_never_rounds():
    assert checks.integer(3.0, "n") == 3 and checks.integer("7", "n") == 7 and checks.integer(np.int64(2), "n") == 2
    for bad in (3.5, float("nan"), "3.5", True, float("inf")):
        with pytest.raises(ValueError, match="n must be"):
            checks.integer(bad, "n")
    with pytest.raises(ValueError, match=r"n must be an integer in \[1, 10\], got 0"):
        checks.integer(0, "n", lo=1, hi=10)


def test_probability_choice_boolean():
    assert checks.probability(0, "p") == 0.0 and checks.probability(1, "p") == 1.0
    with pytest.raises(ValueError, match=r"p must be a finite number in \(0, 1\]"):
        checks.probability(0, "p", open_low=True)
    assert checks.choice("tile", "normalize", (True, False, "tile")) == "tile"
    assert checks.choice(np.bool_(True), "normalize", (True, False, "tile")) is True
    for bad in (1, 0, "yes", np.array([1, 2])):
        with pytest.raises(ValueError, match="normalize must be one of True, False, 'tile'"):
            checks.choice(bad, "normalize", (True, False, "tile"))
    assert checks.boolean(np.bool_(False), "b") is False
    for bad in (0, 1, "False", None):
        with pytest.raises(ValueError, match="b must be True or False"):
            checks.boolean(bad, "b")


def test_integers_and_axis():
    assert checks.integers((0, np.int32(1)), "channels", lo=0) == [0, 1]
    assert checks.integers(None, "channels", none_ok=True) is None
    with pytest.raises(ValueError, match=r"channels\[1\] must be an integer >= 0, got -1"):
        checks.integers([0, -1], "channels", lo=0)
    with pytest.raises(ValueError, match="channels must be a sequence"):
        checks.integers("01", "channels")
    with pytest.raises(ValueError, match="at least 1"):
        checks.integers([], "channels", min_len=1)
    assert checks.axis(-1, "channel_axis") == -1 and checks.axis(None, "z_axis") is None
    with pytest.raises(ValueError, match=r"channel_axis must be an integer in \[-3, 2\]"):
        checks.axis(3, "channel_axis", ndim=3)


def test_resized_shape_bounds_the_work():
    assert checks.resized_shape((100, 50), (0.5, 0.5), "why") == (50, 25)
    assert checks.resized_shape((3, 3), (1e-9, 1e-9), "why") == (1, 1)
    with pytest.raises(ValueError, match=r"diameter=1e-05 implies resizing the 64x64 image to 108800000x108800000"):
        checks.resized_shape((64, 64), (1.7e6, 1.7e6), "diameter=1e-05")
    with pytest.raises(ValueError, match="not a usable size"):
        checks.resized_shape((64, 64), (math.inf, 1.0), "why")
    with pytest.raises(ValueError, match="GiB of memory"):
        checks.resized_shape((64, 64), (100, 100), "why", bytes_per_pixel=10 ** 9)
    assert checks.memory_bytes() > 0


def test_arg_names_the_flag():
    p = argparse.ArgumentParser(prog="x", exit_on_error=False)
    p.add_argument("--epochs", type=checks.arg(checks.integer, lo=1))
    p.add_argument("--save", type=checks.arg_list(checks.choice, options=["masks", "rois"]))
    assert p.parse_args(["--epochs", "3", "--save", "rois,masks,rois"]).save == ["rois", "masks"]
    with pytest.raises(argparse.ArgumentError, match=r"argument --epochs: must be an integer >= 1, got '0'"):
        p.parse_args(["--epochs", "0"])
    with pytest.raises(argparse.ArgumentError, match=r"argument --save: item 'tif'"):
        p.parse_args(["--save", "tif"])
