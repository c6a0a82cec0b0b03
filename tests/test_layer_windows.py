"""Default training and steering layers derived from a model's depth (svf.layer_windows)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from svf.layer_windows import default_layers, default_steer_layers, resolve_layers
from svf_kernels import SVFArgumentError


def test_default_model_depth_gives_the_measured_layers():
    assert default_layers(30) == (tuple(range(12, 22)), (16, 18, 20))


@pytest.mark.parametrize(("depth", "train", "steer"), [
    (18, range(7, 13), (9, 11, 12)),
    (12, range(5, 9), (7, 8)),
    (24, range(10, 18), (13, 15, 16)),
    (32, range(13, 24), (17, 20, 22)),
    (4, [2], (2,)),
    (2, [1], (1,)),
    (1, [0], (0,)),
])
def test_other_depths(depth, train, steer):
    assert default_layers(depth) == (tuple(train), steer)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6, 7, 8, 12, 18, 24, 26, 28, 30, 32, 36, 40, 48, 62, 80, 128])
def test_every_depth_gives_a_usable_window(depth):
    train, steer = default_layers(depth)
    assert train and steer
    assert list(train) == sorted(set(train)) and list(steer) == sorted(set(steer))  # strictly increasing
    assert train == tuple(range(train[0], train[-1] + 1))  # one window
    assert 0 <= train[0] and train[-1] < depth
    assert set(steer) <= set(train)


def _reference(depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The documented fractions, computed with exact fractions and half-up rounding."""
    def up(x: Fraction) -> int:
        return math.floor(x + Fraction(1, 2))

    span = max(1, up(Fraction(depth, 3)))
    start = min(up(Fraction(2 * depth, 5)), depth - span)
    window = list(range(start, start + span))
    steer = sorted({window[min(up(f * span), span - 1)] for f in (Fraction(2, 5), Fraction(3, 5), Fraction(4, 5))})
    return tuple(window), tuple(steer)


@pytest.mark.parametrize("depth", range(1, 130))
def test_matches_the_documented_fractions(depth):
    assert default_layers(depth) == _reference(depth)


def test_rounding_is_half_up_not_bankers():
    from svf.layer_windows import _round_half_up

    assert [_round_half_up(n, 2) for n in (1, 3, 5, 7)] == [1, 2, 3, 4]  # 0.5, 1.5, 2.5, 3.5: up
    assert [round(n / 2) for n in (1, 3, 5, 7)] == [0, 2, 2, 4]  # what Python's round() gives
    assert [_round_half_up(n, 5) for n in (2, 3, 7, 8)] == [0, 1, 1, 2]  # 0.4, 0.6, 1.4, 1.6


def test_steer_layers_of_a_given_window():
    assert default_steer_layers([12, 14, 16, 18]) == (16, 18)  # 2/5, 3/5, 4/5 of 4: 1.6, 2.4, 3.2 -> 2, 2, 3
    assert default_steer_layers([5]) == (5,)
    assert default_steer_layers((9, 3, 7)) == (7, 9)  # sorted first


@pytest.mark.parametrize("bad", [0, -3, 1.5, True, None, "30"])
def test_bad_depth(bad):
    with pytest.raises(SVFArgumentError, match="num_layers"):
        default_layers(bad)


def test_resolve_layers_fills_in_and_checks():
    assert resolve_layers(30) == default_layers(30)
    assert resolve_layers(30, [4, 5, 6, 7, 8]) == ((4, 5, 6, 7, 8), (6, 7, 8))
    assert resolve_layers(30, None, [13, 21]) == (tuple(range(12, 22)), (13, 21))
    assert resolve_layers(18, [1, 2], [2]) == ((1, 2), (2,))
    with pytest.raises(SVFArgumentError, match=r"--layers \[18\] out of range: the model has 18"):
        resolve_layers(18, [17, 18], train_name="--layers")
    with pytest.raises(SVFArgumentError, match=r"steer \[3\] are not among the training layers "
                                                r"\[7, 8, 9, 10, 11, 12\] derived from the model's 18"):
        resolve_layers(18, None, [3, 9], steer_name="steer")
    with pytest.raises(SVFArgumentError, match=r"steer_layers \[3\] are not among the training layers \[1, 2\]"):
        resolve_layers(18, [1, 2], [3])
    with pytest.raises(SVFArgumentError, match="train_layers repeats layer"):
        resolve_layers(18, [1, 1])
    with pytest.raises(SVFArgumentError, match="steer_layers must not be empty"):
        resolve_layers(18, [1, 2], [])
