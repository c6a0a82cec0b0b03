"""The torch reference of field_update_ against autograd of the unfolded scorer, and the op contract."""

import pytest
import torch

from svf.scorer import ConceptScorer, ScorerConfig
from svf_kernels import SVFArgumentError, field_direction, field_update_
from svf_kernels.ops.reference import gelu_tanh, soft_min_score


def _scorers(C, d=37, layers=(3, 4, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(C):
        s = ConceptScorer(ScorerConfig(d, layers, r=7, de=3, m=11)).double()
        with torch.no_grad():
            for p in s.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
        out.append(s)
    return out


def _packed(scorers, layer):
    folded = [s.fold(layer) for s in scorers]
    return (
        torch.stack([f.A for f in folded]),
        torch.stack([f.c for f in folded]),
        torch.stack([f.w2 for f in folded]),
        torch.cat([f.b2 for f in folded]),
    )


def _autograd_field(scorers, h, layer, tau):
    h = h.clone().requires_grad_(True)
    f = torch.stack([s.score_layer(h, layer) for s in scorers], -1)  # [N, C]
    softmin = -tau * torch.logsumexp(-f / tau, dim=-1)  # its gradient is sum_i softmax(-f/tau)_i grad f_i
    (grad,) = torch.autograd.grad(softmin.sum(), h)
    return f.detach(), grad


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_direction_equals_autograd_float64(C, tau):
    scorers = _scorers(C)
    h = torch.randn(9, 37, dtype=torch.float64) * 3
    for layer in (3, 5):
        want_scores, want = _autograd_field(scorers, h, layer, tau)
        scores, v = field_direction(h, *_packed(scorers, layer), tau=tau, eps=scorers[0].config.eps)
        rel = (v - want).norm(dim=-1) / want.norm(dim=-1)
        assert rel.max() <= 1e-9, rel.max()
        assert torch.allclose(scores, want_scores, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("C", [1, 3])
def test_op_update_is_alpha_times_unit_autograd_direction(C):
    scorers = _scorers(C, seed=1)
    h = torch.randn(6, 37, dtype=torch.float64)
    _, want = _autograd_field(scorers, h, 4, 1.0)
    for normalize in (True, False):
        moved = h.clone()
        field_update_(moved, *_packed(scorers, 4), 0.7, normalize=normalize, eps=scorers[0].config.eps)
        expect = want / want.norm(dim=-1, keepdim=True) if normalize else want
        rel = ((moved - h) - 0.7 * expect).norm(dim=-1) / (0.7 * expect).norm(dim=-1)
        assert rel.max() < 1e-9


def _autograd_preconditioned(A, c, w2, b2, B, h, tau, eps):
    """The direction with B, computed independently of the reference's closed form: autograd
    gives u = d softmin / d z (softmin weights and act'(z) * w2 included), then G = sum_i
    B_i.T @ u_i, and autograd again pulls G back through the RMS norm (J^T G)."""
    h = h.clone().requires_grad_(True)
    hn = h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    z = (torch.einsum("nd,cmd->ncm", hn, A) + c).detach().requires_grad_(True)
    s = (gelu_tanh(z) * w2).sum(-1) + b2
    (u,) = torch.autograd.grad((-tau * torch.logsumexp(-s / tau, dim=-1)).sum(), z)
    G = torch.einsum("ncm,cmd->nd", u, B)
    (v,) = torch.autograd.grad(hn, h, grad_outputs=G)
    return s.detach(), v


@pytest.mark.parametrize("C", [1, 3])
@pytest.mark.parametrize("tau", [1.0, 0.3])
def test_direction_with_B_float64(C, tau):
    """B = A: exactly the B = None arithmetic (the gradient, as above); another B: the
    preconditioned direction B.T @ (act'(z) * w2) through the RMS norm, to ~1e-12."""
    scorers = _scorers(C, seed=3)
    A, c, w2, b2 = _packed(scorers, 4)
    eps = scorers[0].config.eps
    h = torch.randn(9, 37, dtype=torch.float64) * 3
    s_none, v_none = field_direction(h, A, c, w2, b2, tau=tau, eps=eps)
    s_a, v_a = field_direction(h, A, c, w2, b2, tau=tau, eps=eps, B=A)
    assert torch.equal(v_a, v_none) and torch.equal(s_a, s_none)
    _, want_grad = _autograd_field(scorers, h, 4, tau)
    assert ((v_a - want_grad).norm(dim=-1) / want_grad.norm(dim=-1)).max() <= 1e-9
    B = torch.randn(A.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    want_scores, want = _autograd_preconditioned(A, c, w2, b2, B, h, tau, eps)
    scores, v = field_direction(h, A, c, w2, b2, tau=tau, eps=eps, B=B)
    assert torch.allclose(scores, want_scores, rtol=1e-12, atol=1e-12)
    assert torch.equal(scores, s_none), "B does not change the scores"
    rel = (v - want).norm(dim=-1) / want.norm(dim=-1)
    assert rel.max() <= 1e-9, rel.max()
    assert ((v - v_none).norm(dim=-1) / v_none.norm(dim=-1)).min() > 0.1, "B made no difference"
    for normalize in (True, False):
        moved = h.clone()
        field_update_(moved, A, c, w2, b2, -0.7, tau=tau, normalize=normalize, eps=eps, B=B)
        expect = want / want.norm(dim=-1, keepdim=True) if normalize else want
        rel = ((moved - h) + 0.7 * expect).norm(dim=-1) / (0.7 * expect).norm(dim=-1)
        assert rel.max() < 1e-9


def test_target_gate_float64():
    """float64: each row moves by exactly alpha * gate along the untargeted direction, the gate
    being clamp(sign(alpha) (target - s_mix) / band, 0, 1) of the soft-minimum score."""
    A, c, w2, b2 = _rand_field(C=3, dtype=torch.float64)
    h = torch.randn(6, 33, dtype=torch.float64)
    tau, band = 0.6, 0.8
    s0 = field_update_(h.clone(), A, c, w2, b2, 0.0, tau=tau)  # float32, as returned
    s64, _ = field_direction(h, A, c, w2, b2, tau=tau)  # the float64 scores the gate sees
    s_mix = soft_min_score(s64, tau)
    smin = s64.min(-1).values
    assert torch.equal(soft_min_score(s64[:, :1], tau), s64[:, 0])  # C = 1: exactly s_1
    assert (s_mix <= smin).all() and (s_mix >= smin - tau * torch.log(torch.tensor(3.0))).all()
    alpha = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0, 0.5], dtype=torch.float64)
    offset = torch.tensor([0.2, 0.9, 0.35, -0.1, 1.7, float("nan")], dtype=torch.float64)
    target = s_mix + torch.sign(alpha) * offset * band
    plain = h.clone()
    field_update_(plain, A, c, w2, b2, alpha, tau=tau)
    moved = h.clone()
    s = field_update_(moved, A, c, w2, b2, alpha, tau=tau, target=target, band=band)
    gate = torch.where(offset.isnan(), 1.0, offset.clamp(0, 1)).unsqueeze(1)
    torch.testing.assert_close(moved - h, gate * (plain - h), rtol=1e-12, atol=1e-12)
    assert torch.equal(moved[3], h[3]) and torch.equal(s, s0)


def test_folded_and_unfolded_scores_agree():
    (s,) = _scorers(1, seed=2)
    h = torch.randn(20, 37, dtype=torch.float64)
    for layer in (3, 4, 5):
        f = s.fold(layer)
        scores, _ = field_direction(h, f.A[None], f.c[None], f.w2[None], f.b2, eps=s.config.eps)
        assert torch.allclose(scores[:, 0], s.score_layer(h, layer), rtol=1e-12, atol=1e-12)


def _rand_field(C=2, m=8, d=33, dtype=torch.float32):
    g = torch.Generator().manual_seed(5)
    return (
        torch.randn(C, m, d, generator=g).to(dtype),
        torch.randn(C, m, generator=g).to(dtype),
        torch.randn(C, m, generator=g).to(dtype),
        torch.randn(C, generator=g).to(dtype),
    )


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_storage_dtypes_match_float64(dtype, tol):
    A, c, w2, b2 = _rand_field()
    h64 = torch.randn(7, 33, dtype=torch.float64)
    ref = h64.clone()
    s_ref = field_update_(ref, A.double(), c.double(), w2.double(), b2.double(), 0.9)
    h = h64.to(dtype)
    start = h.clone()
    s = field_update_(h, A, c, w2, b2, 0.9)
    assert s.dtype == torch.float32 and s.shape == (7, 2)
    # compare the displacement (the part the op adds) with the float64 one
    err = ((h.double() - start.double()) - (ref - h64)).norm(dim=-1).max()
    assert err < tol * 0.9 * 30, err
    assert torch.allclose(s.double(), s_ref.double(), atol=tol * 10, rtol=tol * 10)


def test_rows_mask_and_zero_alpha_leave_rows_bit_identical():
    A, c, w2, b2 = _rand_field()
    h = torch.randn(6, 33)
    before = h.clone()
    rows = torch.tensor([True, False, True, True, False, True])
    alpha = torch.tensor([1.0, 1.0, 0.0, 0.5, 0.5, -0.5])
    field_update_(h, A, c, w2, b2, alpha, rows=rows)
    unchanged = ~rows | (alpha == 0)
    assert torch.equal(h[unchanged], before[unchanged])
    assert (h[~unchanged] != before[~unchanged]).any(-1).all()


def test_non_finite_rows_are_left_alone():
    A, c, w2, b2 = _rand_field()
    h = torch.randn(4, 33)
    h[1, 3] = float("nan")
    h[2, 0] = float("inf")
    before = h.clone()
    field_update_(h, A, c, w2, b2, 1.0)
    assert torch.equal(h[1:3].isnan(), before[1:3].isnan())
    assert torch.equal(torch.nan_to_num(h[1:3]), torch.nan_to_num(before[1:3]))
    assert torch.isfinite(h[[0, 3]]).all() and (h[[0, 3]] != before[[0, 3]]).any(-1).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_scores_nan_exactly_on_rows_skipped_for_non_finite_values(dtype):
    """The contract: NaN / +-Inf input, or a kept alpha != 0 row whose update is not finite (as
    stored: fp16 overflow counts), is left bit-identical with NaN scores; the mask and alpha 0
    keep real scores; the other rows are as in a call without the bad rows."""
    A, c, w2, b2 = _rand_field(dtype=dtype if dtype == torch.float64 else torch.float32)
    clean = torch.randn(8, 33, dtype=torch.float64).to(dtype)
    h = clean.clone()
    h[1, 3] = float("nan")
    h[2, 0] = float("inf")
    h[3, 5] = float("-inf")
    alpha_clean = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    alpha = alpha_clean.clone()
    alpha[4] = 1e7 if dtype == torch.float16 else float("inf")  # finite row, update not finite
    alpha[6] = float("inf")  # but masked out
    rows = torch.ones(8, dtype=torch.bool)
    rows[6] = False
    before = h.clone()
    ref = clean.clone()
    s_ref = field_update_(ref, A, c, w2, b2, alpha_clean, rows=rows)
    s = field_update_(h, A, c, w2, b2, alpha, rows=rows)
    bad = torch.tensor([False, True, True, True, True, False, False, False])
    assert torch.equal(s.isnan().all(1), bad) and torch.equal(s.isnan().any(1), bad)
    assert torch.equal(h[bad].isnan(), before[bad].isnan())
    assert torch.equal(torch.nan_to_num(h[bad]), torch.nan_to_num(before[bad]))
    assert torch.equal(h[~bad], ref[~bad]) and torch.equal(s[~bad], s_ref[~bad])
    assert torch.isfinite(h[[0, 4, 5, 6, 7]]).all()
    assert torch.equal(h[[5, 6]], before[[5, 6]])


def test_zero_gradient_leaves_rows_unchanged_with_finite_scores():
    A, c, w2, b2 = _rand_field(dtype=torch.float64)
    h = torch.randn(4, 33, dtype=torch.float64)
    h[0, 0] = -0.0
    before = h.clone()
    s = field_update_(h, A * 0, c, w2, b2, 0.7)
    assert torch.equal(h, before) and torch.isfinite(s).all()


def test_non_contiguous_row_view_updates_in_place():
    A, c, w2, b2 = _rand_field(C=1)
    x = torch.randn(3, 5, 33)
    expected = x[:, -1].clone()
    field_update_(expected, A, c, w2, b2, 0.4)
    view = x[:, -1]  # [B, d] rows of a [B, T, d] tensor, stride T*d
    assert not view.is_contiguous()
    field_update_(view, A, c, w2, b2, 0.4)
    assert torch.equal(x[:, -1], expected)


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda a: a.update(hidden=torch.randn(4, 33, 2)), "hidden must be [N, d]"),
        (lambda a: a.update(A=torch.randn(2, 8, 32)), "A must be"),
        (lambda a: a.update(c=torch.randn(2, 7)), "c must have shape"),
        (lambda a: a.update(b2=torch.randn(3)), "b2 must have shape"),
        (lambda a: a.update(alpha=torch.ones(5)), "alpha must be"),
        (lambda a: a.update(hidden=torch.randn(4, 33).to(torch.int32)), "hidden dtype"),
        (lambda a: a.update(tau=0.0), "tau must be finite and > 0"),
        (lambda a: a.update(rows=torch.ones(4)), "rows must be a bool mask"),
    ],
)
def test_bad_arguments_name_the_problem(mutate, needle):
    A, c, w2, b2 = _rand_field()
    args = {"hidden": torch.randn(4, 33), "A": A, "c": c, "w2": w2, "b2": b2, "alpha": 1.0}
    kw = {}
    mutate(args)
    for k in ("tau", "rows"):
        if k in args:
            kw[k] = args.pop(k)
    with pytest.raises(SVFArgumentError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        field_update_(*args.values(), **kw)


def test_unknown_backend_is_refused(monkeypatch):
    A, c, w2, b2 = _rand_field()
    monkeypatch.setenv("SVF_BACKEND", "nope")
    with pytest.raises(SVFArgumentError, match="SVF_BACKEND='nope' is not a backend"):
        field_update_(torch.randn(2, 33), A, c, w2, b2, 1.0)


@pytest.mark.parametrize("options", [False, True], ids=["plain", "B-target"])
def test_torch_compile_fullgraph(options):
    A, c, w2, b2 = _rand_field()
    kw = {"B": A.flip(-1).contiguous(), "target": 0.5, "band": 2.0} if options else {}

    def step(h):
        s = field_update_(h, A, c, w2, b2, 0.3, **kw)
        return h * 2, s

    h1, h2 = torch.randn(5, 33), None
    h2 = h1.clone()
    torch._dynamo.reset()
    out_c, s_c = torch.compile(step, fullgraph=True, backend="eager")(h1)
    out_e, s_e = step(h2)
    assert torch.equal(out_c, out_e) and torch.equal(s_c, s_e)
