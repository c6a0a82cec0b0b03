"""``PackedField`` / ``FusedSteeringField`` decode hot path: same results as the public op,
clear errors for bad rows, and the cached strength tensor following alpha, N and ``.to()``."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import bits, make_field

from svf_kernels import FusedSteeringField, PackedField, StepPlan, SVFArgumentError, field_update_


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
