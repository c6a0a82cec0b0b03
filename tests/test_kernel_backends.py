"""Every compiled backend of ``field_update_`` against the float64 reference (DESIGN.md §3).

Runs every compiled kernel: ``cpu`` (the extension must be built: a missing one fails), ``cuda``
and ``triton`` (skipped without a CUDA device, failed on a machine with one that cannot run them;
``kernel_checks.require_backend``; ``benchmarks/gpu/run.sh`` runs them on a GPU).
Ground truth is :func:`svf_kernels.ops.reference.field_update_reference` evaluated in float64 on
float64 copies of the (low-precision) inputs. The kernel must be within a per-dtype tolerance
of it AND no worse than twice the torch reference's own error in the same storage dtype.
Inputs are made on the CPU from a seeded generator, then moved to the kernel's device.
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
    make_field,
    overflow_alpha_and_scale,
    truth,
)

from svf_kernels import field_update_
from svf_kernels.ops.reference import field_update_reference

# (backend, device): the cpu, cuda and triton kernels; without a CUDA device the last two skip.
KERNELS = COMPILED_KERNELS

kernel = backend_fixture(KERNELS)  # (backend, device), SVF_BACKEND set for the test


def _reference(hidden, *args, **kwargs) -> torch.Tensor:
    """The torch reference in the same storage dtype, whatever SVF_BACKEND says."""
    alpha = args[4]
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.full((hidden.shape[0],), float(alpha), device=hidden.device)
    return field_update_reference(hidden, *args[:4], alpha, kwargs.get("tau", 1.0),
                                  kwargs.get("normalize", True), 1e-6,
                                  kwargs.get("rows"))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", ["fp32", "hidden"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("N", [1, 7, 128])
def test_matches_float64_reference(kernel, dtype, params, C, N):
    _, dev = kernel
    gen = torch.Generator().manual_seed(1000 * N + 10 * C + DTYPES.index(dtype))
    A, c, w2, b2 = make_field(C, D, M, torch.float32 if params == "fp32" else dtype, gen, dev)
    # the last position of a [B, T, d] tensor: a non-contiguous row view, updated in place
    base = (2.0 * torch.randn(N, 3, D, generator=gen)).to(dev, dtype)
    alpha = (0.25 + torch.rand(N, generator=gen)).to(dev)  # per-row strengths
    before = base.clone()
    hidden = base[:, -1]
    assert hidden.stride(0) == 3 * D
    truth_h, truth_s = truth(hidden, A, c, w2, b2, alpha, tau=0.7)

    ref_h = hidden.clone()
    ref_s = _reference(ref_h, A, c, w2, b2, alpha, tau=0.7)
    s = field_update_(hidden, A, c, w2, b2, alpha, tau=0.7)
    assert s.dtype == torch.float32 and s.shape == (N, C)

    assert torch.equal(base[:, :-1], before[:, :-1]), "other positions were touched"
    atol, rtol = HIDDEN_TOL[dtype]
    floor = 1e-6 if dtype == torch.float32 else 0.0
    check_close("hidden", base[:, -1], ref_h, truth_h, atol, rtol, floor)
    check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
    assert not torch.equal(base[:, -1], before[:, -1]), "nothing was updated"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
def test_normalize_and_tau(kernel, dtype, normalize, tau):
    _, dev = kernel
    gen = torch.Generator().manual_seed(7 + int(normalize) + int(100 * tau))
    A, c, w2, b2 = make_field(3, D, M, torch.float32, gen, dev)
    hidden = torch.randn(9, D, generator=gen).to(dev, dtype)
    before = hidden.clone()
    alpha = 0.5 if normalize else 2.0
    truth_h, truth_s = truth(hidden, A, c, w2, b2, alpha, tau=tau, normalize=normalize)
    ref_h = hidden.clone()
    ref_s = _reference(ref_h, A, c, w2, b2, alpha, tau=tau, normalize=normalize)
    s = field_update_(hidden, A, c, w2, b2, alpha, tau=tau, normalize=normalize)
    atol, rtol = HIDDEN_TOL[dtype]
    floor = 1e-6 if dtype == torch.float32 else 0.0
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, floor)
    check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
    if normalize and dtype == torch.float32:  # unit direction: each step has length alpha
        step = (hidden.double() - before.double()).norm(dim=-1)
        torch.testing.assert_close(step, torch.full_like(step, alpha), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rows_mask_and_zero_alpha_leave_rows_bit_identical(kernel, dtype):
    _, dev = kernel
    gen = torch.Generator().manual_seed(3)
    N = 16
    A, c, w2, b2 = make_field(3, D, M, dtype, gen, dev)
    hidden = torch.randn(N, D, generator=gen).to(dev, dtype)
    before = hidden.clone()
    rows = torch.rand(N, generator=gen) > 0.4
    rows[0], rows[1] = True, False
    alpha = torch.rand(N, generator=gen) + 0.5
    alpha[0] = 0.0  # masked in, but zero strength
    alpha[5] = 0.0
    rows, alpha = rows.to(dev), alpha.to(dev)
    truth_h, truth_s = truth(hidden, A, c, w2, b2, alpha, rows=rows)
    ref_h = hidden.clone()
    ref_s = _reference(ref_h, A, c, w2, b2, alpha, rows=rows)
    s = field_update_(hidden, A, c, w2, b2, alpha, rows=rows)
    frozen = ~rows | (alpha == 0)
    moved = ~frozen
    assert frozen.any() and moved.any()
    assert torch.equal(hidden[frozen], before[frozen])
    assert not torch.equal(hidden[moved], before[moved])
    atol, rtol = HIDDEN_TOL[dtype]
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, 1e-6)
    # scores are computed for every row, frozen or not
    check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("N", [5, 64])
def test_non_finite_rows_left_unchanged(kernel, dtype, N):
    _, dev = kernel
    gen = torch.Generator().manual_seed(11 + N)
    A, c, w2, b2 = make_field(2, D, M, torch.float32, gen, dev)
    clean = torch.randn(N, D, generator=gen).to(dev, dtype)
    alpha = torch.full((N,), 0.5, device=dev)
    alpha[3] = float("inf")  # finite input, non-finite new row
    dirty = clean.clone()
    dirty[1, 17] = float("nan")
    dirty[2, D - 1] = float("inf")
    before = dirty.clone()
    out_clean = clean.clone()
    field_update_(out_clean, A, c, w2, b2, alpha)
    s = field_update_(dirty, A, c, w2, b2, alpha)
    bad = torch.zeros(N, dtype=torch.bool, device=dev)
    bad[1:4] = True
    assert torch.equal(bits(dirty[bad]), bits(before[bad]))  # bit-identical, NaNs too
    assert torch.equal(out_clean[3], clean[3])
    assert torch.equal(dirty[~bad], out_clean[~bad])  # other rows unaffected
    assert torch.isfinite(s[~bad]).all()
    assert torch.isnan(s[bad]).all()  # skipped for non-finite values: the scores say so


# The torch reference too: the non-finite contract is part of what it defines.
CONTRACT_KERNELS = [("torch", "cpu")] + KERNELS


any_kernel = backend_fixture(CONTRACT_KERNELS)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_non_finite_contract_scores_nan_exactly_on_rows_skipped_for_non_finite_values(
    any_kernel, dtype, normalize
):
    """NaN / +Inf / -Inf inputs and a finite row whose update overflows, mixed with normal,
    masked and alpha-0 rows: the bad rows are bit-identical with NaN scores; the others are
    bit-identical to a call where the bad rows were clean; nothing non-finite is written."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(77 + DTYPES.index(dtype))
    N = 10
    A, c, w2, b2 = make_field(2, D, M, torch.float32, gen, dev)
    clean = torch.randn(N, D, generator=gen).to(dev, dtype)
    big_alpha, scale = overflow_alpha_and_scale(dtype, normalize)
    dirty = clean.clone()
    dirty[1, 17] = float("nan")
    dirty[3, 5] = float("inf")
    dirty[4, 0] = float("-inf")
    dirty[5] = (clean[5].float() * scale).to(dtype)
    alpha_clean = torch.full((N,), 0.5, device=dev)
    alpha_clean[8] = 0.0
    alpha = alpha_clean.clone()
    alpha[5] = big_alpha  # finite input, update not finite as stored
    alpha[7] = float("inf")  # masked out: skipped by the mask, real scores
    rows = torch.ones(N, dtype=torch.bool, device=dev)
    rows[7] = False
    before = dirty.clone()
    out_clean = clean.clone()
    s_clean = field_update_(out_clean, A, c, w2, b2, alpha_clean, rows=rows, normalize=normalize)
    s = field_update_(dirty, A, c, w2, b2, alpha, rows=rows, normalize=normalize)
    nan_rows = torch.zeros(N, dtype=torch.bool, device=dev)
    nan_rows[[1, 3, 4, 5]] = True
    assert torch.equal(s.isnan().all(1), nan_rows), s.isnan().all(1)
    assert torch.equal(s.isnan().any(1), nan_rows)
    assert torch.isfinite(s[~nan_rows]).all()
    assert torch.equal(bits(dirty[nan_rows]), bits(before[nan_rows]))  # NaN payloads too
    assert torch.equal(bits(dirty[[7, 8]]), bits(before[[7, 8]]))  # masked, alpha 0
    good = ~nan_rows
    assert torch.equal(bits(dirty[good]), bits(out_clean[good]))  # other rows unaffected
    assert torch.equal(s[good], s_clean[good])
    assert torch.isfinite(dirty[torch.isfinite(before).all(1)]).all()
    moved = torch.tensor([0, 2, 6, 9], device=dev)
    assert (dirty[moved] != before[moved]).any(-1).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
