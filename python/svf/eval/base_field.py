"""The evaluation's base field: how the field every SVF variant is measured against trains."""

from __future__ import annotations

from ..training import TrainConfig


def eval_train_config(**overrides) -> TrainConfig:
    """The evaluation's training settings: :class:`TrainConfig`'s, except that its base field
    trains at each pair text's last token, so that ``svf`` keeps one meaning across reports and
    ``svf-inner`` (inner positions) is measured against it, whatever the library's default."""
    return TrainConfig(**{"positions": "last", **overrides})
