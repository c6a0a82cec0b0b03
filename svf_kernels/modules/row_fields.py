"""Per-layer fields that move selected rows of a residual stream in place.

A row field maps rows ``[n, d]`` and strengths to an in-place update and per-row scores.
:class:`PackedField` is SVF's folded scorer (it calls the fused op); :class:`StaticVector`
is a static steering vector (CAA and friends), so methods differ only in the field;
:class:`FieldTable` holds several SVF fields and moves each row by its own (batched serving).
Both SVF fields optionally hold a second folded matrix ``B`` for the direction and targets with
a band for closed-loop strength (the op's ``B``, ``target`` and ``band``, DESIGN.md §3).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SVFArgumentError
from ..ops import (
    alpha_tensor,
    check_field_args,
    check_positive,
    check_table_args,
    field_table_update_op,
    field_update_,
    field_update_op,
    residual_table_update_op,
    signed_targets,
)


class RowField(nn.Module):
    """Interface: ``apply_(rows, alpha) -> scores [n, C]``; updates ``rows`` in place.

    Its buffers move with the model (``.to(device)``, ``.cuda()``) and follow ``.double()``, but
    stay float32 under a cast to float16 or bfloat16: the kernels take float32 parameters with
    any hidden dtype and accumulate in float32, so a half-precision copy would only lose digits.
    """

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _apply(self, fn, recurse=True):
        def keep_float32(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if out.dtype in _HALF_DTYPES and t.dtype in (torch.float32, torch.float64):
                return t.to(device=out.device, dtype=torch.float32)
            return out

        self.forget_cached()
        return super()._apply(keep_float32, recurse)

    def forget_cached(self) -> None:
        """Drop tensors derived from the buffers (they are rebuilt on the buffers' device)."""


_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _store_folded(module: nn.Module, A, c, w2, b2, tau: float, normalize: bool, eps: float,
                  B=None, band: float = 1.0) -> None:
    """Folded scorer parameters as fp32 contiguous buffers (``B``: None or a buffer like ``A``),
    plus the op's scalar settings."""
    check_positive("tau", tau)
    check_positive("eps", eps)
    check_positive("band", band)
    if not isinstance(normalize, bool):
        raise SVFArgumentError(f"normalize must be True or False, got {normalize!r}")
    for name, value in (("A", A), ("c", c), ("w2", w2), ("b2", b2), ("B", B)):
        if name == "B" and value is None:
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise SVFArgumentError(f"{name} must be a floating-point tensor, got "
                                   f"{getattr(value, 'dtype', type(value).__name__)}")
    for name, value in (("A", A), ("c", c), ("w2", w2), ("b2", b2), ("B", B)):
        module.register_buffer(name, None if value is None else value.detach().float().contiguous())
    module.tau, module.normalize, module.eps = float(tau), bool(normalize), float(eps)
    module.band = float(band)


class PackedField(RowField):
    """SVF at one layer: folded parameters of C concepts (``A [C, m, d]``, ``c``, ``w2``, ``b2``).

    ``B`` (``A``'s shape, optional): the direction's matrix (None: ``A``, the gradient).
    ``target`` (None or a float; NaN: none) and ``band``: every row's strength is gated by how
    far its soft-minimum score still is from the target (DESIGN.md §2). The target is given on
    the side the strength pushes toward, so one field steers both ways: a row gets the op's
    target ``target`` where its ``alpha >= 0`` and ``-target`` where ``alpha < 0``.
    """

    def __init__(
        self,
        A: torch.Tensor,
        c: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        *,
        tau: float = 1.0,
        normalize: bool = True,
        eps: float = 1e-6,
        B: torch.Tensor | None = None,
        target: float | None = None,
        band: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(A, torch.Tensor) and A.dim() == 2:  # one concept given unstacked
            A, c, w2, b2 = A[None], c[None], w2[None], b2.reshape(1)
            if isinstance(B, torch.Tensor) and B.dim() == 2:
                B = B[None]
        if target is not None and (isinstance(target, bool) or not isinstance(target, (int, float))):
            raise SVFArgumentError(f"target must be None or a float, got {target!r}")
        _store_folded(self, A, c, w2, b2.reshape(-1), tau, normalize, eps, B, band)
        self.target = None if target is None else float(target)
        d = self.A.shape[-1]
        # Parameters are checked once here; per call only the rows need checking.
        check_field_args(torch.zeros(1, d), self.A, self.c, self.w2, self.b2, torch.zeros(1),
                         self.tau, self.eps, None, self.B, None, self.band)
        self._alpha_cache: tuple[float, int, torch.Tensor] | None = None
        self._target_cache: tuple[int, bool, torch.Tensor] | None = None

    def forget_cached(self) -> None:
        self._alpha_cache = None
        self._target_cache = None

    def _alpha(self, alpha: float, n: int) -> torch.Tensor:
        """The ``[n]`` strength tensor of a float ``alpha``, kept while alpha and n stay."""
        cached = self._alpha_cache
        if cached is None or cached[0] != alpha or cached[1] != n:
            device = self._buffers["A"].device
            cached = (alpha, n, torch.full((n,), float(alpha), dtype=torch.float32, device=device))
            self._alpha_cache = cached
        return cached[2]

    def _target(self, n: int, alpha: float) -> torch.Tensor | None:
        """The op's ``[n]`` target tensor for a float ``alpha`` (None without a target): the
        target on ``alpha``'s side, kept while n and that side stay."""
        if self.target is None:
            return None
        away = alpha < 0
        cached = self._target_cache
        if cached is None or cached[0] != n or cached[1] != away:
            device = self._buffers["A"].device
            value = -self.target if away else self.target
            cached = (n, away, torch.full((n,), value, dtype=torch.float32, device=device))
            self._target_cache = cached
        return cached[2]

    @property
    def hidden_size(self) -> int:
        return self.A.shape[-1]

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        if isinstance(alpha, torch.Tensor):
            return field_update_(
                rows, self.A, self.c, self.w2, self.b2, alpha,
                tau=self.tau, normalize=self.normalize, eps=self.eps,
                B=self.B, target=signed_targets(self.target, alpha), band=self.band,
            )
        # The decoding hot path (once per layer per token): the parameters were checked at
        # construction and the kernels check the rows, so no Python checks run unless the op
        # fails; the buffers are read from ``_buffers`` directly (Module.__getattr__ is slow).
        b = self._buffers
        try:
            n = rows.shape[0]
            return field_update_op(rows, b["A"], b["c"], b["w2"], b["b2"], self._alpha(alpha, n),
                                   self.tau, self.normalize, self.eps, None, b["B"],
                                   self._target(n, alpha), self.band)
        except Exception:
            # Name the problem as the public op would (SVFArgumentError); else re-raise as is.
            n = getattr(rows, "shape", (0,))[0]
            check_field_args(rows, b["A"], b["c"], b["w2"], b["b2"], self._alpha(alpha, n),
                             self.tau, self.eps, None, b["B"], self._target(n, alpha),
                             self.band)
            raise


class StaticVector(RowField):
    """A static steering vector (CAA and friends): ``h += alpha * v`` with ``v`` the unit-length
    ``vector`` buffer; the score is ``h · v``."""

    def __init__(self, vector: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or not vector.is_floating_point():
            raise SVFArgumentError("steering vector must be a 1-D floating-point tensor [d], got "
                                   f"{tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__}")
        norm = vector.detach().float().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise SVFArgumentError("steering vector must be finite and non-zero")
        self.register_buffer("vector", (vector.detach().float() / norm).contiguous())

    @property
    def hidden_size(self) -> int:
        return self.vector.shape[-1]

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        dt = torch.float64 if rows.dtype == torch.float64 else torch.float32  # as the op computes
        vector = self.vector.to(device=rows.device, dtype=dt)
        h = rows.to(dt)
        scores = (h @ vector).unsqueeze(-1)
        a = alpha.to(h).reshape(-1, 1) if isinstance(alpha, torch.Tensor) else alpha
        new = h + a * vector
        keep = torch.isfinite(h).all(-1, keepdim=True)
        if isinstance(alpha, torch.Tensor):
            keep = keep & (a != 0)
        rows.copy_(torch.where(keep, new.to(rows.dtype), rows))
        return scores


class FieldTable(RowField):
    """F SVF fields at one layer (``A [F, C, m, d]``, ``c, w2 [F, C, m]``, ``b2 [F, C]``).

    ``apply_(rows, alpha, field_ids)`` moves row ``r`` by field ``field_ids[r]`` (``-1``: not
    at all) in one launch of ``field_table_update_``. Ids are not read on the host here (the
    caller validates them once per batch), so the call traces and never synchronises.
    ``B [F, C, m, d]`` (optional): each field's direction matrix. ``targets [F]`` (optional;
    NaN: that field has no target) and ``band``: each row's strength is gated by its field's
    target, given on the side the row's strength pushes toward (as in :class:`PackedField`);
    the per-row targets are gathered on the device at every call. ``vectors [F, d]``
    (optional): each field's static vector, added to its unit direction (a static entry is a
    field with a zero scorer and a vector).
    """

    def __init__(
        self,
        A: torch.Tensor,
        c: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        *,
        tau: float = 1.0,
        normalize: bool = True,
        eps: float = 1e-6,
        B: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
        band: float = 1.0,
        vectors: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        _store_folded(self, A, c, w2, b2, tau, normalize, eps, B, band)
        if vectors is not None:
            if not isinstance(vectors, torch.Tensor) or not vectors.is_floating_point():
                raise SVFArgumentError(f"vectors must be None or a floating-point [F, d] tensor, got "
                                       f"{getattr(vectors, 'dtype', type(vectors).__name__)}")
            vectors = vectors.detach().float().contiguous()
        self.register_buffer("vectors", vectors)
        check_table_args(torch.zeros(1, self.A.shape[-1]), self.A, self.c, self.w2, self.b2,
                         torch.zeros(1, dtype=torch.long), torch.zeros(1), self.tau, self.eps, self.B, None,
                         self.band, self.vectors)
        F = self.A.shape[0]
        if targets is not None:
            if (not isinstance(targets, torch.Tensor) or not targets.is_floating_point()
                    or targets.shape != (F,)):
                raise SVFArgumentError(
                    f"targets must be None or a [{F}] float tensor (one target per field, NaN: "
                    f"none), got {getattr(targets, 'dtype', type(targets).__name__)} "
                    f"{tuple(getattr(targets, 'shape', ()))}")
            targets = targets.detach().float().contiguous()
        self.register_buffer("targets", targets)

    @property
    def hidden_size(self) -> int:
        return self.A.shape[-1]

    @property
    def num_fields(self) -> int:
        return self.A.shape[0]

    def residual_update_(self, hidden: torch.Tensor, residual: torch.Tensor, alpha: torch.Tensor,
                         field_ids: torch.Tensor, live: torch.Tensor) -> None:
        """The table on a decoder layer's ``(hidden, residual)`` pair, whose sum is the stream:
        when ``live`` (a one-element CPU bool tensor) is set, ``hidden`` becomes the sum moved
        row by row as :meth:`apply_` moves it (the first ``N`` entries of ``alpha`` and
        ``field_ids``, which may be longer) and ``residual`` zero; else both stay as they are.
        One op call (``svf::residual_table_update_``), with no host logic."""
        b = self._buffers
        residual_table_update_op(hidden, residual, b["A"], b["c"], b["w2"], b["b2"], field_ids,
                                 alpha, live, self.tau, self.normalize, self.eps, b["B"],
                                 b["targets"], self.band, b["vectors"])

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor,
               field_ids: torch.Tensor | None = None) -> torch.Tensor:
        if field_ids is None:
            raise SVFArgumentError("a FieldTable needs field_ids: one field index (or -1) per row")
        b = self._buffers
        target = None
        try:
            if not isinstance(alpha, torch.Tensor):
                alpha = torch.full((rows.shape[0],), float(alpha), dtype=torch.float32, device=rows.device)
            if b["targets"] is not None:  # each row's field's target, gathered on the device
                target = signed_targets(
                    b["targets"].index_select(0, field_ids.clamp(0, b["targets"].shape[0] - 1)), alpha)
            return field_table_update_op(rows, b["A"], b["c"], b["w2"], b["b2"], field_ids, alpha,
                                         self.tau, self.normalize, self.eps, b["B"],
                                         target, self.band, b["vectors"])
        except Exception:
            # Name the problem as the public op would (SVFArgumentError); else re-raise as is.
            check_table_args(rows, b["A"], b["c"], b["w2"], b["b2"], field_ids,
                             alpha_tensor(alpha, rows), self.tau, self.eps, b["B"],
                             target, self.band, b["vectors"])
            raise