def test_zero_and_tiny_gradients_write_no_nan(any_kernel, dtype, normalize):
    """A = 0 (v = 0: direction 0) and A scaled by 1e-15 / 1e-30 (tiny ||v||; at 1e-30
    sum(v*v) underflows fp32 and the norm is measured on v * 2^100), with a NaN row mixed in:
    nothing non-finite written, finite scores on the finite rows, a unit step when
    normalising, NaN scores on the NaN row only."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(88 + DTYPES.index(dtype))
    A, c, w2, b2 = make_field(2, D, M, torch.float32, gen, dev)
    hidden0 = torch.randn(5, D, generator=gen).to(dev, dtype)
    hidden0[0, 0] = -0.0
    hidden0[2, 9] = float("nan")
    fin = torch.tensor([True, True, False, True, True], device=dev)
    for scale in (0.0, 1e-15, 1e-30):
        hidden = hidden0.clone()
        s = field_update_(hidden, A * scale, c, w2, b2, 0.5, normalize=normalize)
        label = f"scale {scale}"
        assert torch.isfinite(hidden[fin]).all(), label
        assert torch.equal(bits(hidden[2]), bits(hidden0[2])), label
        assert torch.isnan(s[2]).all(), label
        assert torch.isfinite(s[fin]).all(), label
        if scale == 0.0:  # v = 0: direction 0, the row is unchanged in value (-0.0 + 0 = +0.0)
            assert torch.equal(hidden[fin], hidden0[fin]), label
        else:  # tiny ||v|| (at 1e-30, sum(v*v) underflows fp32): still a unit step
            if normalize and dtype == torch.float32:
                step = (hidden[fin].double() - hidden0[fin].double()).norm(dim=-1)
                torch.testing.assert_close(step, torch.full_like(step, 0.5), atol=1e-4, rtol=1e-3)
