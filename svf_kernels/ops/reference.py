"""The kernel contract of DESIGN.md §3, written once in plain torch.

This is the ``torch`` backend of ``svf_kernels.field_update_`` and the reference that every
compiled kernel is tested against. For one row ``h`` of the residual stream and concepts
``i = 1..C`` (folded per-layer parameters ``A[i]: [m, d]``, ``c[i], w2[i]: [m]``, ``b2[i]``;
optionally a second folded matrix ``B[i]: [m, d]`` for the direction, ``B = A`` when not given;
optionally a target score ``target`` of the row and a band ``band > 0``)::

    rms   = sqrt(mean(h*h) + eps);  hn = h / rms
    z_i   = A_i @ hn + c_i
    s_i   = w2_i @ act(z_i) + b2_i                    # score, returned (before the update)
    g_i   = B_i.T @ (act'(z_i) * w2_i)                # B = A: d s_i / d hn
    v_i   = (g_i - hn * dot(hn, g_i) / d) / rms       # B = A: d s_i / d h, through the RMS norm
    v     = sum_i softmax(-s / tau)_i * v_i           # soft minimum over concepts (C = 1: v_1)
    dir   = v / max(||v||, tiny) if normalize else v  # ||v|| < 2^-50: measured on v * 2^100
    smin  = min_i s_i
    s_mix = smin - tau * log(sum_i exp(-(s_i - smin) / tau))   # soft minimum of the scores
                                                      # (C = 1: exactly s_1; +inf scores weigh 0)
    gate  = 1                                         # no target (None, or NaN for this row)
    gate  = clamp(sign(alpha) * (target - s_mix) / band, 0, 1)  # with a target
    a     = 0 if alpha == 0 or gate == 0 else alpha * gate   # the row's strength
    h    += a * dir                                   # in place

Arithmetic runs in float32 whatever the storage dtype (float64 inputs stay float64, so the
reference can be checked against autograd to ~1e-12). A row is left bit-identical when its
``rows`` mask entry is False, its strength ``a`` is 0 (``alpha == 0``, or a gate of 0: the row's
soft-minimum score has reached its target in the direction of ``alpha``), or its input or update
is not finite (the update is checked as stored: an fp16/bf16 overflow to Inf counts as
non-finite). Scores are returned for every row, except that a row skipped *because of non-finite
values* -- a non-finite input, or a kept row with ``a != 0`` whose update would not be finite --
scores NaN in all C concepts, so callers can tell which rows were not moved for that reason. Rows
skipped by the mask or ``a == 0`` keep their real scores. ``v = 0`` (zero gradient) gives
``dir = 0`` and tiny norms are normalised through ``max(||v||, tiny)``: neither produces
NaN/Inf (such a row is "moved" by ``a * 0``: value-identical, ``-0.0`` may become ``+0.0``);
a norm below 2^-50 is measured on ``v * 2^100`` (``sum(v*v)`` would underflow), so a tiny
gradient still gives a unit direction. The gate is linear in the soft-minimum score over the
last ``band`` score units before the target, 0 from the target on, and exactly 1 before those
(then ``a == alpha`` bit for bit, as without a target); a NaN gate (from non-finite scores, e.g.
+inf in every concept) makes ``a`` NaN, so the row is skipped for non-finite values like any
other row whose update is not finite.

The *field table* variant (DESIGN.md §3, last paragraph; batched serving) holds F fields
stacked (``A: [F, C, m, d]``, ``B`` likewise, ``c, w2: [F, C, m]``, ``b2: [F, C]``) and a
per-row ``field_ids: [N]``: row ``r`` is moved by field ``field_ids[r]`` exactly as the
one-field op would move it (its target, if any, is ``target[r]``); ``-1`` (or any id outside
``[0, F)``) means no steering: the row is left bit-identical and its scores are NaN; steered
rows follow the one-field rules above. A table may also hold one static vector per field
(``vectors: [F, d]``): a row of field ``f`` then moves by ``a * (dir + vectors[f])``, the
gate and the non-finite rules applying to the whole update. A static entry is a field whose
scorer is zero (``A = 0``, ``w2 = 0``: ``dir = 0``, score ``b2``) and whose vector is the
entry's; an entry that combines a field with a static vector has both.
"""

from __future__ import annotations

import math

import torch

