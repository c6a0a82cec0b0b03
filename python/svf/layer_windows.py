"""Default training and steering layers, derived from a model's depth.

The defaults are fractions of the depth ``L`` (the number of decoder layers), fixed so that the
default model's 30 layers give the layers measured on it: train 12..21, steer 16, 18, 20
(docs/EVALUATION.md). Every rounding is half-up on exact fractions (2.5 -> 3, never banker's
rounding), so the result depends on ``L`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from svf_kernels import SVFArgumentError

from .arguments import check_int
from .hf import layer_list

__all__ = ["STEER_FRACTIONS", "TRAIN_SPAN", "TRAIN_START", "default_layers", "default_steer_layers", "resolve_layers"]

#: The training window starts at ``TRAIN_START`` of the depth: round(2 L / 5) (12 of 30).
TRAIN_START = (2, 5)
#: ... and spans ``TRAIN_SPAN`` of the depth: round(L / 3) layers, at least 1 (10 of 30).
TRAIN_SPAN = (1, 3)
#: Steering layers: these fractions of the way into the training window, each
#: ``window[round(f * len(window))]`` (4, 6, 8 of a 10-layer window: 16, 18, 20 of 12..21).
STEER_FRACTIONS = ((2, 5), (3, 5), (4, 5))


def _round_half_up(num: int, den: int) -> int:
    """``num / den`` (both >= 0, ``den`` > 0) rounded half-up, in exact integer arithmetic."""
    return (2 * num + den) // (2 * den)


def default_steer_layers(train_layers: Sequence[int]) -> tuple[int, ...]:
    """The steering layers of a training window: the layers at :data:`STEER_FRACTIONS` (2/5,
    3/5 and 4/5) of the way into the sorted window, deduplicated, increasing and never past its
    last layer. ``(12, ..., 21)`` gives ``(16, 18, 20)``; a window of one layer gives that layer.
    """
    window = sorted(set(layer_list(train_layers, "train_layers")))
    if not window:
        raise SVFArgumentError("train_layers must not be empty")
    n = len(window)
    picks = {window[min(_round_half_up(a * n, b), n - 1)] for a, b in STEER_FRACTIONS}
    return tuple(sorted(picks))


def default_layers(num_layers: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(train_layers, steer_layers)`` for a model with ``num_layers`` decoder layers.

    Training window: ``span = max(1, round(L / 3))`` consecutive layers starting at
    ``min(round(2 L / 5), L - span)``; steering layers: :func:`default_steer_layers` of the
    window (2/5, 3/5 and 4/5 of the way into it). Rounding is half-up. Both are strictly
    increasing, non-empty, within ``0..L-1``, and every steering layer is a training layer.

    ======  ================  ============
    L       train             steer
    ======  ================  ============
    30      12..21            16, 18, 20
    18      7..12             9, 11, 12
    12      5..8              7, 8
    2       1                 1
    ======  ================  ============
    """
    n = check_int(num_layers, "num_layers", minimum=1)
    span = max(1, _round_half_up(n * TRAIN_SPAN[0], TRAIN_SPAN[1]))
    start = min(_round_half_up(n * TRAIN_START[0], TRAIN_START[1]), n - span)
    train = tuple(range(start, start + span))
    return train, default_steer_layers(train)


def resolve_layers(num_layers: int, train_layers: Sequence[int] | None = None,
                   steer_layers: Sequence[int] | None = None, *, train_name: str = "train_layers",
                   steer_name: str = "steer_layers") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(train_layers, steer_layers)`` for a model of ``num_layers`` decoder layers: the layers
    given, a None filled in (training: :func:`default_layers`; steering:
    :func:`default_steer_layers` of the training window).

    Every layer must exist in the model, none may repeat, and every steering layer must be a
    training layer; else :class:`SVFArgumentError` naming ``train_name`` or ``steer_name``.
    """
    n = check_int(num_layers, "num_layers", minimum=1)
    given = {train_name: train_layers, steer_name: steer_layers}
    for name, layers in given.items():
        if layers is None:
            continue
        layers = layer_list(layers, name)
        if not layers:
            raise SVFArgumentError(f"{name} must not be empty")
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise SVFArgumentError(f"{name} {bad} out of range: the model has {n} decoder layers (0..{n - 1})")
        repeated = sorted({i for i in layers if layers.count(i) > 1})
        if repeated:
            raise SVFArgumentError(f"{name} repeats layer{'s' if len(repeated) > 1 else ''} {repeated}")
    train = tuple(train_layers) if train_layers is not None else default_layers(n)[0]
    if steer_layers is None:
        return train, default_steer_layers(train)
    extra = sorted(set(steer_layers) - set(train))
    if extra:
        origin = (f" derived from the model's {n} decoder layers (give {train_name} too)"
                  if train_layers is None else f" ({train_name})")
        raise SVFArgumentError(f"{steer_name} {extra} are not among the training layers "
                               f"{list(train)}{origin}")
    return train, tuple(steer_layers)
