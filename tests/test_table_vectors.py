"""Static vectors in the field table (DESIGN.md §3): ``field_table_update_(..., vectors=[F, d])``.

A row of field ``f`` moves by ``a * (dir + vectors[f])``: a static entry is a field whose scorer
is zero (``dir = 0``), so its rows move by ``alpha * vectors[f]`` exactly; an entry that combines
a field with a vector moves as the field alone plus ``alpha * vectors[f]``; the gate of a target
and the non-finite rules apply to the whole update. Every backend against the float64 reference
(per-dtype tolerance and no worse than twice the torch reference's own error), and the reference
itself against those two identities computed without it.
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
    make_table,
    truth_table,
)

from svf_kernels import FieldTable, SVFArgumentError, field_table_update_, field_update_
from svf_kernels.ops.reference import field_table_update_reference

kernel = backend_fixture([("torch", "cpu"), *COMPILED_KERNELS])


def _mixed_table(C: int, d: int, m: int, dtype: torch.dtype, gen: torch.Generator, device="cpu"):
    """Four entries: a field with a vector, a static entry (zero scorer), a field without a
    vector (a zero row) and a second static entry."""
    A, c, w2, b2 = (t.clone() for t in make_table(4, C, d, m, dtype, gen, device))
    for f in (1, 3):
        A[f], c[f], w2[f], b2[f] = 0.0, 0.0, 0.0, 0.0
    vectors = (0.3 * torch.randn(4, d, generator=gen)).to(device, dtype)
    vectors[2] = 0.0
    return A, c, w2, b2, vectors


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(("C", "N"), [(1, 1), (2, 9), (3, 128)])
def test_vectors_match_float64_reference(kernel, dtype, normalize, C, N):
    _, dev = kernel
    gen = torch.Generator().manual_seed(7 * N + C + 100 * DTYPES.index(dtype) + 1000 * normalize)
    A, c, w2, b2, vectors = _mixed_table(C, D, M, dtype, gen, dev)
    ids = torch.randint(0, 4, (N,), generator=gen)
    ids[: min(N, 4)] = torch.tensor([1, 0, 3, -1][: min(N, 4)])
    ids = ids.to(dev)
    base = (2.0 * torch.randn(N, 2, D, generator=gen)).to(dev, dtype)
    before = base.clone()
    hidden = base[:, -1]  # a non-contiguous view of the last position
    alpha = (torch.rand(N, generator=gen) - 0.3).to(dev)
    truth_h, truth_s = truth_table(hidden, A, c, w2, b2, ids, alpha, tau=0.7,
                                   normalize=normalize, vectors=vectors)
    ref_h = hidden.clone()
    ref_s = field_table_update_reference(ref_h, A, c, w2, b2, ids, alpha, 0.7, normalize, 1e-6,
                                         vectors=vectors)

    s = field_table_update_(hidden, A, c, w2, b2, ids, alpha, tau=0.7, normalize=normalize,
                            vectors=vectors, check_ids=False)

    assert torch.equal(base[:, 0], before[:, 0]), "another position was touched"
    steered = (ids >= 0).cpu()
    assert torch.equal(bits(hidden[~steered.to(dev)]), bits(before[:, -1][~steered.to(dev)]))
    moved = steered & (alpha.cpu() != 0)
    assert (hidden.cpu()[moved] != before[:, -1].cpu()[moved]).any(-1).all(), "a row did not move"
    atol, rtol = HIDDEN_TOL[dtype]
    check_close("hidden", hidden, ref_h, truth_h, atol, rtol, 1e-6 if dtype == torch.float32 else 0.0)
    check_close("scores", s.cpu()[steered], ref_s.cpu()[steered], truth_s[steered], SCORE_ATOL,
                SCORE_RTOL, 2e-5)
    assert torch.isnan(s.cpu()[~steered]).all()
    static = steered & ((ids.cpu() == 1) | (ids.cpu() == 3))
    assert (s.cpu()[static][:, 0] == 0).all(), "a static entry scores b2 = 0"


def test_reference_identities_in_float64():
    """Static rows: h + alpha * v exactly; a field with a vector: the one-field op's row plus
    alpha * v; a field without one: the one-field op's row; computed without the table."""
    gen = torch.Generator().manual_seed(3)
    C, d, m = 2, 37, 8
    A, c, w2, b2, vectors = (t.double() for t in _mixed_table(C, d, m, torch.float64, gen))
    ids = torch.tensor([0, 1, 2, 3, -1, 0, 1])
    h = torch.randn(len(ids), d, generator=gen, dtype=torch.float64)
    alpha = torch.linspace(-0.9, 1.3, len(ids), dtype=torch.float64)
    out = h.clone()
    field_table_update_reference(out, A, c, w2, b2, ids, alpha, vectors=vectors)
    for r, f in enumerate(ids.tolist()):
        if f < 0:
            assert torch.equal(out[r], h[r])
            continue
        expect = h[r : r + 1].clone()
        field_update_(expect, A[f], c[f], w2[f], b2[f], alpha[r : r + 1])
        expect = expect[0] + alpha[r] * vectors[f]
        torch.testing.assert_close(out[r], expect, atol=1e-12, rtol=1e-12)
        if f in (1, 3):
            torch.testing.assert_close(out[r], h[r] + alpha[r] * vectors[f], atol=1e-12, rtol=1e-12)


