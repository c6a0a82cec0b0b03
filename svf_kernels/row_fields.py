"""Per-layer fields that move selected rows of a residual stream in place.

A row field maps rows ``[n, d]`` and strengths to an in-place update and per-row scores.
:class:`PackedField` is SVF's folded scorer (it calls the fused op); :class:`ConstantField`
is a static steering vector (CAA and friends), so methods differ only in the field;
:class:`FieldTable` holds several SVF fields and moves each row by its own (batched serving).
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import SVFArgumentError
from .op import (
    _alpha_tensor,
    _check_positive,
    check_field_args,
    check_table_args,
    field_table_update_op,
    field_update_,
    field_update_op,
)


class RowField(nn.Module):
    """Interface: ``apply_(rows, alpha) -> scores [n, C]``; updates ``rows`` in place."""

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _store_folded(module: nn.Module, A, c, w2, b2, tau: float, normalize: bool, eps: float) -> None:
    """Folded scorer parameters as fp32 contiguous buffers, plus the op's scalar settings."""
    _check_positive("tau", tau)
    _check_positive("eps", eps)
    if not isinstance(normalize, bool):
        raise SVFArgumentError(f"normalize must be True or False, got {normalize!r}")
    for name, value in (("A", A), ("c", c), ("w2", w2), ("b2", b2)):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            raise SVFArgumentError(f"{name} must be a floating-point tensor, got "
                                   f"{getattr(value, 'dtype', type(value).__name__)}")
    for name, value in (("A", A), ("c", c), ("w2", w2), ("b2", b2)):
        module.register_buffer(name, value.detach().float().contiguous())
    module.tau, module.normalize, module.eps = float(tau), bool(normalize), float(eps)


class PackedField(RowField):
    """SVF at one layer: folded parameters of C concepts (``A [C, m, d]``, ``c``, ``w2``, ``b2``)."""

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
    ) -> None:
        super().__init__()
        if isinstance(A, torch.Tensor) and A.dim() == 2:  # one concept given unstacked
            A, c, w2, b2 = A[None], c[None], w2[None], b2.reshape(1)
        _store_folded(self, A, c, w2, b2.reshape(-1), tau, normalize, eps)
        d = self.A.shape[-1]
        # Parameters are checked once here; per call only the rows need checking.
        check_field_args(torch.zeros(1, d), self.A, self.c, self.w2, self.b2, torch.zeros(1),
                         self.tau, "gelu_tanh", self.eps, None)
        self._alpha_cache: tuple[float, int, torch.Tensor] | None = None

    def _apply(self, fn, recurse=True):  # .to() / .cuda() / .half(): the cached alpha moves too
        self._alpha_cache = None
        return super()._apply(fn, recurse)

    def _alpha(self, alpha: float, n: int) -> torch.Tensor:
        """The ``[n]`` strength tensor of a float ``alpha``, kept while alpha and n stay."""
        cached = self._alpha_cache
        if cached is None or cached[0] != alpha or cached[1] != n:
            device = self._buffers["A"].device
            cached = (alpha, n, torch.full((n,), float(alpha), dtype=torch.float32, device=device))
            self._alpha_cache = cached
        return cached[2]

    @property
    def hidden_size(self) -> int:
        return self.A.shape[-1]

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        if isinstance(alpha, torch.Tensor):
            return field_update_(
                rows, self.A, self.c, self.w2, self.b2, alpha,
                tau=self.tau, normalize=self.normalize, eps=self.eps,
            )
        # The decoding hot path (once per layer per token): the parameters were checked at
        # construction and the kernels check the rows, so no Python checks run unless the op
        # fails; the buffers are read from ``_buffers`` directly (Module.__getattr__ is slow).
        b = self._buffers
        try:
            a = self._alpha(alpha, rows.shape[0])
            return field_update_op(rows, b["A"], b["c"], b["w2"], b["b2"], a, self.tau,
                                   self.normalize, "gelu_tanh", self.eps, None, None, None, 1.0)
        except Exception:
            # Name the problem as the public op would (SVFArgumentError); else re-raise as is.
            check_field_args(rows, b["A"], b["c"], b["w2"], b["b2"],
                             self._alpha(alpha, getattr(rows, "shape", (0,))[0]), self.tau,
                             "gelu_tanh", self.eps, None)
            raise


class ConstantField(RowField):
    """A static direction: ``h += alpha * unit(vector)``; the score is ``h · unit(vector)``."""

    def __init__(self, vector: torch.Tensor) -> None:
        super().__init__()
        if not isinstance(vector, torch.Tensor) or vector.dim() != 1 or not vector.is_floating_point():
            raise SVFArgumentError("steering vector must be a 1-D floating-point tensor [d], got "
                                   f"{tuple(vector.shape) if isinstance(vector, torch.Tensor) else type(vector).__name__}")
        norm = vector.detach().float().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise SVFArgumentError("steering vector must be finite and non-zero")
        self.register_buffer("unit", (vector.detach().float() / norm).contiguous())

    @property
    def hidden_size(self) -> int:
        return self.unit.shape[-1]

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
        unit = self.unit.to(rows.device)
        h = rows.float()
        scores = (h @ unit).unsqueeze(-1)
        a = alpha.to(h).reshape(-1, 1) if isinstance(alpha, torch.Tensor) else alpha
        new = h + a * unit
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
    ) -> None:
        super().__init__()
        _store_folded(self, A, c, w2, b2, tau, normalize, eps)
        check_table_args(torch.zeros(1, self.A.shape[-1]), self.A, self.c, self.w2, self.b2,
                         torch.zeros(1, dtype=torch.long), torch.zeros(1), self.tau, "gelu_tanh", self.eps)

    @property
    def hidden_size(self) -> int:
        return self.A.shape[-1]

    @property
    def num_fields(self) -> int:
        return self.A.shape[0]

    def apply_(self, rows: torch.Tensor, alpha: float | torch.Tensor,
               field_ids: torch.Tensor | None = None) -> torch.Tensor:
        if field_ids is None:
            raise SVFArgumentError("a FieldTable needs field_ids: one field index (or -1) per row")
        b = self._buffers
        try:
            if not isinstance(alpha, torch.Tensor):
                alpha = torch.full((rows.shape[0],), float(alpha), dtype=torch.float32, device=rows.device)
            return field_table_update_op(rows, b["A"], b["c"], b["w2"], b["b2"], field_ids, alpha,
                                         self.tau, self.normalize, "gelu_tanh", self.eps, None,
                                         None, 1.0)
        except Exception:
            # Name the problem as the public op would (SVFArgumentError); else re-raise as is.
            check_table_args(rows, b["A"], b["c"], b["w2"], b["b2"], field_ids,
                             _alpha_tensor(alpha, rows), self.tau, "gelu_tanh", self.eps)
            raise
