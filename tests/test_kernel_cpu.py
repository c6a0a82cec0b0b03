"""What is particular to the ``cpu`` backend (``csrc/cpu/``, compiled into ``svf_kernels._C``).

The correctness suite every backend runs is ``test_kernel_backends.py``; here: the extension
is built and is the default, ``SVF_BACKEND`` switches, float64 handling, torch.compile, and the
threaded split of a single long row.

Ground truth is :func:`svf_kernels.reference.field_update_reference` evaluated in float64 on
float64 copies of the (low-precision) inputs. The kernel must be within a per-dtype tolerance
of it AND no worse than twice the torch reference's own error in the same storage dtype.
The extension is built by ``pip install --no-build-isolation -e .``; if it is missing these
tests fail (they do not skip).
"""

from __future__ import annotations

import pytest
import torch

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


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_uses_cpu_backend(compiler):
    """Traced (fake impl), functionalised (the in-place update) and compiled without breaks."""
    assert select_backend(torch.device("cpu")).name == "cpu"
    gen = torch.Generator().manual_seed(9)
    A, c, w2, b2 = _field(3, 65, 16, torch.float32, gen)

    def step(h):
        s = field_update_(h, A, c, w2, b2, 0.3, tau=0.5)
        return h * 2, s

    h1 = torch.randn(5, 65, generator=gen)
    h2 = h1.clone()
    torch._dynamo.reset()
    out_c, s_c = torch.compile(step, fullgraph=True, backend=compiler)(h1)
    out_e, s_e = step(h2)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    assert torch.equal(s_c, s_e)
    assert torch.equal(h1, h2)  # the in-place update reached the caller's tensor


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
