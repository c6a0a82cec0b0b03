"""``FusedSteeringField``: the drop-in module that wraps one decoder layer.

It runs the wrapped layer, then applies a row field to the layer's output (the residual
stream) at the positions a *step plan* selects. Which positions to steer is the caller's
business (the HF attachment in ``svf.steering`` computes one plan per forward pass); this
module only gathers those rows, runs the field, and handles refresh-every-K reuse.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SVFArgumentError
from .row_fields import RowField


@dataclass
class StepPlan:
    """Which flattened ``[B*T]`` positions of this forward pass to steer, and how.

    ``refresh``: positions whose direction is recomputed (the op runs there).
    ``reuse`` / ``reuse_src``: positions that get a stored displacement instead; ``reuse_src``
    indexes ``cat([last_delta [B, d], fresh_delta [len(refresh), d]])``.
    ``store_rows`` / ``store_src``: after this pass, ``last_delta[store_rows] =
    fresh_delta[store_src]`` (the latest refreshed displacement of each batch row).
    ``last_only``: the plan is exactly "refresh the last position of every row" (decoding,
    and a left-padded prompt pass); the field then runs on the ``[B, d]`` view in place,
    and ``refresh`` holds the batch rows ``0..B-1``.
    ``None`` for the whole plan means every position is refreshed.
    """

    batch: int
    refresh: torch.Tensor
    reuse: torch.Tensor | None = None
    reuse_src: torch.Tensor | None = None
    store_rows: torch.Tensor | None = None
    store_src: torch.Tensor | None = None
    last_only: bool = False


class FusedSteeringField(nn.Module):
    """Wrap ``layer``; after it runs, move its output along ``field`` at the planned positions.

    ``alpha`` is the L2 displacement (float, or a ``[B]`` tensor of per-row strengths).
    ``field_ids``: for a :class:`~svf_kernels.modules.row_fields.FieldTable`, the ``[B]`` field index
    of each batch row (``-1``: unsteered); None for single fields.
    ``planner`` returns the current :class:`StepPlan` (or None: steer every position).
    ``last_only=True`` ignores the planner and steers the last position of every forward pass
    (what left-padded cached decoding steers): no host logic at all, so it traces under
    ``torch.compile(fullgraph=True)``.
    Works whether the layer returns a tensor (transformers 5) or a tuple (transformers 4).
    """

    def __init__(
        self,
        layer: nn.Module,
        field: RowField,
        alpha: float | torch.Tensor,
        planner: Callable[[], StepPlan | None] | None = None,
        *,
        field_ids: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> None:
        super().__init__()
        _check_module_args(layer, field, alpha, planner, field_ids, last_only)
        self.layer = layer
        self.field = field
        self.alpha = alpha
        self.field_ids = field_ids
        self.planner = planner
        self.last_only = last_only
        self.last_scores: torch.Tensor | None = None
        self.last_delta: torch.Tensor | None = None

    def forward(self, *args, **kwargs):
        # ``_modules[...]`` and ``object.__setattr__`` below skip nn.Module's Python-level
        # attribute hooks: this runs once per layer per token, where they cost more than the kernel.
        out = self._modules["layer"](*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        if hidden.requires_grad and torch.is_grad_enabled():
            raise SVFArgumentError("steering updates hidden states in place: run under torch.no_grad()")
        self.steer_(hidden)
        return out

    def reset(self) -> None:
        """Forget stored displacements and scores (a new generation starts)."""
        self.last_scores = None
        self.last_delta = None

    def _row_alpha(self, batch_rows: torch.Tensor) -> float | torch.Tensor:
        if isinstance(self.alpha, torch.Tensor):
            return self.alpha.to(batch_rows.device).float()[batch_rows]
        return self.alpha

    def _run_field(self, rows: torch.Tensor, batch_rows: torch.Tensor | None) -> torch.Tensor:
        """Run the field on ``rows`` (``batch_rows[i]``: the batch row of ``rows[i]``; None:
        ``rows`` are the batch rows themselves, in order)."""
        field = self._modules["field"]
        alpha = self.alpha
        if isinstance(alpha, torch.Tensor):
            alpha = (self._row_alpha(batch_rows) if batch_rows is not None
                     else alpha.to(device=rows.device, dtype=torch.float32))
        if self.field_ids is None:
            return field.apply_(rows, alpha)
        ids = self.field_ids if batch_rows is None else self.field_ids[batch_rows.to(self.field_ids.device)]
        return field.apply_(rows, alpha, ids)

    def _check_batch(self, B: int) -> None:
        for name, t in (("alpha", self.alpha), ("field_ids", self.field_ids)):
            if isinstance(t, torch.Tensor) and t.shape[0] != B:
                raise SVFArgumentError(f"{name} has {t.shape[0]} rows but the batch has {B}")

    def steer_(self, hidden: torch.Tensor) -> None:
        """Apply the field to ``hidden`` ``[B, T, d]`` in place at the planned positions."""
        B, T, d = hidden.shape
        # last_only: traceable, no plan and no host logic at all
        plan = None if self.last_only or self.planner is None else self.planner()
        if self.last_only or (plan is not None and plan.last_only):  # decoding: no gather/scatter
            if self.field_ids is None and not isinstance(self.alpha, torch.Tensor):  # the hot path
                scores = self._modules["field"].apply_(hidden.select(1, -1), self.alpha)
            else:
                self._check_batch(B)
                scores = self._run_field(hidden.select(1, -1), None)
            object.__setattr__(self, "last_scores", scores)
            return
        flat = hidden.view(B * T, d) if hidden.is_contiguous() else None
        work = flat if flat is not None else hidden.reshape(B * T, d)
        if plan is None:
            all_rows = torch.arange(B * T, device=hidden.device) // T
            self.last_scores = self._run_field(work, all_rows)
        else:
            refresh = plan.refresh.to(hidden.device)
            rows = work.index_select(0, refresh)
            before = rows.clone() if plan.reuse is not None or plan.store_rows is not None else None
            self.last_scores = self._run_field(rows, refresh // T)
            work.index_copy_(0, refresh, rows)
            if before is not None:
                self._reuse(work, plan, rows.float() - before.float(), B, d)
        if flat is None:
            hidden.copy_(work.view(B, T, d))

    def _reuse(self, work: torch.Tensor, plan: StepPlan, fresh: torch.Tensor, B: int, d: int) -> None:
        if self.last_delta is None or self.last_delta.shape != (B, d):
            self.last_delta = fresh.new_zeros(B, d)
        if plan.reuse is not None and plan.reuse.numel():
            table = torch.cat([self.last_delta, fresh])
            delta = table.index_select(0, plan.reuse_src.to(work.device))
            reuse = plan.reuse.to(work.device)
            moved = work.index_select(0, reuse).float() + delta
            work.index_copy_(0, reuse, moved.to(work.dtype))
        if plan.store_rows is not None and plan.store_rows.numel():
            self.last_delta[plan.store_rows.to(work.device)] = fresh[plan.store_src.to(work.device)]


def _check_module_args(layer: object, field: object, alpha: object, planner: object,
                       field_ids: object, last_only: object) -> None:
    """Constructor checks of :class:`FusedSteeringField` (once; the forward pass checks rows)."""
    from .row_fields import FieldTable

    if not isinstance(layer, nn.Module):
        raise SVFArgumentError(f"layer must be an nn.Module (a decoder layer), got {type(layer).__name__}")
    if not isinstance(field, RowField):
        raise SVFArgumentError(f"field must be a RowField (PackedField, StaticVector, FieldTable, ...), "
                               f"got {type(field).__name__}")
    check_row_alpha(alpha)
    if planner is not None and not callable(planner):
        raise SVFArgumentError(f"planner must be callable or None, got {type(planner).__name__}")
    if field_ids is not None:
        check_field_ids(field_ids)
    if isinstance(field, FieldTable) != (field_ids is not None):
        raise SVFArgumentError("field_ids must be given exactly when field is a FieldTable")
    if not isinstance(last_only, bool):
        raise SVFArgumentError(f"last_only must be True or False, got {last_only!r}")


def check_row_alpha(alpha: object) -> None:
    """``alpha`` is a finite number or a ``[B]`` floating-point tensor of per-row strengths."""
    if isinstance(alpha, torch.Tensor):
        if alpha.dim() != 1 or not alpha.is_floating_point():
            raise SVFArgumentError(f"alpha must be a float or a [B] float tensor, got {alpha.dtype} "
                                   f"{tuple(alpha.shape)}")
    elif isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise SVFArgumentError(f"alpha must be a finite number or a [B] float tensor, got {alpha!r}")


def check_field_ids(field_ids: object) -> None:
    """``field_ids`` is a ``[B]`` integer tensor (one field-table index per batch row)."""
    if (not isinstance(field_ids, torch.Tensor) or field_ids.dim() != 1
            or field_ids.is_floating_point() or field_ids.dtype == torch.bool):
        raise SVFArgumentError("field_ids must be a [B] integer tensor, got "
                               f"{getattr(field_ids, 'dtype', type(field_ids).__name__)}")
