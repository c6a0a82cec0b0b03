"""The ``cpu`` backend (``csrc/cpu/``, compiled into ``svf_kernels._C``) against the reference.

Ground truth is :func:`svf_kernels.reference.field_update_reference` evaluated in float64 on
float64 copies of the (low-precision) inputs. The kernel must be within a per-dtype tolerance
of it AND no worse than twice the torch reference's own error in the same storage dtype.
The extension is built by ``pip install --no-build-isolation -e .``; if it is missing these
tests fail (they do not skip).
"""

from __future__ import annotations

import time

import pytest
import torch

import svf_kernels
from svf_kernels import available_backends, field_update_, select_backend
from svf_kernels.reference import field_update_reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# (atol, rtol) of the updated hidden state against float64 truth, per storage dtype.
HIDDEN_TOL = {
    torch.float32: (1e-5, 1e-5),
    torch.bfloat16: (1e-6, 8e-3),  # half an ulp of bf16 is 2**-9 relative
    torch.float16: (1e-6, 1e-3),  # half an ulp of fp16 is 2**-12 relative
}
SCORE_ATOL, SCORE_RTOL = 1e-4, 1e-4  # scores are fp32 arithmetic in every storage dtype
D, M = 769, 96  # odd sizes: no multiple of any vector width


def _field(C: int, d: int, m: int, dtype: torch.dtype, gen: torch.Generator):
    A = (torch.randn(C, m, d, generator=gen) / d**0.5).to(dtype)
    c = (0.5 * torch.randn(C, m, generator=gen)).to(dtype)
    w2 = torch.randn(C, m, generator=gen).to(dtype)
    b2 = torch.randn(C, generator=gen).to(dtype)
    return A, c, w2, b2


def _f64(*ts):
    return tuple(None if t is None else (t if t.dtype == torch.bool else t.double()) for t in ts)


def _run(backend: str, monkeypatch, hidden, *args, **kwargs) -> torch.Tensor:
    monkeypatch.setenv("SVF_BACKEND", backend)
    try:
        return field_update_(hidden, *args, **kwargs)
    finally:
        monkeypatch.delenv("SVF_BACKEND")


def _truth(hidden, A, c, w2, b2, alpha, *, tau=1.0, normalize=True, eps=1e-6, rows=None):
    """float64 reference on float64 copies; returns (new hidden, scores)."""
    h64, A64, c64, w64, b64 = _f64(hidden, A, c, w2, b2)
    h64 = h64.clone()
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full((hidden.shape[0],), float(alpha))
    s64 = field_update_reference(h64, A64, c64, w64, b64, alpha.double(), tau, normalize,
                                 "gelu_tanh", eps, rows)
    return h64, s64


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits (so that NaN == NaN for bit-identity checks)."""
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def _max_err(x: torch.Tensor, truth: torch.Tensor) -> float:
    return (x.double() - truth).abs().max().item()


def _check_close(name, out, ref_out, truth, atol, rtol, floor):
    """out within (atol, rtol) of truth and no worse than 2x the torch reference's error."""
    err = (out.double() - truth).abs()
    bound = atol + rtol * truth.abs()
    assert bool((err <= bound).all()), f"{name}: max err {err.max().item():.3g} over tolerance"
    e_k, e_r = _max_err(out, truth), _max_err(ref_out, truth)
    assert e_k <= 2 * e_r + floor, f"{name}: kernel err {e_k:.3g} > 2 x reference err {e_r:.3g}"


def test_extension_is_built_and_cpu_is_default():
    from svf_kernels import _C  # fails (not skips) when the extension was not built

    assert hasattr(_C, "field_update_cpu") and isinstance(_C.has_cuda(), bool)
    assert "cpu" in available_backends("cpu")
    assert select_backend(torch.device("cpu")).name == "cpu"


def test_svf_backend_torch_forces_reference(monkeypatch):
    monkeypatch.setenv("SVF_BACKEND", "torch")
    assert select_backend(torch.device("cpu")).name == "torch"
    gen = torch.Generator().manual_seed(1)
    A, c, w2, b2 = _field(2, 33, 8, torch.float32, gen)
    h = torch.randn(4, 33, generator=gen)
    h_ref = h.clone()
    s = field_update_(h, A, c, w2, b2, 0.3)
    s_ref = field_update_reference(h_ref, A, c, w2, b2, torch.full((4,), 0.3))
    assert torch.equal(h, h_ref) and torch.equal(s, s_ref)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", ["fp32", "hidden"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("N", [1, 7, 128])
