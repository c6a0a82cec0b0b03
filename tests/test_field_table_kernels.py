"""The field-table op ``svf_kernels.field_table_update_`` on every backend (DESIGN.md §3, last part).

A table holds F fields (``A [F, C, m, d]``, ``c, w2 [F, C, m]``, ``b2 [F, C]``) and row ``r`` is
moved by field ``field_ids[r]`` exactly as the one-field op would move it; an id outside
``[0, F)`` leaves the row bit-identical with NaN scores. Runs the ``torch`` reference and every
compiled kernel: ``cpu`` (the extension must be built), ``cuda`` and ``triton`` (skipped without
a CUDA device, failed on a machine with one that cannot run them;
``kernel_checks.require_backend``). Ground truth is
:func:`svf_kernels.ops.reference.field_table_update_reference` in float64 on float64 copies; a
kernel must be within the per-dtype tolerance of it AND no worse than twice the torch
reference's own error in the same storage dtype (``kernel_checks``).
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import (
    COMPILED_KERNELS,
    DTYPES,
    HIDDEN_TOL,
    SCORE_ATOL,
    SCORE_RTOL,
    D,
    M,
    backend_fixture,
    bits,
    check_close,
    forbid_python_dispatch,
    make_table,
    overflow_alpha_and_scale,
    truth_table,
)

import svf_kernels
from svf_kernels import (
    SVFArgumentError,
    field_table_update_,
    field_table_update_reference,
    field_update_,
)

# (backend, device): the torch reference and the compiled kernels; without a CUDA device the
# cuda and triton cases skip.
KERNELS = [("torch", "cpu"), *COMPILED_KERNELS]
# Backends whose table rows are bit-identical to the one-field op on the same rows: the cpu
# kernel runs the same per-row body with the parameter pointers offset by the row's field, and
# the torch reference evaluates field_direction(hidden, A[f], ...) exactly as the one-field op.
SAME_ARITHMETIC = ("torch", "cpu")


kernel = backend_fixture(KERNELS)  # (backend, device), SVF_BACKEND set for the test


def _ids(N: int, F: int, gen: torch.Generator, dtype=torch.int64) -> torch.Tensor:
    """Valid ids with -1 and out-of-range ids mixed in; row 0 always has a field."""
    ids = torch.randint(0, F, (N,), generator=gen)
    if N > 7:
        ids[torch.rand(N, generator=gen) < 0.25] = -1
    ids[0] = F - 1
    for i, bad in enumerate((-1, F, -100, 0, 2**31 - 1)[: N - 1]):
        ids[i + 1] = bad
    return ids.to(dtype)


def _reference(hidden, A, c, w2, b2, ids, alpha, tau=1.0, normalize=True):
    """The torch reference in the same storage dtype, whatever SVF_BACKEND says."""
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full((hidden.shape[0],), float(alpha), device=hidden.device)
    return field_table_update_reference(hidden, A, c, w2, b2, ids, alpha, tau, normalize,
                                        1e-6)


def _check_against_truth(hidden, s, ref_h, ref_s, truth_h, truth_s, steered, dtype):
    atol, rtol = HIDDEN_TOL[dtype]
    floor = 1e-6 if dtype == torch.float32 else 0.0
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, floor)
    steered = steered.cpu()
    check_close("scores", s.cpu()[steered], ref_s.cpu()[steered], truth_s[steered], SCORE_ATOL,
                SCORE_RTOL, 2e-5)
    assert torch.isnan(s.cpu()[~steered]).all(), "rows without a field must score NaN"


# (F, C, N): every (F, C) pair at N = 7 (int32 ids), the extremes at N = 1 and N = 128.
SHAPES = [(1, 1, 1), (3, 3, 1), (1, 1, 7), (1, 3, 7), (3, 1, 7), (3, 3, 7), (1, 3, 128),
          (3, 3, 128)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", ["fp32", "hidden"])
@pytest.mark.parametrize(("F", "C", "N"), SHAPES, ids=[f"F{f}-C{c}-N{n}" for f, c, n in SHAPES])
def test_table_matches_float64_reference(kernel, dtype, params, F, C, N):
    _, dev = kernel
    gen = torch.Generator().manual_seed(10000 * N + 100 * F + 10 * C + DTYPES.index(dtype))
    A, c, w2, b2 = make_table(F, C, D, M, torch.float32 if params == "fp32" else dtype, gen, dev)
    ids = _ids(N, F, gen, torch.int32 if N == 7 else torch.int64).to(dev)
    # the last position of a [B, T, d] tensor: a non-contiguous row view, updated in place
    base = (2.0 * torch.randn(N, 3, D, generator=gen)).to(dev, dtype)
    alpha = (0.25 + torch.rand(N, generator=gen)).to(dev)
    before = base.clone()
    hidden = base[:, -1]
    assert hidden.stride(0) == 3 * D
    truth_h, truth_s = truth_table(hidden, A, c, w2, b2, ids, alpha, tau=0.7)
    ref_h = hidden.clone()
    ref_s = _reference(ref_h, A, c, w2, b2, ids, alpha, tau=0.7)

    s = field_table_update_(hidden, A, c, w2, b2, ids, alpha, tau=0.7, check_ids=False)

    assert s.dtype == torch.float32 and s.shape == (N, C) and s.device == hidden.device
    assert torch.equal(base[:, :-1], before[:, :-1]), "other positions were touched"
    steered = (ids >= 0) & (ids < F)
    assert torch.equal(bits(hidden[~steered]), bits(before[:, -1][~steered]))
    assert not torch.equal(hidden[steered], before[:, -1][steered]), "nothing was updated"
    _check_against_truth(hidden, s, ref_h, ref_s, truth_h, truth_s, steered, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_steered_rows_equal_the_one_field_op(kernel, dtype):
    """Each steered row is what field_update_ with that row's field alone makes of it."""
    backend, dev = kernel
    gen = torch.Generator().manual_seed(40 + DTYPES.index(dtype))
    F, C, N = 3, 2, 24
    A, c, w2, b2 = make_table(F, C, D, M, torch.float32, gen, dev)
    ids = _ids(N, F, gen).to(dev)
    hidden = torch.randn(N, D, generator=gen).to(dev, dtype)
    alpha = (0.25 + torch.rand(N, generator=gen)).to(dev)
    alpha[5] = 0.0
    table_h = hidden.clone()
    table_s = field_table_update_(table_h, A, c, w2, b2, ids, alpha, tau=0.5, check_ids=False)
    for f in range(F):
        mine = ids == f
        assert mine.any()
        one_h = hidden.clone()  # the one-field op on every row, the same batch shape
        one_s = field_update_(one_h, A[f], c[f], w2[f], b2[f], alpha, tau=0.5)
        if backend in SAME_ARITHMETIC:
            assert torch.equal(bits(table_h[mine]), bits(one_h[mine]))
            assert torch.equal(table_s[mine], one_s[mine])
        else:
            atol, rtol = HIDDEN_TOL[dtype]
            torch.testing.assert_close(table_h[mine], one_h[mine], atol=atol, rtol=rtol)
            torch.testing.assert_close(table_s[mine], one_s[mine], atol=SCORE_ATOL, rtol=SCORE_RTOL)
        if backend == "cpu":  # and row by row: rows are independent in the cpu kernel
            for r in mine.nonzero().flatten()[:2].tolist():
                row = hidden[r : r + 1].clone()
                s_row = field_update_(row, A[f], c[f], w2[f], b2[f], alpha[r : r + 1], tau=0.5)
                assert torch.equal(bits(row[0]), bits(table_h[r]))
                assert torch.equal(s_row[0], table_s[r])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_zero_alpha_non_finite_and_unsteered_rows_bit_identical(kernel, dtype):
    _, dev = kernel
    gen = torch.Generator().manual_seed(50 + DTYPES.index(dtype))
    F, C, N = 3, 2, 12
    A, c, w2, b2 = make_table(F, C, D, M, dtype, gen, dev)
    ids = torch.tensor([0, 1, 2, 0, 1, 2, -1, 3, 1, 2, 0, -1]).to(dev)
    hidden = torch.randn(N, D, generator=gen).to(dev, dtype)
    alpha = torch.full((N,), 0.5)
    alpha[0] = 0.0  # a field, zero strength: unchanged, scores computed
    alpha[3] = float("inf")  # finite input, non-finite new row
    hidden[1, 17] = float("nan")
    hidden[2, D - 1] = float("inf")
    hidden[6, 3] = float("nan")  # no field and not finite
    alpha = alpha.to(dev)
    before = hidden.clone()
    s = field_table_update_(hidden, A, c, w2, b2, ids, alpha, check_ids=False)
    frozen = torch.tensor([1, 1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 1], dtype=torch.bool, device=dev)
    assert torch.equal(bits(hidden[frozen]), bits(before[frozen]))  # NaNs too
    assert (hidden[~frozen] != before[~frozen]).any(-1).all()
    unsteered = (ids < 0) | (ids >= F)
    assert torch.isnan(s[unsteered]).all()
    # rows 1, 2 (non-finite input) and 3 (update not finite) were skipped for non-finite values
    assert torch.isnan(s[[1, 2, 3]]).all()
    assert torch.isfinite(s[[0, 4, 5, 8, 9, 10]]).all()
    # the zero-strength row still scores what the one-field op scores
    one_s = field_update_(before[:1].clone(), A[0], c[0], w2[0], b2[0], 0.0)
    torch.testing.assert_close(s[:1], one_s, atol=SCORE_ATOL, rtol=SCORE_RTOL)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_non_finite_contract_in_one_table_call(kernel, dtype, normalize):
    """NaN / +Inf / -Inf rows, an overflowing update, alpha 0, a zero-gradient field (A = 0),
    a tiny-gradient field (A * 1e-30) and unsteered rows in one call: NaN scores exactly on the
    rows skipped for non-finite values and the unsteered ones; every other row bit-identical to
    a call where the bad rows were clean; nothing non-finite written."""
    _, dev = kernel
    gen = torch.Generator().manual_seed(90 + DTYPES.index(dtype))
    F, C = 3, 2
    A, c, w2, b2 = make_table(F, C, D, M, torch.float32, gen, dev)
    A = A.clone()
    A[1] = 0.0  # zero gradient: v = 0
    A[2] *= 1e-30  # tiny gradient norm: sum(v*v) underflows fp32
    ids = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2, -1, 0, 1, 7], device=dev)
    N = ids.shape[0]
    clean = torch.randn(N, D, generator=gen).to(dev, dtype)
    big_alpha, scale = overflow_alpha_and_scale(dtype, normalize)
    dirty = clean.clone()
    dirty[1, 17] = float("nan")
    dirty[2, 5] = float("inf")
    dirty[3, 0] = float("-inf")
    dirty[4] = (clean[4].float() * scale).to(dtype)
    dirty[8, 3] = float("nan")  # unsteered and not finite
    dirty[10, 1] = float("nan")  # zero-gradient field, not finite
    alpha_clean = torch.full((N,), 0.5, device=dev)
    alpha_clean[5] = 0.0
    alpha = alpha_clean.clone()
    alpha[4] = big_alpha
    before = dirty.clone()
    out_clean = clean.clone()
    s_clean = field_table_update_(out_clean, A, c, w2, b2, ids, alpha_clean, normalize=normalize,
                                  check_ids=False)
    s = field_table_update_(dirty, A, c, w2, b2, ids, alpha, normalize=normalize, check_ids=False)
    nan_rows = torch.zeros(N, dtype=torch.bool, device=dev)
    nan_rows[[1, 2, 3, 4, 8, 10, 11]] = True
    assert torch.equal(s.isnan().all(1), nan_rows), s.isnan().all(1)
    assert torch.equal(s.isnan().any(1), nan_rows)
    assert torch.equal(bits(dirty[nan_rows]), bits(before[nan_rows]))
    good = ~nan_rows
    assert torch.equal(bits(dirty[good]), bits(out_clean[good]))
    assert torch.equal(s[good], s_clean[good])
    assert torch.isfinite(dirty[torch.isfinite(before).all(1)]).all()
    assert torch.equal(bits(dirty[5]), bits(before[5]))  # alpha 0
    assert torch.equal(dirty[6], before[6])  # zero gradient: unchanged in value
    assert (dirty[[0, 9]] != before[[0, 9]]).any(-1).all()
    if normalize and dtype == torch.float32:  # tiny ||v||: still a unit step
        step = (dirty[7].double() - before[7].double()).norm()
        assert abs(step.item() - 0.5) < 1e-3, step