def test_gate_and_non_finite_rules_cover_the_vector(kernel):
    """A row whose target is reached does not move, vector included; a vector that makes the
    new row overflow leaves the row bit-identical with NaN scores."""
    _, dev = kernel
    gen = torch.Generator().manual_seed(11)
    A, c, w2, b2, vectors = _mixed_table(2, D, M, torch.float32, gen, dev)
    vectors[3] = 3e38  # the new row of a static entry overflows fp16 (and fp32 at alpha 10)
    hidden = torch.randn(4, D, generator=gen).to(dev, torch.float16)
    ids = torch.tensor([0, 0, 3, 1], device=dev)
    target = torch.tensor([-1e30, float("nan"), float("nan"), float("nan")], device=dev)
    before = hidden.clone()
    s = field_table_update_(hidden, A, c, w2, b2, ids, 10.0, vectors=vectors, target=target)
    assert torch.equal(bits(hidden[0]), bits(before[0])) and torch.isfinite(s[0]).all()
    assert (hidden[[1, 3]] != before[[1, 3]]).any(-1).all()
    assert torch.equal(bits(hidden[2]), bits(before[2])) and torch.isnan(s[2]).all()


def test_table_rows_without_vectors_unchanged_by_a_zero_table(kernel):
    """vectors all zero: bit-identical to the call without vectors (``dir + 0`` is ``dir``)."""
    _, dev = kernel
    gen = torch.Generator().manual_seed(12)
    A, c, w2, b2 = make_table(3, 2, D, M, torch.float32, gen, dev)
    ids = torch.tensor([0, 2, -1, 1, 0], device=dev)
    hidden = torch.randn(5, D, generator=gen).to(dev, torch.bfloat16)
    h0, h1 = hidden.clone(), hidden.clone()
    s0 = field_table_update_(h0, A, c, w2, b2, ids, 0.7)
    s1 = field_table_update_(h1, A, c, w2, b2, ids, 0.7, vectors=torch.zeros(3, D, device=dev))
    assert torch.equal(bits(h0), bits(h1)) and torch.equal(bits(s0), bits(s1))


def test_vector_argument_errors():
    gen = torch.Generator().manual_seed(13)
    A, c, w2, b2 = make_table(3, 1, 40, 8, torch.float32, gen)
    h = torch.randn(4, 40, generator=gen)
    ids = torch.tensor([0, 1, 2, -1])
    before = h.clone()
    for bad, what in ((torch.zeros(2, 40), r"\(3, 40\)"), (torch.zeros(3, 39), r"\(3, 40\)"),
                      (torch.zeros(3, 40, dtype=torch.int32), "dtype"),
                      (torch.zeros(3, 40, dtype=torch.float16), "dtype"),
                      (torch.zeros(6, 40)[::2], "contiguous"), ([0.0] * 40, "tensor")):
        with pytest.raises(SVFArgumentError, match=rf"vectors.*{what}|{what}.*vectors"):
            field_table_update_(h, A, c, w2, b2, ids, 0.3, vectors=bad)
    assert torch.equal(h, before)
    with pytest.raises(SVFArgumentError, match="vectors"):
        FieldTable(A, c, w2, b2, vectors=torch.zeros(2, 40))


def test_direct_cpp_call_checks_vectors():
    from svf_kernels import _C

    gen = torch.Generator().manual_seed(14)
    A, c, w2, b2 = make_table(3, 1, 40, 8, torch.float32, gen)
    h = torch.randn(4, 40, generator=gen)
    alpha = torch.full((4,), 0.3)
    with pytest.raises(RuntimeError, match=r"vectors must be \[F, d\]"):
        _C.field_update_cpu(h, A[0], c[0], w2[0], b2[0], alpha, 1.0, True, 1e-6, None, None, None,
                            None, 1.0, torch.zeros(1, 40))
    with pytest.raises(RuntimeError, match=r"vectors must be \[F, d\]"):
        _C.field_update_cpu(h, A, c, w2, b2, alpha, 1.0, True, 1e-6, None,
                            torch.tensor([0, 1, 2, -1]), None, None, 1.0, torch.zeros(2, 40))


def test_field_table_module_with_vectors():
    gen = torch.Generator().manual_seed(15)
    A, c, w2, b2, vectors = _mixed_table(2, 40, 8, torch.float32, gen)
    table = FieldTable(A, c, w2, b2, vectors=vectors.double())
    assert table.vectors.dtype == torch.float32
    ids = torch.tensor([0, 1, 2, 3, -1])
    h = torch.randn(5, 40, generator=gen)
    expect = h.clone()
    s_ref = field_table_update_(expect, A, c, w2, b2, ids, 0.5, vectors=vectors)
    s = table.apply_(h, 0.5, ids)
    assert torch.equal(h, expect) and torch.equal(bits(s), bits(s_ref))