def test_matches_float64_reference(monkeypatch, dtype, params, C, N):
    assert select_backend(torch.device("cpu")).name == "cpu"
    gen = torch.Generator().manual_seed(1000 * N + 10 * C + DTYPES.index(dtype))
    A, c, w2, b2 = _field(C, D, M, torch.float32 if params == "fp32" else dtype, gen)
    # the last position of a [B, T, d] tensor: a non-contiguous row view, updated in place
    base = (2.0 * torch.randn(N, 3, D, generator=gen)).to(dtype)
    alpha = 0.25 + torch.rand(N, generator=gen)  # per-row strengths
    before = base.clone()
    hidden = base[:, -1]
    assert hidden.stride(0) == 3 * D
    truth_h, truth_s = _truth(hidden, A, c, w2, b2, alpha, tau=0.7)

    ref_h = hidden.clone()
    ref_s = _run("torch", monkeypatch, ref_h, A, c, w2, b2, alpha, tau=0.7)
    s = field_update_(hidden, A, c, w2, b2, alpha, tau=0.7)
    assert s.dtype == torch.float32 and s.shape == (N, C)

    assert torch.equal(base[:, :-1], before[:, :-1]), "other positions were touched"
    atol, rtol = HIDDEN_TOL[dtype]
    floor = 1e-6 if dtype == torch.float32 else 0.0
    _check_close("hidden", base[:, -1], ref_h, truth_h, atol, rtol, floor)
    _check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
    assert not torch.equal(base[:, -1], before[:, -1]), "nothing was updated"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