def test_int32_ids_same_as_int64(kernel):
    _, dev = kernel
    gen = torch.Generator().manual_seed(60)
    A, c, w2, b2 = make_table(3, 2, D, M, torch.float32, gen, dev)
    ids = _ids(16, 3, gen).to(dev)
    hidden = torch.randn(16, D, generator=gen).to(dev, torch.bfloat16)
    h64, h32 = hidden.clone(), hidden.clone()
    s64 = field_table_update_(h64, A, c, w2, b2, ids, 0.4, check_ids=False)
    s32 = field_table_update_(h32, A, c, w2, b2, ids.int(), 0.4, check_ids=False)
    assert torch.equal(bits(h64), bits(h32))
    assert torch.equal(bits(s64), bits(s32))


def test_hidden_slice_of_wider_tensor(kernel):
    """hidden[:, :d] of a wider tensor: row stride > d; the columns beyond d stay untouched."""
    _, dev = kernel
    gen = torch.Generator().manual_seed(70)
    F, C, N, dtype = 2, 3, 9, torch.float16
    A, c, w2, b2 = make_table(F, C, D, M, torch.float32, gen, dev)
    ids = _ids(N, F, gen).to(dev)
    wide = torch.randn(N, D + 13, generator=gen).to(dev, dtype)
    before = wide.clone()
    hidden = wide[:, :D]
    assert hidden.stride(0) == D + 13 and not hidden.is_contiguous()
    dense = hidden.contiguous()
    s_dense = field_table_update_(dense, A, c, w2, b2, ids, 0.6, check_ids=False)
    s = field_table_update_(hidden, A, c, w2, b2, ids, 0.6, check_ids=False)
    assert torch.equal(wide[:, D:], before[:, D:])
    assert torch.equal(bits(hidden), bits(dense))
    assert torch.equal(bits(s), bits(s_dense))
    truth_h, truth_s = truth_table(before[:, :D], A, c, w2, b2, ids, 0.6)
    ref_h = before[:, :D].clone()
    ref_s = _reference(ref_h, A, c, w2, b2, ids, 0.6)
    _check_against_truth(hidden, s, ref_h, ref_s, truth_h, truth_s, (ids >= 0) & (ids < F), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_row_results_do_not_depend_on_the_batch(dtype, threads):
    """The cpu kernel takes a field's rows two at a time: every row, alone or in any batch
    (odd counts, fields interleaved, rows without a field), is moved and scored bit for bit
    alike."""
    gen = torch.Generator().manual_seed(77)
    A, c, w2, b2 = make_table(3, 2, D, M, torch.float32, gen)
    ids = torch.tensor([0, 0, 1, 0, -1, 2, 2, 0, 1, 0, 2])
    hidden = torch.randn(len(ids), D, generator=gen).to(dtype)
    alpha = 0.2 + torch.rand(len(ids), generator=gen)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        batch = hidden.clone()
        s_batch = field_table_update_(batch, A, c, w2, b2, ids, alpha)
        for order in (torch.arange(len(ids)).flip(0), torch.randperm(len(ids), generator=gen)):
            shuffled = hidden[order].clone()
            s_shuffled = field_table_update_(shuffled, A, c, w2, b2, ids[order], alpha[order])
            assert torch.equal(bits(shuffled), bits(batch[order]))
            assert torch.equal(bits(s_shuffled), bits(s_batch[order]))
        for r in range(len(ids)):
            row = hidden[r : r + 1].clone()
            s_row = field_table_update_(row, A, c, w2, b2, ids[r : r + 1], alpha[r : r + 1])
            assert torch.equal(bits(row[0]), bits(batch[r])), f"row {r}"
            assert torch.equal(bits(s_row[0]), bits(s_batch[r])), f"row {r}"
    finally:
        torch.set_num_threads(prev)


def test_cpu_large_row_split_across_threads():
    """N < threads and a large row: the cpu kernel splits the mat-vecs of the row's own field."""
    gen = torch.Generator().manual_seed(75)
    d = 2049
    A, c, w2, b2 = make_table(2, 3, d, M, torch.float32, gen)
    hidden = torch.randn(1, d, generator=gen)
    ids = torch.tensor([1])
    one = hidden.clone()
    truth_h, truth_s = truth_table(hidden, A, c, w2, b2, ids, 0.8, tau=0.5)
    prev = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        s = field_table_update_(hidden, A, c, w2, b2, ids, 0.8, tau=0.5)
        s_one = field_update_(one, A[1], c[1], w2[1], b2[1], 0.8, tau=0.5)
    finally:
        torch.set_num_threads(prev)
    assert torch.equal(hidden, one) and torch.equal(s, s_one)
    torch.testing.assert_close(hidden.double(), truth_h, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s.double(), truth_s.double(), atol=SCORE_ATOL, rtol=SCORE_RTOL)


def _small(gen, F=3, C=2, n=5, d=40, m=8, dtype=torch.float32):
    A, c, w2, b2 = make_table(F, C, d, m, torch.float32, gen)
    h = torch.randn(n, d, generator=gen).to(dtype)
    ids = torch.tensor([0, 2, -1, 1, 0][:n])
    return h, A, c, w2, b2, ids


@pytest.mark.parametrize("bad", [-2, 3, 99])
def test_check_ids_rejects_out_of_range_ids(bad):
    gen = torch.Generator().manual_seed(80)
    h, A, c, w2, b2, ids = _small(gen)
    ids[3] = bad
    before = h.clone()
    with pytest.raises(SVFArgumentError, match="field_ids"):
        field_table_update_(h, A, c, w2, b2, ids, 0.3)
    assert torch.equal(h, before)
    field_table_update_(h, A, c, w2, b2, ids, 0.3, check_ids=False)  # fine: treated as -1
    assert torch.equal(h[3], before[3])


def test_argument_errors():
    gen = torch.Generator().manual_seed(81)
    h, A, c, w2, b2, ids = _small(gen)
    cases = (
        ("A", (A[0], c, w2, b2)),  # one field, not a table
        ("c", (A, c[:, :, :-1], w2, b2)),
        ("w2", (A, c, w2[:2], b2)),
        ("b2", (A, c, w2, b2[:, :1])),
    )
    for name, params in cases:
        with pytest.raises(SVFArgumentError, match=rf"\b{name}\b"):
            field_table_update_(h, *params, ids, 0.3)
    for bad_ids in (ids.float(), ids[:-1], ids.reshape(-1, 1), ids.to(torch.int16)):
        with pytest.raises(SVFArgumentError, match="field_ids"):
            field_table_update_(h, A, c, w2, b2, bad_ids, 0.3)
    with pytest.raises(SVFArgumentError, match=r"\bA must"):
        field_table_update_(h, A[..., :-1], c, w2, b2, ids, 0.3)  # d mismatch


def test_direct_cpp_call_checks():
    from svf_kernels import _C

    gen = torch.Generator().manual_seed(82)
    h, A, c, w2, b2, ids = _small(gen)
    alpha = torch.full((h.shape[0],), 0.3)
    with pytest.raises(RuntimeError, match="A must be \\[F, C, m"):
        _C.field_update_cpu(h, A[0], c, w2, b2, alpha, 1.0, True, 1e-6, None, ids)
    with pytest.raises(RuntimeError, match="rows and field_ids are exclusive"):
        _C.field_update_cpu(h, A, c, w2, b2, alpha, 1.0, True, 1e-6,
                            torch.ones(h.shape[0], dtype=torch.bool), ids)
    with pytest.raises(RuntimeError, match="field_ids must be a \\[N\\] int64 or int32"):
        _C.field_update_cpu(h, A, c, w2, b2, alpha, 1.0, True, 1e-6, None, ids.float())
    with pytest.raises(RuntimeError, match="c, w2 must be \\[F, C, m\\]"):
        _C.field_update_cpu(h, A, c[:2], w2, b2, alpha, 1.0, True, 1e-6, None, ids)


@pytest.mark.parametrize("options", ["plain", "B-target", "vectors"])
@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler, options):
    """Traced (fake impl; check_ids skips its host read), functionalised and compiled, no breaks;
    with a B table and per-row targets too, and with static vectors."""
    gen = torch.Generator().manual_seed(90)
    A, c, w2, b2 = make_table(3, 2, 65, 16, torch.float32, gen)
    ids = torch.tensor([2, -1, 0, 1, 2])
    kw = {}
    if options == "B-target":
        kw = {"B": torch.randn(A.shape, generator=gen) / 65**0.5,
              "target": torch.tensor([float("nan"), 0.0, 1e30, -1e30, 0.5]), "band": 0.5}
    elif options == "vectors":
        kw = {"vectors": torch.randn(3, 65, generator=gen)}

    def step(h):
        s = field_table_update_(h, A, c, w2, b2, ids, 0.3, tau=0.5, **kw)
        return h * 2, s

    h1 = torch.randn(5, 65, generator=gen)
    h2 = h1.clone()
    torch._dynamo.reset()
    out_c, s_c = torch.compile(step, fullgraph=True, backend=compiler)(h1)
    out_e, s_e = step(h2)
    torch.testing.assert_close(out_c, out_e, rtol=1e-6, atol=1e-6)
    assert torch.equal(bits(s_c), bits(s_e))
    assert torch.equal(h1, h2)  # the in-place update reached the caller's tensor
    assert torch.isnan(s_c[1]).all() and torch.equal(out_c[1], 2 * h2[1])


