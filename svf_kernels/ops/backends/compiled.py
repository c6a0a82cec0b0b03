"""What the compiled backends share: one load of ``svf_kernels._C`` and the entry wrapper.

Every compiled kernel takes fp32/bf16/fp16 storage; the dispatch
(:func:`svf_kernels.ops.dispatch.select_backend`) sends float64 to the torch reference, so
``kernel_entry`` only adapts the backend signature to a kernel launcher. It holds the one rule for
calls without ``B`` and ``target``: the launcher gets neither, so such a call costs what the plain
update costs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

try:
    from ... import _C  # type: ignore[attr-defined]

    EXTENSION_ERROR = ""
except Exception as exc:  # noqa: BLE001 - any failure to load the extension means "unavailable"
    _C = None
    EXTENSION_ERROR = f"{type(exc).__name__}: {exc}"

# launch(hidden, A, c, w2, b2, alpha, tau, normalize, eps, rows[, field_ids[, B, target, band
# [, vectors]]]) -> scores; with field_ids ([N] int64, -1 = no steering) A is a table [F, C, m, d]
# (c, w2 [F, C, m], b2 [F, C], vectors [F, d]); B (A's shape) is the direction's matrix, target
# ([N]) and band gate each row's strength. Calls without B, target and vectors pass none of them
# (the launcher's own defaults: none).
Launcher = Callable[..., torch.Tensor]


def kernel_entry(name: str, launcher: Callable[[], Launcher | None],
                 why_unavailable: Callable[[], str]) -> Callable[..., torch.Tensor]:
    """The backend implementation (signature of ``field_update_reference``) around a launcher.

    ``launcher()`` returns the launch function, or None when the backend cannot run (then the
    call raises with ``why_unavailable()``).
    """

    def impl(
        hidden: torch.Tensor,
        A: torch.Tensor,
        c: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        alpha: torch.Tensor,
        tau: float = 1.0,
        normalize: bool = True,
        eps: float = 1e-6,
        rows: torch.Tensor | None = None,
        field_ids: torch.Tensor | None = None,
        B: torch.Tensor | None = None,
        target: torch.Tensor | None = None,
        band: float = 1.0,
        vectors: torch.Tensor | None = None,
    ) -> torch.Tensor:
        launch = launcher()
        if launch is None:
            raise RuntimeError(why_unavailable())
        if vectors is not None:
            return launch(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), float(eps),
                          None, field_ids, B, target, float(band), vectors)
        if B is not None or target is not None:
            return launch(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), float(eps),
                          rows if field_ids is None else None, field_ids, B, target, float(band))
        if field_ids is None:
            return launch(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), float(eps), rows)
        return launch(hidden, A, c, w2, b2, alpha, float(tau), bool(normalize), float(eps), None,
                      field_ids)

    impl.__name__ = impl.__qualname__ = f"field_update_{name}"
    impl.__doc__ = f"The {name} kernel; same contract as svf_kernels.ops.reference.field_update_reference."
    return impl