def test_normalize_and_tau(monkeypatch, dtype, normalize, tau):
    gen = torch.Generator().manual_seed(7 + int(normalize) + int(100 * tau))
    A, c, w2, b2 = _field(3, D, M, torch.float32, gen)
    hidden = torch.randn(9, D, generator=gen).to(dtype)
    before = hidden.clone()
    alpha = 0.5 if normalize else 2.0
    truth_h, truth_s = _truth(hidden, A, c, w2, b2, alpha, tau=tau, normalize=normalize)
    ref_h = hidden.clone()
    ref_s = _run("torch", monkeypatch, ref_h, A, c, w2, b2, alpha, tau=tau, normalize=normalize)
    s = field_update_(hidden, A, c, w2, b2, alpha, tau=tau, normalize=normalize)
    atol, rtol = HIDDEN_TOL[dtype]
    floor = 1e-6 if dtype == torch.float32 else 0.0
    _check_close("hidden", hidden, ref_h, truth_h, atol, rtol, floor)
    _check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
    if normalize and dtype == torch.float32:  # unit direction: each step has length alpha
        step = (hidden.double() - before.double()).norm(dim=-1)
        torch.testing.assert_close(step, torch.full_like(step, alpha), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_mask_and_zero_alpha_leave_rows_bit_identical(monkeypatch, dtype):
    gen = torch.Generator().manual_seed(3)
    N = 16
    A, c, w2, b2 = _field(3, D, M, dtype, gen)
    hidden = torch.randn(N, D, generator=gen).to(dtype)
    before = hidden.clone()
    rows = torch.rand(N, generator=gen) > 0.4
    rows[0], rows[1] = True, False
    alpha = torch.rand(N, generator=gen) + 0.5
    alpha[0] = 0.0  # masked in, but zero strength
    alpha[5] = 0.0
    truth_h, truth_s = _truth(hidden, A, c, w2, b2, alpha, rows=rows)
    ref_h = hidden.clone()
    ref_s = _run("torch", monkeypatch, ref_h, A, c, w2, b2, alpha, rows=rows)
    s = field_update_(hidden, A, c, w2, b2, alpha, rows=rows)
    frozen = ~rows | (alpha == 0)
    moved = ~frozen
    assert frozen.any() and moved.any()
    assert torch.equal(hidden[frozen], before[frozen])
    assert not torch.equal(hidden[moved], before[moved])
    atol, rtol = HIDDEN_TOL[dtype]
    _check_close("hidden", hidden, ref_h, truth_h, atol, rtol, 1e-6)
    # scores are computed for every row, frozen or not
    _check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", [5, 64])
def test_non_finite_rows_left_unchanged(dtype, N):
    gen = torch.Generator().manual_seed(11 + N)
    A, c, w2, b2 = _field(2, D, M, torch.float32, gen)
    clean = torch.randn(N, D, generator=gen).to(dtype)
    alpha = torch.full((N,), 0.5)
    alpha[3] = float("inf")  # finite input, non-finite new row
    dirty = clean.clone()
    dirty[1, 17] = float("nan")
    dirty[2, D - 1] = float("inf")
    before = dirty.clone()
    out_clean = clean.clone()
    field_update_(out_clean, A, c, w2, b2, alpha)
    s = field_update_(dirty, A, c, w2, b2, alpha)
    bad = torch.zeros(N, dtype=torch.bool)
    bad[1:4] = True
    assert torch.equal(_bits(dirty[bad]), _bits(before[bad]))  # bit-identical, NaNs too
    assert torch.equal(out_clean[3], clean[3])
    assert torch.equal(dirty[~bad], out_clean[~bad])  # other rows unaffected
    assert torch.isfinite(s[~bad]).all()


def test_float64_goes_to_reference():
    gen = torch.Generator().manual_seed(5)
    A, c, w2, b2 = _field(2, 40, 8, torch.float64, gen)
    h = torch.randn(3, 40, generator=gen, dtype=torch.float64)
    h_ref = h.clone()
    s = field_update_(h, A, c, w2, b2, 0.4)
    s_ref = field_update_reference(h_ref, A, c, w2, b2, torch.full((3,), 0.4, dtype=torch.float64))
    assert torch.equal(h, h_ref) and torch.equal(s, s_ref)


def test_direct_call_rejects_float64():
    from svf_kernels import _C

    h = torch.randn(2, 8, dtype=torch.float64)
    A, c, w2, b2 = torch.randn(1, 4, 8), torch.randn(1, 4), torch.randn(1, 4), torch.randn(1)
    with pytest.raises(RuntimeError, match="float64 goes to the torch reference"):
        _C.field_update_cpu(h, A, c, w2, b2, torch.ones(2), 1.0, True, 1e-6, None)


def test_torch_compile_fullgraph_uses_cpu_backend():
    assert select_backend(torch.device("cpu")).name == "cpu"
    gen = torch.Generator().manual_seed(9)
    A, c, w2, b2 = _field(3, 65, 16, torch.float32, gen)

    def step(h):
        s = field_update_(h, A, c, w2, b2, 0.3, tau=0.5)
        return h * 2, s

    h1 = torch.randn(5, 65, generator=gen)
    h2 = h1.clone()
    out_c, s_c = torch.compile(step, fullgraph=True, backend="eager")(h1)
    out_e, s_e = step(h2)
    assert torch.equal(out_c, out_e) and torch.equal(s_c, s_e)


def test_decode_latency_print(monkeypatch):
    """Timing print (not an assertion): N=1, d=576, m=64, C=1, cpu vs torch backend."""
    from svf_kernels import _C

    gen = torch.Generator().manual_seed(0)
    A, c, w2, b2 = _field(1, 576, 64, torch.float32, gen)
    h = torch.randn(1, 576, generator=gen)
    alpha = torch.full((1,), 1e-3)

    def per_call_us(fn, iters=300):
        for _ in range(20):
            fn()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters * 1e6

    raw = per_call_us(lambda: _C.field_update_cpu(h, A, c, w2, b2, alpha, 1.0, True, 1e-6, None))
    op_cpu = per_call_us(lambda: field_update_(h, A, c, w2, b2, alpha))
    monkeypatch.setenv("SVF_BACKEND", "torch")
    op_torch = per_call_us(lambda: field_update_(h, A, c, w2, b2, alpha))
    print(f"\nN=1 d=576 m=64 C=1: _C.field_update_cpu {raw:.1f} us, "
          f"field_update_ cpu {op_cpu:.1f} us, torch {op_torch:.1f} us")
    assert svf_kernels.select_backend(torch.device("cpu")).name == "torch"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_large_single_row_split_across_threads(monkeypatch, dtype):
    """N < threads and a large row: the kernel splits the mat-vecs across threads."""
    gen = torch.Generator().manual_seed(21)
    d = 2049
    A, c, w2, b2 = _field(3, d, M, torch.float32, gen)
    hidden = torch.randn(1, d, generator=gen).to(dtype)
    truth_h, truth_s = _truth(hidden, A, c, w2, b2, 0.8, tau=0.5)
    ref_h = hidden.clone()
    ref_s = _run("torch", monkeypatch, ref_h, A, c, w2, b2, 0.8, tau=0.5)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = field_update_(hidden, A, c, w2, b2, 0.8, tau=0.5)
    finally:
        torch.set_num_threads(prev)
    atol, rtol = HIDDEN_TOL[dtype]
    _check_close("hidden", hidden, ref_h, truth_h, atol, rtol, 1e-6)
    _check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
