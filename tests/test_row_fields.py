"""``PackedField`` / ``FusedSteeringField`` decode hot path: same results as the public op,
clear errors for bad rows, and the cached strength tensor following alpha, N and ``.to()``;
the optional ``B`` and targets of ``PackedField`` and ``FieldTable``."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import bits, make_field, make_table

from svf_kernels import (
    FieldTable,
    FusedSteeringField,
    PackedField,
    StepPlan,
    SVFArgumentError,
    field_table_update_,
    field_update_,
)


def _field(seed=0, d=48):
    gen = torch.Generator().manual_seed(seed)
    A, c, w2, b2 = make_field(2, d, 8, torch.float32, gen)
    return PackedField(A, c, w2, b2, tau=0.7), (A, c, w2, b2), gen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_apply_matches_public_op_across_alpha_and_n(dtype):
    field, (A, c, w2, b2), gen = _field(1)
    for n, alpha in ((3, 0.5), (3, 0.5), (3, -1.25), (5, -1.25), (1, 2.0)):
        h = torch.randn(n, 48, generator=gen).to(dtype)
        h_ref = h.clone()
        s = field.apply_(h, alpha)
        s_ref = field_update_(h_ref, A, c, w2, b2, alpha, tau=0.7)
        assert torch.equal(s, s_ref)
        assert torch.equal(h.view(torch.int64) if dtype == torch.float64 else bits(h),
                           h_ref.view(torch.int64) if dtype == torch.float64 else bits(h_ref))


@pytest.mark.parametrize("backend", ["", "torch"])
def test_apply_bad_rows_get_a_named_error_and_stay_untouched(backend, monkeypatch):
    """Every backend of the hot path names bad rows (``""``: the default for CPU tensors)."""
    monkeypatch.setenv("SVF_BACKEND", backend)
    field, _, gen = _field(2)
    wrong_d = torch.randn(2, 47, generator=gen)
    before = wrong_d.clone()
    with pytest.raises(SVFArgumentError, match=r"A must be \[C, m, 47\]"):
        field.apply_(wrong_d, 0.5)
    assert torch.equal(wrong_d, before)
    with pytest.raises(SVFArgumentError, match="hidden must be \\[N, d\\]"):
        field.apply_(torch.randn(2, 3, 48), 0.5)
    with pytest.raises(SVFArgumentError, match="hidden dtype"):
        field.apply_(torch.zeros(2, 48, dtype=torch.int32), 0.5)
    with pytest.raises(SVFArgumentError, match="must be a tensor"):
        field.apply_([[0.0] * 48], 0.5)


def test_cached_alpha_follows_to():
    field, _, _ = _field(3)
    field.apply_(torch.randn(2, 48), 0.5)
    assert field._alpha_cache is not None
    field.to(torch.float32)  # any _apply drops the cache (device moves make it stale)
    assert field._alpha_cache is None


def test_fused_layer_decode_path_with_float_and_per_row_alpha():
    """last_only plans steer the [B, d] last-position view in place; per-row alpha works too."""
    field, (A, c, w2, b2), gen = _field(4)
    plan = StepPlan(3, torch.arange(3), last_only=True)
    hidden = torch.randn(3, 1, 48, generator=gen)
    for alpha in (0.8, torch.tensor([0.5, 0.0, -1.0])):
        wrapper = FusedSteeringField(torch.nn.Identity(), field, alpha, lambda: plan)
        h = hidden.clone()
        expected = hidden[:, -1].clone()
        s_ref = field_update_(expected, A, c, w2, b2, alpha, tau=0.7)
        with torch.no_grad():
            out = wrapper(h)
        assert out is h and torch.equal(h[:, -1], expected)
        assert torch.equal(wrapper.last_scores, s_ref)


@pytest.mark.parametrize("warm", [False, True], ids=["cold-cache", "warm-cache"])
def test_apply_compiles_fullgraph(warm):
    """The hot path (cached strength tensor, no Python checks) traces without graph breaks."""
    field, _, gen = _field(5)
    if warm:
        field.apply_(torch.randn(3, 48, generator=gen), 0.5)

    def step(h):
        s = field.apply_(h, 0.5)
        return h * 2, s

    h1 = torch.randn(3, 48, generator=gen)
    h2 = h1.clone()
    torch._dynamo.reset()
    out_c, s_c = torch.compile(step, fullgraph=True, backend="aot_eager")(h1)
    out_e, s_e = step(h2)
    assert torch.equal(h1, h2) and torch.equal(out_c, out_e) and torch.equal(s_c, s_e)


# ------------------------------------------------------------------ B and targets (DESIGN.md §2)


def _options(seed=10, d=48, C=2, F=None):
    gen = torch.Generator().manual_seed(seed)
    if F is None:
        A, c, w2, b2 = make_field(C, d, 8, torch.float32, gen)
    else:
        A, c, w2, b2 = make_table(F, C, d, 8, torch.float32, gen)
    B = torch.randn(A.shape, generator=gen) / d**0.5
    return (A, c, w2, b2), B, gen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_packed_field_with_B_and_target_matches_public_op(dtype):
    """The hot path (float alpha, cached strength and target tensors) and the tensor-alpha path
    give what field_update_ gives with the same B and band and the target on alpha's side
    (``target`` where alpha >= 0, ``-target`` where alpha < 0)."""
    (A, c, w2, b2), B, gen = _options(11)
    s0 = field_update_(torch.randn(3, 48, generator=gen), A, c, w2, b2, 0.0, tau=0.7)
    target = float(s0[:, 0].mean()) + 0.5
    field = PackedField(A, c, w2, b2, tau=0.7, B=B, target=target, band=2.0)
    assert field.target == target and field.band == 2.0 and torch.equal(field.B, B)
    for n, alpha in ((3, 0.5), (3, 0.5), (5, -1.25), (1, 2.0), (4, torch.tensor([0.5, 0, -1, 2]))):
        h = torch.randn(n, 48, generator=gen).to(dtype)
        h_ref = h.clone()
        s = field.apply_(h, alpha)
        a = alpha if isinstance(alpha, torch.Tensor) else torch.tensor([float(alpha)] * n)
        signed = torch.where(a < 0, -target, target)
        s_ref = field_update_(h_ref, A, c, w2, b2, alpha, tau=0.7, B=B, target=signed, band=2.0)
        assert torch.equal(s, s_ref) and torch.equal(bits(h), bits(h_ref))
    assert field._target_cache is not None and field._target_cache[0] == 1
    field.to(torch.float32)
    assert field._target_cache is None


def test_packed_field_B_changes_the_direction_and_target_stops_it():
    (A, c, w2, b2), B, gen = _options(12, C=1)
    h = torch.randn(2, 48, generator=gen)
    plain, with_b = h.clone(), h.clone()
    PackedField(A[0], c[0], w2[0], b2[0]).apply_(plain, 1.0)  # one concept, unstacked
    PackedField(A[0], c[0], w2[0], b2[0], B=B[0]).apply_(with_b, 1.0)
    assert (plain != with_b).any(-1).all()
    stopped = h.clone()
    s = PackedField(A, c, w2, b2, target=-1e30).apply_(stopped, 1.0)  # every score is above it
    assert torch.equal(stopped, h) and torch.isfinite(s).all()


def test_packed_field_bad_options_name_the_problem():
    (A, c, w2, b2), B, _ = _options(13)
    with pytest.raises(SVFArgumentError, match="B must have the shape of A"):
        PackedField(A, c, w2, b2, B=B[:1])
    with pytest.raises(SVFArgumentError, match="B must be a floating-point tensor"):
        PackedField(A, c, w2, b2, B=B.long())
    with pytest.raises(SVFArgumentError, match="target must be None or a float"):
        PackedField(A, c, w2, b2, target=torch.zeros(1))
    with pytest.raises(SVFArgumentError, match="band must be finite and > 0"):
        PackedField(A, c, w2, b2, target=1.0, band=0.0)


@pytest.mark.parametrize("alpha", [0.7, "tensor"])
def test_field_table_with_B_and_targets_matches_public_op(alpha):
    """apply_ gathers each row's field target on the device (ids of -1 and out of range are
    unsteered, no error), on the side of the row's strength, and gives what
    field_table_update_ gives with those targets."""
    (A, c, w2, b2), B, gen = _options(14, F=3)
    targets = torch.tensor([0.5, float("nan"), -0.25])
    table = FieldTable(A, c, w2, b2, tau=0.5, B=B, targets=targets, band=0.75)
    ids = torch.tensor([2, -1, 0, 1, 2, 3, 0], dtype=torch.int32)
    a = torch.linspace(-1.0, 1.0, 7) if alpha == "tensor" else alpha
    h = torch.randn(7, 48, generator=gen)
    h_ref = h.clone()
    s = table.apply_(h, a, ids)
    per_row = torch.tensor([-0.25, float("nan"), 0.5, float("nan"), -0.25, float("nan"), 0.5])
    if alpha == "tensor":
        per_row = torch.where(a < 0, -per_row, per_row)
    s_ref = field_table_update_(h_ref, A, c, w2, b2, ids, a, tau=0.5, check_ids=False, B=B,
                                target=per_row, band=0.75)
    assert torch.equal(bits(s), bits(s_ref)) and torch.equal(h, h_ref)
    assert torch.equal(bits(table.targets), bits(targets)) and torch.equal(table.B, B)


def test_field_table_bad_options_name_the_problem():
    (A, c, w2, b2), B, _ = _options(15, F=3)
    with pytest.raises(SVFArgumentError, match=r"targets must be None or a \[3\] float tensor"):
        FieldTable(A, c, w2, b2, targets=torch.zeros(2))
    with pytest.raises(SVFArgumentError, match=r"targets must be None or a \[3\] float tensor"):
        FieldTable(A, c, w2, b2, targets=torch.zeros(3, dtype=torch.long))
    with pytest.raises(SVFArgumentError, match="B must have the shape of A"):
        FieldTable(A, c, w2, b2, B=B[0])
    with pytest.raises(SVFArgumentError, match="band must be finite and > 0"):
        FieldTable(A, c, w2, b2, band=float("inf"))


@pytest.mark.parametrize("kind", ["packed", "table"])
def test_fused_layer_with_B_and_targets_compiles_fullgraph(kind):
    """FusedSteeringField, last_only: a PackedField with B and a target, or a FieldTable with B
    and per-field targets (gathered per row on the device), traces without graph breaks and
    matches eager."""
    if kind == "packed":
        (A, c, w2, b2), B, gen = _options(16)
        field = PackedField(A, c, w2, b2, tau=0.7, B=B, target=0.25, band=0.5)
        ids = None
    else:
        (A, c, w2, b2), B, gen = _options(17, F=2)
        field = FieldTable(A, c, w2, b2, B=B, targets=torch.tensor([0.1, float("nan")]), band=0.5)
        ids = torch.tensor([1, 0, -1])
    alpha = torch.tensor([0.5, -0.25, 1.0])
    wrapper = FusedSteeringField(torch.nn.Identity(), field, alpha, field_ids=ids, last_only=True)
    hidden = torch.randn(3, 2, 48, generator=gen)
    h1, h2 = hidden.clone(), hidden.clone()
    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(wrapper, fullgraph=True, backend="aot_eager")(h1)
        s_c = wrapper.last_scores
        wrapper(h2)
    assert torch.equal(h1, h2) and torch.equal(bits(s_c), bits(wrapper.last_scores))
    assert not torch.equal(h1, hidden)