STORAGE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_GELU_K = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
# ||v|| below _TINY_NORM is re-measured on v * _NORM_UP (powers of two: exact scaling)
_TINY_NORM, _NORM_UP, _NORM_DOWN = 2.0**-50, 2.0**100, 2.0**-100


def gelu_tanh(z: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation (the scorer's activation)."""
    return 0.5 * z * (1.0 + torch.tanh(_GELU_K * (z + _GELU_C * z * z * z)))


def gelu_tanh_grad(z: torch.Tensor) -> torch.Tensor:
    """Analytic derivative of :func:`gelu_tanh`; what the kernels use instead of autograd.

    With ``y = K (z + c z^3)`` and ``s = sigmoid(2y) = (1 + tanh y) / 2`` it is ``s + 2K (1 +
    3c z^2) z s (1 - s)``: the tanh form ``(1 + t)/2 + z (1 - t^2) K (...) / 2`` with no
    cancellation in ``1 - t^2`` where ``t`` rounds to -1 (fp32, ``z`` below about -4), so the
    derivative keeps its sign and size there."""
    y2 = 2.0 * _GELU_K * (z + _GELU_C * z * z * z)
    s, q = torch.sigmoid(y2), torch.sigmoid(-y2)  # q = 1 - s, accurate in both tails
    return s + 2.0 * _GELU_K * (1.0 + 3.0 * _GELU_C * z * z) * z * s * q


def compute_dtype(storage: torch.dtype) -> torch.dtype:
    """float64 stays float64 (for reference checks); everything else accumulates in float32."""
    return torch.float64 if storage == torch.float64 else torch.float32


def field_direction(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    *,
    tau: float = 1.0,
    eps: float = 1e-6,
    B: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores ``[N, C]`` and the un-normalised softmin field ``v`` ``[N, d]`` (no update).

    ``B`` (same shape as ``A``) replaces ``A`` in the direction only (``g_i = B_i.T @ ...``).
    """
    dt = compute_dtype(hidden.dtype)
    h = hidden.to(dt)
    A, c, w2, b2 = A.to(dt), c.to(dt), w2.to(dt), b2.to(dt)
    d = h.shape[-1]
    rms = torch.sqrt(h.pow(2).mean(-1, keepdim=True) + eps)  # [N, 1]
    hn = h / rms
    z = torch.einsum("nd,cmd->ncm", hn, A) + c  # [N, C, m]
    scores = (gelu_tanh(z) * w2).sum(-1) + b2  # [N, C]
    g = torch.einsum("ncm,cmd->ncd", gelu_tanh_grad(z) * w2, A if B is None else B.to(dt))  # [N, C, d]
    hn3 = hn.unsqueeze(1)
    v = (g - hn3 * (g * hn3).sum(-1, keepdim=True) / d) / rms.unsqueeze(1)  # [N, C, d]
    weights = torch.softmax(-scores / tau, dim=-1)  # [N, C]
    return scores, (weights.unsqueeze(-1) * v).sum(1)


def soft_min_score(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """``smin - tau * log(sum_i exp(-(s_i - smin) / tau))`` per row of ``scores [N, C]``.

    The soft minimum whose gradient the field follows; exactly ``s_1`` when C = 1, and a +inf
    score (a padded concept) weighs 0.
    """
    smin = scores.min(-1, keepdim=True).values
    return smin.squeeze(-1) - tau * torch.log(torch.exp(-(scores - smin) / tau).sum(-1))


def gated_alpha(
    scores: torch.Tensor, alpha: torch.Tensor, target: torch.Tensor | None, band: float, tau: float
) -> torch.Tensor:
    """Each row's strength ``a``: ``alpha``, scaled by the gate of its target (module docstring).

    ``scores [N, C]`` in the compute dtype; ``target [N]`` or None; returns ``[N]`` in the dtype
    of ``scores``. No target (None, or NaN for a row): ``alpha`` itself.
    """
    dt = scores.dtype
    a = alpha.to(dt).reshape(-1)
    if target is None:
        return a
    t = target.to(dt).reshape(-1)
    gate = torch.clamp(torch.sign(a) * (t - soft_min_score(scores, tau)) / band, 0.0, 1.0)
    gated = torch.where((a == 0) | (gate == 0), torch.zeros_like(a), a * gate)
    return torch.where(torch.isnan(t), a, gated)


def _move_(
    hidden: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, normalize: bool, keep: torch.Tensor | None,
    static: torch.Tensor | None = None,
) -> torch.Tensor:
    """``hidden += alpha * (dir(v) + static)`` in place (``static [N, d]``, None: 0), on the rows
    that stay finite, are kept and have alpha != 0.

    Returns the ``[N]`` bool mask of the rows skipped for non-finite values (a non-finite input,
    or a kept, alpha != 0 row whose update, as stored in ``hidden``'s dtype, is not finite):
    the rows whose scores the contract makes NaN.
    """
    dt = v.dtype
    if normalize:
        tiny = torch.finfo(dt).tiny
        nrm = v.norm(dim=-1, keepdim=True)
        # below 2^-50, sum(v*v) may have underflowed: measure on v * 2^100 (exact), scale back
        scaled = (v * _NORM_UP).norm(dim=-1, keepdim=True) * _NORM_DOWN
        v = v / torch.where(nrm < _TINY_NORM, scaled, nrm).clamp_min(tiny)
    a = alpha.to(dt).reshape(-1, 1)
    if static is not None:
        v = v + static.to(dt)
    new = (hidden.to(dt) + a * v).to(hidden.dtype)  # as it would be stored (fp16 may overflow)
    finite_in = torch.isfinite(hidden).all(-1)
    move = (a != 0).squeeze(1) & finite_in
    if keep is not None:
        move = move & keep
    finite_new = torch.isfinite(new).all(-1)
    hidden.copy_(torch.where((move & finite_new).unsqueeze(1), new, hidden))
    return ~finite_in | (move & ~finite_new)


def _nan_where(scores: torch.Tensor, skipped: torch.Tensor) -> torch.Tensor:
    return torch.where(skipped.unsqueeze(1), torch.full_like(scores, float("nan")), scores)


def field_update_reference(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: torch.Tensor,
    tau: float = 1.0,
    normalize: bool = True,
    eps: float = 1e-6,
    rows: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    band: float = 1.0,
) -> torch.Tensor:
    """Apply the field to ``hidden`` ``[N, d]`` in place; return float32 scores ``[N, C]``.

    ``alpha`` (and ``target``, if given) are ``[N]`` tensors here (the public op also takes
    floats).
    """
    scores, v = field_direction(hidden, A, c, w2, b2, tau=tau, eps=eps, B=B)
    a = gated_alpha(scores, alpha, target, band, tau)
    skipped = _move_(hidden, v, a, normalize, rows)
    return _nan_where(scores.float(), skipped)


def field_table_update_reference(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    field_ids: torch.Tensor,
    alpha: torch.Tensor,
    tau: float = 1.0,
    normalize: bool = True,
    eps: float = 1e-6,
    B: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    band: float = 1.0,
    vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Move row ``r`` of ``hidden`` by field ``field_ids[r]`` of the table, in place.

    Returns float32 scores ``[N, C]`` (NaN on rows with no field). Every field is evaluated
    on every row and the row's own is selected: F times the work, no data-dependent shapes
    (so it traces and never synchronises with the host); the compiled kernels do only the
    row's own field. ``B`` (``[F, C, m, d]``) and ``target`` (``[N]``) as in
    :func:`field_update_reference`; ``vectors`` (``[F, d]``, None: none): each field's static
    vector, added to its unit direction.
    """
    ids = field_ids.long()
    N, C = hidden.shape[0], A.shape[1]
    dt = compute_dtype(hidden.dtype)
    scores = torch.full((N, C), float("nan"), dtype=dt, device=hidden.device)
    v = torch.zeros(hidden.shape, dtype=dt, device=hidden.device)
    for f in range(A.shape[0]):
        s_f, v_f = field_direction(hidden, A[f], c[f], w2[f], b2[f], tau=tau, eps=eps,
                                   B=None if B is None else B[f])
        mine = (ids == f).unsqueeze(1)
        scores = torch.where(mine, s_f, scores)
        v = torch.where(mine, v_f, v)
    a = gated_alpha(scores, alpha, target, band, tau)
    steered = (ids >= 0) & (ids < A.shape[0])
    static = None if vectors is None else vectors.to(dt).index_select(0, torch.where(steered, ids, 0))
    skipped = _move_(hidden, v, a, normalize, steered, static)
    return _nan_where(scores.float(), skipped)