def _op_args(gen, dtype=torch.float32):
    h, A, c, w2, b2, ids = _small(gen, dtype=dtype)
    return h, (A, c, w2, b2, ids, torch.full((h.shape[0],), 0.4), 1.0, True, 1e-6, None, None,
               1.0)


def test_op_cpu_calls_go_straight_to_cpp(monkeypatch):
    """The extension registers the table op's CPU key: no Python dispatch runs."""
    import svf_kernels.ops.op as op_module
    from svf_kernels import _C

    assert torch._C._dispatch_has_kernel_for_dispatch_key("svf::field_table_update_", "CPU")

    forbid_python_dispatch(monkeypatch)
    gen = torch.Generator().manual_seed(91)
    h, args = _op_args(gen)
    A, c, w2, b2, ids, alpha, tau, normalize, eps, _, _, _ = args
    h_kernel = h.clone()
    s_kernel = _C.field_update_cpu(h_kernel, A, c, w2, b2, alpha, tau, normalize, eps, None, ids)
    s = op_module.field_table_update_op(h, *args)
    assert torch.equal(h, h_kernel) and torch.equal(bits(s), bits(s_kernel))
    # What the C++ kernel does not serve comes back to the Python dispatch:
    for env, hidden in (("torch", h), ("", h.double())):
        monkeypatch.setenv("SVF_BACKEND", env)
        with pytest.raises(AssertionError, match="Python dispatch ran for cpu"):
            op_module.field_table_update_op(hidden, *args)


def test_svf_backend_torch_forces_reference(monkeypatch):
    monkeypatch.setenv("SVF_BACKEND", "torch")
    gen = torch.Generator().manual_seed(92)
    h, A, c, w2, b2, ids = _small(gen, dtype=torch.bfloat16)
    h_ref = h.clone()
    s = field_table_update_(h, A, c, w2, b2, ids, 0.3)
    s_ref = field_table_update_reference(h_ref, A, c, w2, b2, ids, torch.full((5,), 0.3))
    assert torch.equal(bits(h), bits(h_ref)) and torch.equal(bits(s), bits(s_ref))


def test_float64_goes_to_reference():
    gen = torch.Generator().manual_seed(93)
    h, A, c, w2, b2, ids = _small(gen, dtype=torch.float64)
    A, c, w2, b2 = A.double(), c.double(), w2.double(), b2.double()
    h_ref = h.clone()
    s = svf_kernels.field_table_update_(h, A, c, w2, b2, ids, 0.4)
    s_ref = field_table_update_reference(h_ref, A, c, w2, b2, ids,
                                         torch.full((5,), 0.4, dtype=torch.float64))
    assert torch.equal(h, h_ref) and torch.equal(bits(s), bits(s_ref))
