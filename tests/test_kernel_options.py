"""The optional arguments of both ops on every backend: ``B`` (a second folded matrix for the
direction) and ``target`` / ``band`` (closed-loop strength), DESIGN.md §2-§3.

Runs the ``torch`` reference (for the contract's exact parts) and every compiled kernel: ``cpu``
(the extension must be built), ``cuda`` and ``triton`` (skipped without a CUDA device, failed on
a machine with one that cannot run them; ``kernel_checks.require_backend``).
Ground truth is :mod:`svf_kernels.ops.reference` in float64 on float64 copies; a kernel must be within
the per-dtype tolerance of it AND no worse than twice the torch reference's own error in the same
storage dtype (``kernel_checks.check_close``). Sizes are odd (d = 769, m = 37) and ``hidden`` is a
strided view of a bigger tensor, updated in place.
"""

from __future__ import annotations

import math

import pytest
import torch
from kernel_checks import (
    COMPILED_KERNELS,
    DTYPES,
    HIDDEN_TOL,
    SCORE_ATOL,
    SCORE_RTOL,
    D,
    backend_fixture,
    bits,
    check_close,
    make_field,
    make_table,
    truth,
    truth_table,
)

from svf_kernels import (
    SVFArgumentError,
    field_table_update_,
    field_update_,
)
from svf_kernels.ops.reference import (
    field_table_update_reference,
    field_update_reference,
    soft_min_score,
)

M = 37  # hidden units: odd, no multiple of a vector width
KERNELS = COMPILED_KERNELS  # without a CUDA device the cuda and triton cases skip
kernel = backend_fixture(KERNELS)  # (backend, device), SVF_BACKEND set for the test
# The torch reference too, for the contract's exact parts (gates of 0 and 1, NaN targets).
any_kernel = backend_fixture([("torch", "cpu")] + KERNELS)


def _second_matrix(A: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random B of A's shape, scale, dtype and device (independent of A)."""
    return (torch.randn(A.shape, generator=gen) / A.shape[-1] ** 0.5).to(A.device, A.dtype)


def _strided_rows(N: int, dtype, dev, gen) -> tuple[torch.Tensor, torch.Tensor]:
    """(base [N, 3, D], hidden = base[:, 1]): rows 3*D apart, not contiguous."""
    base = (2.0 * torch.randn(N, 3, D, generator=gen)).to(dev, dtype)
    hidden = base[:, 1]
    assert hidden.stride(0) == 3 * D
    return base, hidden


def _tol(dtype):
    atol, rtol = HIDDEN_TOL[dtype]
    return atol, rtol, (1e-6 if dtype == torch.float32 else 0.0)


# ------------------------------------------------------------------------------------------- B


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", ["fp32", "hidden"])
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("N", [1, 5, 33])
def test_B_matches_float64_reference(kernel, dtype, params, C, N):
    _, dev = kernel
    gen = torch.Generator().manual_seed(3000 + 100 * N + 10 * C + DTYPES.index(dtype))
    pdt = torch.float32 if params == "fp32" else dtype
    A, c, w2, b2 = make_field(C, D, M, pdt, gen, dev)
    B = _second_matrix(A, gen)
    base, hidden = _strided_rows(N, dtype, dev, gen)
    alpha = (0.25 + torch.rand(N, generator=gen)).to(dev)
    alpha[0] = -alpha[0]
    before = base.clone()
    truth_h, truth_s = truth(hidden, A, c, w2, b2, alpha, tau=0.7, B=B)
    ref_h = hidden.clone()
    ref_s = field_update_reference(ref_h, A, c, w2, b2, alpha, 0.7, B=B)
    without_b = hidden.clone()
    field_update_(without_b, A, c, w2, b2, alpha, tau=0.7)

    s = field_update_(hidden, A, c, w2, b2, alpha, tau=0.7, B=B)

    assert s.dtype == torch.float32 and s.shape == (N, C)
    assert torch.equal(base[:, [0, 2]], before[:, [0, 2]]), "other positions were touched"
    atol, rtol, floor = _tol(dtype)
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, floor)
    check_close("scores", s, ref_s, truth_s, SCORE_ATOL, SCORE_RTOL, 2e-5)
    assert (hidden != without_b).any(-1).all(), "B made no difference"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("N", [5, 33])
