"""Shared pieces of the kernel tests: random fields, float64 truth, per-dtype tolerances.

Ground truth is :func:`svf_kernels.ops.reference.field_update_reference` in float64 on float64
copies of the (low-precision) inputs; a kernel must be within a per-dtype tolerance of it AND
no worse than twice the torch reference's own error in the same storage dtype.
"""

from __future__ import annotations

import pytest
import torch

from svf_kernels import SVFArgumentError, select_backend
from svf_kernels.ops.reference import field_table_update_reference, field_update_reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (atol, rtol) of the updated hidden state against float64 truth, per storage dtype.
HIDDEN_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-6, 8e-3),  # half an ulp of bf16 is 2**-9 relative
    torch.float16: (1e-6, 1e-3),  # half an ulp of fp16 is 2**-12 relative
}
SCORE_ATOL, SCORE_RTOL = 1e-4, 1e-4  # scores are fp32 arithmetic in every storage dtype
D, M = 769, 96  # odd sizes: no multiple of any vector width


def make_field(C: int, d: int, m: int, dtype: torch.dtype, gen: torch.Generator, device="cpu"):
    A = (torch.randn(C, m, d, generator=gen) / d**0.5).to(device, dtype)
    c = (0.5 * torch.randn(C, m, generator=gen)).to(device, dtype)
    w2 = torch.randn(C, m, generator=gen).to(device, dtype)
    b2 = torch.randn(C, generator=gen).to(device, dtype)
    return A, c, w2, b2


def to_f64(*ts):
    return tuple(None if t is None else (t if t.dtype == torch.bool else t.double()) for t in ts)


def _per_row(value, n):
    """A float strength / target as the ``[n]`` float64 CPU tensor the reference takes."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        value = torch.full((n,), float(value))
    return value.double().cpu()


def truth(hidden, A, c, w2, b2, alpha, *, tau=1.0, normalize=True, eps=1e-6, rows=None, B=None,
          target=None, band=1.0):
    """float64 reference on float64 copies; returns (new hidden, scores)."""
    h64, A64, c64, w64, b64 = to_f64(*(t.cpu() for t in (hidden, A, c, w2, b2)))
    B64 = None if B is None else B.cpu().double()
    rows = None if rows is None else rows.cpu()
    h64 = h64.clone()
    n = hidden.shape[0]
    s64 = field_update_reference(h64, A64, c64, w64, b64, _per_row(alpha, n), tau, normalize,
                                 eps, rows, B64, _per_row(target, n), band)
    return h64, s64


def make_table(F: int, C: int, d: int, m: int, dtype: torch.dtype, gen: torch.Generator,
               device="cpu"):
    """A field table: F independent random fields stacked (A [F, C, m, d], ...)."""
    fields = [make_field(C, d, m, dtype, gen, device) for _ in range(F)]
    return tuple(torch.stack(parts) for parts in zip(*fields))


def truth_table(hidden, A, c, w2, b2, field_ids, alpha, *, tau=1.0, normalize=True, eps=1e-6,
                B=None, target=None, band=1.0, vectors=None):
    """float64 table reference on float64 copies; returns (new hidden, scores)."""
    h64, A64, c64, w64, b64 = to_f64(*(t.cpu() for t in (hidden, A, c, w2, b2)))
    B64 = None if B is None else B.cpu().double()
    V64 = None if vectors is None else vectors.cpu().double()
    h64 = h64.clone()
    n = hidden.shape[0]
    s64 = field_table_update_reference(h64, A64, c64, w64, b64, field_ids.cpu(),
                                       _per_row(alpha, n), tau, normalize, eps, B64,
                                       _per_row(target, n), band, V64)
    return h64, s64


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits (so that NaN == NaN for bit-identity checks)."""
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def max_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return (x.double() - truth).abs().max().item()


def check_close(name, out, ref_out, truth, atol, rtol, floor):
    """out within (atol, rtol) of truth and no worse than 2x the torch reference's error."""
    out, ref_out = out.cpu(), ref_out.cpu()
    err = (out.double() - truth).abs()
    bound = atol + rtol * truth.abs()
    assert bool((err <= bound).all()), f"{name}: max err {err.max().item():.3g} over tolerance"
    e_k, e_r = max_err(out, truth), max_err(ref_out, truth)
    assert e_k <= 2 * e_r + floor, f"{name}: kernel err {e_k:.3g} > 2 x reference err {e_r:.3g}"


def overflow_alpha_and_scale(dtype: torch.dtype, normalize: bool) -> tuple[float, float]:
    """(alpha, row scale) that make a finite ~N(0, 1) row's update overflow its storage dtype.

    fp16: alpha 1e7 (finite in fp32, not in fp16: the check is on the stored value). fp32/bf16:
    with normalize a unit direction cannot overflow with a finite alpha, so alpha is +Inf;
    without, alpha 3e38 on a row scaled by 1e-3 (v ~ 1/rms is in the hundreds).
    """
    if dtype == torch.float16:
        return 1e7, 1.0
    return (float("inf"), 1.0) if normalize else (3e38, 1e-3)


# (backend, device) of every compiled kernel. The list is fixed whatever this machine has, so a
# case that cannot run here is reported (skipped or failed by require_backend), never left out.
COMPILED_KERNELS = [("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]


def require_backend(backend: str, device: str) -> None:
    """Skip or fail a ``(backend, device)`` case that cannot run here; call with ``SVF_BACKEND``
    set to ``backend``.

    A case on a CUDA device is skipped, with the reason, where there is no CUDA device. Every
    other case that cannot run fails with the backend's reason: the ``cpu`` kernel must be built,
    and a machine with a CUDA device must run the ``cuda`` and ``triton`` kernels.
    """
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip(f"{backend} kernel: no CUDA device (torch.cuda.is_available() is False)")
    try:
        chosen, why = select_backend(torch.device(device)).name, ""
    except SVFArgumentError as exc:
        chosen, why = None, str(exc)
    if why:  # failed outside the except block: the report shows the reason alone
        pytest.fail(f"the {backend} kernel cannot run on this machine's {device} device: {why}",
                    pytrace=False)
    assert chosen == backend, f"SVF_BACKEND={backend!r} chose {chosen!r} on {device}"


def backend_fixture(kernels: list[tuple[str, str]]):
    """A fixture over ``(backend, device)`` pairs that sets ``SVF_BACKEND`` so the public ops
    run that backend, after :func:`require_backend` (skip without the device, fail without the
    backend)."""

    @pytest.fixture(params=kernels, ids=[f"{b}-{d}" for b, d in kernels])
    def kernel(request, monkeypatch):
        backend, device = request.param
        monkeypatch.setenv("SVF_BACKEND", backend)
        require_backend(backend, device)
        return backend, torch.device(device)

    return kernel


def forbid_python_dispatch(monkeypatch) -> None:
    """Make the op's Python backend choice fail the test: calls must reach the C++ kernel."""
    import svf_kernels.ops.op as op_module

    def python_dispatch_ran(device, *args):
        raise AssertionError(f"Python dispatch ran for {device}")

    monkeypatch.setattr(op_module, "select_backend", python_dispatch_ran)
