"""What is particular to the ``cpu`` backend (``csrc/cpu/``, compiled into ``svf_kernels._C``).

The correctness suite every backend runs is ``test_kernel_backends.py``; here: the extension
is built and is the default, ``SVF_BACKEND`` switches, float64 handling, torch.compile, and the
threaded split of a single long row.

Ground truth is :func:`svf_kernels.ops.reference.field_update_reference` evaluated in float64 on
float64 copies of the (low-precision) inputs. The kernel must be within a per-dtype tolerance
of it AND no worse than twice the torch reference's own error in the same storage dtype.
The extension is built by ``pip install --no-build-isolation -e .``; if it is missing these
tests fail (they do not skip).
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import (
    HIDDEN_TOL,
    SCORE_ATOL,
    SCORE_RTOL,
    M,
    bits,
    check_close,
    forbid_python_dispatch,
    make_field,
    truth,
)

from svf_kernels import available_backends, field_update_, select_backend
from svf_kernels.ops.reference import field_update_reference


def _run(backend: str, monkeypatch, hidden, *args, **kwargs) -> torch.Tensor:
    monkeypatch.setenv("SVF_BACKEND", backend)
    try:
        return field_update_(hidden, *args, **kwargs)
    finally:
        monkeypatch.delenv("SVF_BACKEND")


def test_extension_is_built_and_cpu_is_default():
    from svf_kernels import _C  # fails (not skips) when the extension was not built

    assert hasattr(_C, "field_update_cpu") and isinstance(_C.has_cuda(), bool)
    assert "cpu" in available_backends("cpu")
    assert select_backend(torch.device("cpu")).name == "cpu"


def test_svf_backend_torch_forces_reference(monkeypatch):
    monkeypatch.setenv("SVF_BACKEND", "torch")
    assert select_backend(torch.device("cpu")).name == "torch"
    gen = torch.Generator().manual_seed(1)
    A, c, w2, b2 = make_field(2, 33, 8, torch.float32, gen)
    h = torch.randn(4, 33, generator=gen)
    h_ref = h.clone()
    s = field_update_(h, A, c, w2, b2, 0.3)
    s_ref = field_update_reference(h_ref, A, c, w2, b2, torch.full((4,), 0.3))
    assert torch.equal(h, h_ref) and torch.equal(s, s_ref)


def test_float64_goes_to_reference():
    gen = torch.Generator().manual_seed(5)
    A, c, w2, b2 = make_field(2, 40, 8, torch.float64, gen)
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


@pytest.mark.parametrize("options", [False, True], ids=["plain", "B-target"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_uses_cpu_backend(compiler, options):
    """Traced (fake impl), functionalised (the in-place update) and compiled without breaks;
    with B and a per-row target tensor too (the gate is computed in the kernel)."""
    assert select_backend(torch.device("cpu")).name == "cpu"
    gen = torch.Generator().manual_seed(9)
    A, c, w2, b2 = make_field(3, 65, 16, torch.float32, gen)
    kw = {}
    if options:
        kw = {"B": torch.randn(A.shape, generator=gen) / 65**0.5,
              "target": torch.tensor([float("nan"), -1e30, 1e30, 0.0, 0.5]), "band": 0.5}

    def step(h):
        s = field_update_(h, A, c, w2, b2, 0.3, tau=0.5, **kw)
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
    A, c, w2, b2 = make_field(3, d, M, torch.float32, gen)
    hidden = torch.randn(1, d, generator=gen).to(dtype)
    truth_h, truth_s = truth(hidden, A, c, w2, b2, 0.8, tau=0.5)
    ref_h = hidden.clone()
    ref_s = _run("torch", monkeypatch, ref_h, A, c, w2, b2, 0.8, tau=0.5)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = field_update_(hidden, A, c, w2, b2, 0.8, tau=0.5)
    finally:
        torch.set_num_threads(prev)
    atol, rtol = HIDDEN_TOL[dtype]
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, 1e-6)
    check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)


@pytest.mark.parametrize("offset", [-6.0, -4.0, -0.5, 0.0, 1e-4, 0.5, 4.0, 12.0, 60.0])
def test_activation_across_its_range(monkeypatch, offset):
    """Units driven into both tails of the GELU (``z`` from about -6 to 60; at -6 the
    derivative is about 1e-11, where fp32's ``1 - tanh^2`` is 0): the kernel's vectorised
    activation and derivative stay within the tolerances of the float64 truth and no worse than
    twice the torch reference's error, scores included; a NaN unit bias makes the scores NaN
    and moves nothing. (Further left every unit's derivative underflows fp32 and no fp32
    computation can follow the float64 direction.)"""
    gen = torch.Generator().manual_seed(22)
    d = 97
    A, c, w2, b2 = make_field(2, d, 24, torch.float32, gen)
    c = c + offset
    hidden = torch.randn(9, d, generator=gen)
    truth_h, truth_s = truth(hidden, A, c, w2, b2, 0.6)
    ref_h = hidden.clone()
    ref_s = _run("torch", monkeypatch, ref_h, A, c, w2, b2, 0.6)
    s = field_update_(hidden, A, c, w2, b2, 0.6)
    atol, rtol = HIDDEN_TOL[torch.float32]
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, 1e-6)
    check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
    bad = c.clone()
    bad[0, 3] = float("nan")
    before = hidden.clone()
    s = field_update_(hidden, A, bad, w2, b2, 0.6)
    assert torch.isnan(s).all() and torch.equal(bits(hidden), bits(before))


def _op_args(gen, n=3, d=40, dtype=torch.float32):
    A, c, w2, b2 = make_field(2, d, 8, torch.float32, gen)
    h = torch.randn(n, d, generator=gen).to(dtype)
    return h, (A, c, w2, b2, torch.full((n,), 0.4), 1.0, True, 1e-6, None, None, None, 1.0)


def test_op_cpu_calls_go_straight_to_cpp(monkeypatch):
    """The extension registers the CPU key (csrc/registration.cpp): no Python dispatch runs."""
    import svf_kernels.ops.op as op_module

    assert torch._C._dispatch_has_kernel_for_dispatch_key("svf::field_update_", "CPU")

    forbid_python_dispatch(monkeypatch)
    gen = torch.Generator().manual_seed(31)
    h, args = _op_args(gen)
    h_kernel = h.clone()
    from svf_kernels import _C

    s_kernel = _C.field_update_cpu(h_kernel, *args[:8], None)
    s = op_module.field_update_op(h, *args)
    assert torch.equal(h, h_kernel) and torch.equal(s, s_kernel)
    # What the C++ kernel does not serve comes back to the Python dispatch:
    for env, hidden in (("torch", h), ("", h.double())):
        monkeypatch.setenv("SVF_BACKEND", env)
        with pytest.raises(AssertionError, match="Python dispatch ran for cpu"):
            op_module.field_update_op(hidden, *args)


@pytest.mark.parametrize("spelling", ["CPU", " cpu "])
def test_op_backend_spellings_reach_the_same_kernel(monkeypatch, spelling):
    """SVF_BACKEND spellings other than exactly 'cpu' take the Python path to the same kernel."""
    from svf_kernels.ops.op import field_update_op

    gen = torch.Generator().manual_seed(32)
    h, args = _op_args(gen, dtype=torch.bfloat16)
    h2 = h.clone()
    s = field_update_op(h, *args)
    monkeypatch.setenv("SVF_BACKEND", spelling)
    s2 = field_update_op(h2, *args)
    assert torch.equal(bits(h), bits(h2)) and torch.equal(s, s2)


def test_op_unavailable_backend_fails_loudly_through_cpp(monkeypatch):
    from svf_kernels import SVFArgumentError
    from svf_kernels.ops.op import field_update_op

    gen = torch.Generator().manual_seed(33)
    h, args = _op_args(gen)
    before = h.clone()
    monkeypatch.setenv("SVF_BACKEND", "cuda")
    with pytest.raises(SVFArgumentError, match="SVF_BACKEND='cuda'"):
        field_update_op(h, *args)
    monkeypatch.setenv("SVF_BACKEND", "nonsense")
    with pytest.raises(SVFArgumentError, match="not a backend"):
        field_update_op(h, *args)
    assert torch.equal(h, before)