def test_table_B_matches_float64_reference(kernel, dtype, C, N):
    _, dev = kernel
    gen = torch.Generator().manual_seed(4000 + 100 * N + 10 * C + DTYPES.index(dtype))
    F = 3
    A, c, w2, b2 = make_table(F, C, D, M, torch.float32, gen, dev)
    B = _second_matrix(A, gen)
    ids = torch.randint(0, F, (N,), generator=gen)
    ids[1], ids[2 % N] = -1, F - 1
    if N > 3:
        ids[3] = F  # out of range: no steering
    ids = ids.to(dev)
    base, hidden = _strided_rows(N, dtype, dev, gen)
    alpha = (0.25 + torch.rand(N, generator=gen)).to(dev)
    before = hidden.clone()
    before_base = base.clone()
    truth_h, truth_s = truth_table(hidden, A, c, w2, b2, ids, alpha, tau=0.7, B=B)
    ref_h = hidden.clone()
    ref_s = field_table_update_reference(ref_h, A, c, w2, b2, ids, alpha, 0.7, B=B)

    s = field_table_update_(hidden, A, c, w2, b2, ids, alpha, tau=0.7, check_ids=False, B=B)

    assert torch.equal(base[:, [0, 2]], before_base[:, [0, 2]]), "other positions were touched"
    steered = ((ids >= 0) & (ids < F)).cpu()
    assert torch.equal(bits(hidden.cpu()[~steered]), bits(before.cpu()[~steered]))
    assert torch.isnan(s.cpu()[~steered]).all()
    atol, rtol, floor = _tol(dtype)
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, floor)
    check_close("scores", s.cpu()[steered], ref_s.cpu()[steered], truth_s[steered], SCORE_ATOL,
                SCORE_RTOL, 2e-5)
    # each steered row is what the one-field op with its field's A and B makes of it
    for f in range(F):
        mine = ids == f
        if not mine.any():
            continue
        one = before.clone()
        field_update_(one, A[f], c[f], w2[f], b2[f], alpha, tau=0.7, B=B[f])
        torch.testing.assert_close(hidden[mine], one[mine], atol=atol, rtol=rtol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_B_equal_to_A_is_bit_identical_to_no_B(any_kernel, dtype):
    """B = A (the same tensor) runs the arithmetic of B = None: bit for bit, both ops."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(50 + DTYPES.index(dtype))
    A, c, w2, b2 = make_field(3, D, M, torch.float32, gen, dev)
    hidden = torch.randn(6, D, generator=gen).to(dev, dtype)
    h1, h2 = hidden.clone(), hidden.clone()
    s1 = field_update_(h1, A, c, w2, b2, 0.6, tau=0.5)
    s2 = field_update_(h2, A, c, w2, b2, 0.6, tau=0.5, B=A)
    assert torch.equal(bits(h1), bits(h2)) and torch.equal(s1, s2)
    At, ct, w2t, b2t = make_table(2, 3, D, M, torch.float32, gen, dev)
    ids = torch.tensor([1, 0, -1, 1, 0, 1], device=dev)
    h1, h2 = hidden.clone(), hidden.clone()
    s1 = field_table_update_(h1, At, ct, w2t, b2t, ids, 0.6, check_ids=False)
    s2 = field_table_update_(h2, At, ct, w2t, b2t, ids, 0.6, check_ids=False, B=At)
    assert torch.equal(bits(h1), bits(h2)) and torch.equal(bits(s1), bits(s2))


# -------------------------------------------------------------------------------------- target


def _targets_at(s_mix: torch.Tensor, offsets: list[float], alpha: torch.Tensor, band: float):
    """Per-row targets ``s_mix + sign(alpha) * offset * band`` (NaN offset: no target): the
    expected gate is clamp(offset, 0, 1)."""
    off = torch.tensor(offsets, dtype=torch.float64)
    return s_mix.double().cpu() + torch.sign(alpha.double().cpu()) * off * band


def _expected_gate(offsets: list[float]) -> torch.Tensor:
    off = torch.tensor(offsets, dtype=torch.float64)
    return torch.where(off.isnan(), torch.ones_like(off), off.clamp(0.0, 1.0))


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("band", [0.5, 2.0])
def test_target_gate_moves_rows_by_alpha_times_gate(any_kernel, C, band):
    """normalize=True, fp32: each row moves exactly |alpha| * gate; rows whose soft-minimum
    score reached the target (in the direction of alpha) and alpha-0 rows are bit-identical with
    their real scores; a NaN target or a gate of 1 gives the untargeted row bit for bit."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(60 + C + int(10 * band))
    A, c, w2, b2 = make_field(C, D, M, torch.float32, gen, dev)
    B = _second_matrix(A, gen)
    alpha = torch.tensor([0.8, 0.8, 0.8, 0.8, -0.6, -0.6, 0.8, 0.0, 1.3], device=dev)
    # offsets (x band, in the direction of alpha): NaN no target; > 1 gate 1; < 0 target reached
    offsets = [math.nan, 0.3, 3.0, -0.2, 0.5, -0.1, 0.0, 1.0, 0.9]
    N = len(offsets)
    hidden = torch.randn(N, D, generator=gen).to(dev)
    h0 = hidden.clone()
    s0 = field_update_(h0, A, c, w2, b2, 0.0, tau=0.7, B=B)  # this backend's real scores
    assert torch.equal(h0, hidden)
    s_mix = soft_min_score(s0.double(), 0.7)
    target = _targets_at(s_mix, offsets, alpha, band)
    if C == 1:  # s_mix is exactly s_1: a target equal to the score itself gives a gate of 0
        target[6] = s0[6, 0].double()
    else:  # the kernel's s_mix may differ from this one in the last bit: a target just below it
        target[6] = s_mix[6] - 1e-3
    target[7] = math.inf  # alpha 0: no strength whatever the target (0 * inf is no NaN here)
    target = target.to(dev, torch.float32)
    plain = hidden.clone()
    s_plain = field_update_(plain, A, c, w2, b2, alpha, tau=0.7, B=B)

    s = field_update_(hidden, A, c, w2, b2, alpha, tau=0.7, B=B, target=target, band=band)

    assert torch.equal(s, s0), "scores are the scores before the update, whatever the gate"
    assert torch.equal(s_plain, s0)
    frozen = [3, 5, 6, 7]
    assert torch.equal(bits(hidden[frozen]), bits(h0[frozen])), "reached / alpha 0: must not move"
    full = [0, 2]
    assert torch.equal(bits(hidden[full]), bits(plain[full])), "gate 1 must equal no target"
    step = (hidden.double() - h0.double()).norm(dim=-1).cpu()
    want = alpha.double().abs().cpu() * _expected_gate(offsets)
    torch.testing.assert_close(step, want, atol=2e-5, rtol=1e-4)
    # and the direction is the one of the untargeted update, scaled by the gate
    unit = (plain.double() - h0.double()) / alpha.double().abs().clamp_min(1e-30).unsqueeze(1)
    moved = (hidden.double() - h0.double()) / want.clamp_min(1e-30).to(dev).unsqueeze(1)
    torch.testing.assert_close(moved[[1, 4, 8]], unit[[1, 4, 8]], atol=1e-4, rtol=1e-3)
    truth_h, _ = truth(h0, A, c, w2, b2, alpha, tau=0.7, B=B, target=target, band=band)
    torch.testing.assert_close(hidden.double().cpu(), truth_h, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", ["one", "table"])
def test_B_and_target_match_float64_reference(kernel, dtype, op):
    """B and per-row targets together (partial gates, reached targets, NaN targets, both signs
    of alpha), every storage dtype, both ops: within tolerance of float64 truth."""
    _, dev = kernel
    gen = torch.Generator().manual_seed(70 + DTYPES.index(dtype) + (10 if op == "table" else 0))
    C, N, F, band = 3, 12, 2, 1.5
    if op == "one":
        A, c, w2, b2 = make_field(C, D, M, torch.float32, gen, dev)
        ids = None
    else:
        A, c, w2, b2 = make_table(F, C, D, M, torch.float32, gen, dev)
        ids = torch.tensor([0, 1, 1, 0, -1, 1, 0, 1, 0, 1, 0, 1], device=dev)
    B = _second_matrix(A, gen)
    base, hidden = _strided_rows(N, dtype, dev, gen)
    alpha = (0.4 + torch.rand(N, generator=gen)).to(dev)
    alpha[1::3] *= -1
    offsets = [0.3, 0.6, -0.3, math.nan, 2.0, 0.45, -1.0, 0.8, 0.2, math.nan, 0.7, 5.0]

    def run(h, a, **kw):
        if ids is None:
            return field_update_(h, A, c, w2, b2, a, tau=0.7, B=B, **kw)
        return field_table_update_(h, A, c, w2, b2, ids, a, tau=0.7, check_ids=False, B=B, **kw)

    def exact(h, a, **kw):
        if ids is None:
            return truth(h, A, c, w2, b2, a, tau=0.7, B=B, **kw)
        return truth_table(h, A, c, w2, b2, ids, a, tau=0.7, B=B, **kw)

    def ref(h, a, **kw):
        if ids is None:
            return field_update_reference(h, A, c, w2, b2, a, 0.7, B=B, **kw)
        return field_table_update_reference(h, A, c, w2, b2, ids, a, 0.7, B=B, **kw)

    _, s64 = exact(hidden, torch.zeros(N))
    target = _targets_at(soft_min_score(s64, 0.7), offsets, alpha, band).to(dev)
    before = base.clone()
    truth_h, truth_s = exact(hidden, alpha, target=target, band=band)
    ref_h = hidden.clone()
    ref_s = ref(ref_h, alpha, target=target, band=band)

    s = run(hidden, alpha, target=target, band=band)

    assert torch.equal(base[:, [0, 2]], before[:, [0, 2]])
    atol, rtol, floor = _tol(dtype)
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, floor)
    steered = torch.ones(N, dtype=torch.bool) if ids is None else (ids >= 0).cpu()
    check_close("scores", s.cpu()[steered], ref_s.cpu()[steered], truth_s[steered], SCORE_ATOL,
                SCORE_RTOL, 2e-5)
    reached = torch.tensor([o < 0 for o in offsets]) | ~steered
    assert torch.equal(bits(hidden.cpu()[reached]), bits(before[:, 1].cpu()[reached]))
    assert (hidden.cpu()[~reached] != before[:, 1].cpu()[~reached]).any(-1).all()


def test_softmin_gate_of_several_concepts(any_kernel):
    """C = 3: the gate uses the soft minimum s_mix = smin - tau log(sum exp(-(s - smin) / tau)),
    not the minimum, the mean or the first concept's score."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(81)
    C, tau, band = 3, 5.0, 5.0
    A, c, w2, b2 = make_field(C, D, M, torch.float32, gen, dev)
    hidden = torch.randn(4, D, generator=gen).to(dev)
    h0 = hidden.clone()
    s0 = field_update_(h0, A, c, w2, b2, 0.0, tau=tau)
    s_mix = soft_min_score(s0.double(), tau)
    target = (s_mix + 0.4 * band).to(dev, torch.float32)
    for other in (s0.double().min(-1).values, s0.double().mean(-1), s0.double()[:, 0]):
        gate_other = ((target.double() - other) / band).clamp(0, 1)
        assert ((gate_other - 0.4).abs() > 0.02).all(), "premise: the gates must differ"
    s = field_update_(hidden, A, c, w2, b2, 1.0, tau=tau, target=target, band=band)
    assert torch.equal(s, s0)
    step = (hidden.double() - h0.double()).norm(dim=-1)
    torch.testing.assert_close(step, torch.full_like(step, 0.4), atol=1e-4, rtol=1e-4)


def test_table_padded_concept_weighs_nothing_in_the_gate(any_kernel):
    """A table pads missing concepts with b2 = +inf (score +inf): its weight in the softmin and
    in s_mix is 0, so a row of a padded field is gated exactly as the one-field op with only the
    real concepts gates it; its scores keep the +inf."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(82)
    F, C, band, tau = 2, 3, 1.0, 0.8
    A, c, w2, b2 = make_table(F, C, D, M, torch.float32, gen, dev)
    B = _second_matrix(A, gen)
    for t in (A, B, c, w2):
        t[1, 2] = 0.0  # field 1: two real concepts and one padded
    b2[1, 2] = math.inf
    ids = torch.tensor([1, 1, 1, 0, -1, 1], device=dev)
    N = ids.shape[0]
    hidden = torch.randn(N, D, generator=gen).to(dev)
    real = (A[1, :2], c[1, :2], w2[1, :2], b2[1, :2])
    h0 = hidden.clone()
    s_real = field_update_(h0, *real, 0.0, tau=tau, B=B[1, :2])  # the two real concepts
    offsets = [0.25, -0.5, math.nan, 0.6, 0.5, 0.75]
    alpha = torch.full((N,), 0.9, device=dev)
    target = _targets_at(soft_min_score(s_real.double(), tau), offsets, alpha, band)
    target[3] = math.nan  # field 0: no target
    target = target.to(dev, torch.float32)
    h_table = hidden.clone()
    s_table = field_table_update_(h_table, A, c, w2, b2, ids, alpha, tau=tau, check_ids=False,
                                  B=B, target=target, band=band)
    h_one = hidden.clone()
    field_update_(h_one, *real, alpha, tau=tau, B=B[1, :2], target=target, band=band)
    mine = (ids == 1).cpu()
    s_table = s_table.cpu()
    assert torch.isposinf(s_table[mine, 2]).all() and torch.isfinite(s_table[mine, :2]).all()
    torch.testing.assert_close(s_table[mine, :2], s_real.cpu()[mine], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h_table[ids == 1], h_one[ids == 1], atol=1e-5, rtol=1e-5)
    assert torch.equal(bits(h_table[1]), bits(hidden[1])), "target reached: must not move"
    step = (h_table.double() - hidden.double()).norm(dim=-1).cpu()
    torch.testing.assert_close(step[[0, 2, 5]], torch.tensor([0.225, 0.9, 0.675],
                                                            dtype=torch.float64), atol=2e-5,
                               rtol=1e-4)
    assert torch.equal(bits(h_table[4]), bits(hidden[4])) and torch.isnan(s_table[4]).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nan_and_infinite_targets(any_kernel, dtype):
    """A NaN target (tensor or float) and a target of +inf in the direction of alpha are no
    target at all: bit-identical to the untargeted call; a target of -inf in that direction
    leaves every row bit-identical with real scores. Both ops."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(83 + DTYPES.index(dtype))
    A, c, w2, b2 = make_field(2, D, M, torch.float32, gen, dev)
    At, ct, w2t, b2t = make_table(2, 2, D, M, torch.float32, gen, dev)
    ids = torch.tensor([0, 1, -1, 1, 0], device=dev)
    hidden = torch.randn(5, D, generator=gen).to(dev, dtype)
    alpha = torch.tensor([0.7, -0.7, 0.7, 0.5, -0.5], device=dev)
    sgn = torch.sign(alpha)

    def both(target):
        h1, h2 = hidden.clone(), hidden.clone()
        s1 = field_update_(h1, A, c, w2, b2, alpha, target=target, band=0.3)
        s2 = field_table_update_(h2, At, ct, w2t, b2t, ids, alpha, check_ids=False,
                                 target=target, band=0.3)
        return (h1, s1), (h2, s2)

    plain = both(None)
    for target in (math.nan, torch.full((5,), math.nan, device=dev), sgn * math.inf):
        for (h, s), (hp, sp) in zip(both(target), plain):
            assert torch.equal(bits(h), bits(hp)) and torch.equal(bits(s), bits(sp))
    for (h, s), (_, sp) in zip(both(-sgn * math.inf), plain):
        assert torch.equal(bits(h), bits(hidden)) and torch.equal(bits(s), bits(sp))


def test_target_dtypes(any_kernel):
    """target as float32, float64 or the hidden dtype (bf16) gives the same gates when its
    values are representable in all three."""
    _, dev = any_kernel
    gen = torch.Generator().manual_seed(84)
    A, c, w2, b2 = make_field(1, D, M, torch.float32, gen, dev)
    hidden = torch.randn(4, D, generator=gen).to(dev, torch.bfloat16)
    s0 = field_update_(hidden.clone(), A, c, w2, b2, 0.0)
    target = (s0[:, 0] + torch.tensor([0.5, -0.5, 0.25, 2.0], device=dev)).to(torch.bfloat16)
    out = []
    for dt in (torch.float32, torch.float64, torch.bfloat16):
        h = hidden.clone()
        s = field_update_(h, A, c, w2, b2, 1.0, target=target.to(dt))
        out.append((h, s))
    for h, s in out[1:]:
        assert torch.equal(bits(h), bits(out[0][0])) and torch.equal(s, out[0][1])


# ------------------------------------------------------------------------------------- errors


def _args(n=4, d=33, C=2, m=8):
    gen = torch.Generator().manual_seed(90)
    A, c, w2, b2 = make_field(C, d, m, torch.float32, gen)
    return torch.randn(n, d, generator=gen), A, c, w2, b2


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"B": torch.zeros(2, 8, 32)}, r"B must have the shape of A \(2, 8, 33\)"),
        ({"B": torch.zeros(1, 8, 33)}, r"B must have the shape of A"),
        ({"B": torch.zeros(2, 8, 33, dtype=torch.float16)}, r"B dtype must be float32"),
        ({"B": torch.zeros(2, 8, 33, dtype=torch.int32)}, r"B dtype"),
        ({"B": torch.zeros(2, 8, 33, device="meta")}, r"B is on meta but hidden is on cpu"),
        ({"B": [[0.0]]}, r"B must be a tensor or None"),
        ({"target": torch.zeros(3)}, r"target must be a float or a \[4\] tensor"),
        ({"target": torch.zeros(4, 1)}, r"target must be a float or a \[4\] tensor"),
        ({"target": torch.zeros(4, dtype=torch.int64)}, r"target dtype must be float32, float64"),
        ({"target": torch.zeros(4, dtype=torch.float16)}, r"target dtype"),
        ({"target": torch.zeros(4, device="meta")}, r"target is on meta but hidden is on cpu"),
        ({"target": True}, r"target must be None, a float or an \[N\] tensor"),
        ({"target": "high"}, r"target must be None, a float or an \[N\] tensor"),
        ({"band": 0.0}, r"band must be finite and > 0"),
        ({"band": -1.0, "target": 1.0}, r"band must be finite and > 0"),
        ({"band": math.inf, "target": 1.0}, r"band must be finite and > 0"),
        ({"band": math.nan, "target": 1.0}, r"band must be finite and > 0"),
        ({"band": "wide", "target": 1.0}, r"band must be a number"),
    ],
)
def test_bad_B_target_band_name_the_problem(kw, needle):
    hidden, A, c, w2, b2 = _args()
    before = hidden.clone()
    with pytest.raises(SVFArgumentError, match=needle):
        field_update_(hidden, A, c, w2, b2, 0.5, **kw)
    assert torch.equal(hidden, before)


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"B": torch.zeros(2, 8, 33)}, r"B must have the shape of A \(3, 2, 8, 33\)"),
        ({"B": torch.zeros(3, 2, 8, 33, dtype=torch.float16)}, r"B dtype"),
        ({"B": torch.zeros(3, 2, 33, 8).transpose(2, 3)}, r"B of a field table must be contiguous"),
        ({"target": torch.zeros(5)}, r"target must be a float or a \[4\] tensor"),
        ({"target": torch.zeros(4, dtype=torch.int32)}, r"target dtype"),
        ({"band": 0.0}, r"band must be finite and > 0"),
    ],
)
def test_table_bad_B_target_band_name_the_problem(kw, needle):
    gen = torch.Generator().manual_seed(91)
    A, c, w2, b2 = make_table(3, 2, 33, 8, torch.float32, gen)
    hidden = torch.randn(4, 33, generator=gen)
    before = hidden.clone()
    with pytest.raises(SVFArgumentError, match=needle):
        field_table_update_(hidden, A, c, w2, b2, torch.tensor([0, 2, -1, 1]), 0.5, **kw)
    assert torch.equal(hidden, before)


def test_direct_cpp_call_checks_B_and_target():
    from svf_kernels import _C

    hidden, A, c, w2, b2 = _args()
    alpha = torch.full((4,), 0.5)
    with pytest.raises(RuntimeError, match="B must have the shape of A"):
        _C.field_update_cpu(hidden, A, c, w2, b2, alpha, 1.0, True, 1e-6, B=A[:, :, :-1])
    with pytest.raises(RuntimeError, match="target must be a \\[N\\] tensor"):
        _C.field_update_cpu(hidden, A, c, w2, b2, alpha, 1.0, True, 1e-6, target=torch.zeros(3))
    with pytest.raises(RuntimeError, match="band must be finite and > 0"):
        _C.field_update_cpu(hidden, A, c, w2, b2, alpha, 1.0, True, 1e-6, target=torch.zeros(4),
                            band=0.0)
