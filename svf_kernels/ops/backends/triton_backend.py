"""The ``triton`` backend: the fused field update (DESIGN.md §3) as a Triton kernel.

One program per row. Per row, with ``A_flat = A.reshape(C*m, d)`` and ``B_flat`` likewise (the
direction's matrix: ``A_flat`` itself, the same buffer, when no ``B`` is given; the concepts'
gradients are combined before the RMS-Jacobian projection, which is linear in ``g``)::

    pass 1  sum(h^2) -> rms; sum(h * 0) (NaN iff the input is not finite)
    pass 2  z = A_flat @ h / rms + c   (tiles of BLOCK_U units x BLOCK_D columns; z to a scratch
            buffer), scores s_i = w2_i . act(z_i) + b2_i, softmin weights w = softmax(-s / tau);
            with a target (``HAS_TARGET``, a compile-time constant) the row's strength
            a = alpha * gate(s_mix, target, band), as in svf_kernels/ops/reference.py
    pass 3  G = B_flat^T (w_i act'(z) w2)   (G to a scratch buffer), dot = hn . G
    pass 4  v = (G - hn dot / d) / rms  (overwrites G), ||v|| (below 2^-50: of v * 2^100, scaled)
    pass 5  new = h + a * (v / max(||v||, FLT_MIN) (or v) + s): all finite as stored? (s: the
            row's field's static vector with ``HAS_VECTORS``, else 0)
    pass 6  write new when the row may change, else NaN scores

fp32 accumulation whatever the storage dtype; rows with ``rows`` False, ``a == 0``, or a
non-finite input or result (checked after rounding to the storage dtype) are left
bit-identical; scores are written for every row, NaN for a row skipped because of non-finite
values (non-finite input, or a row that would move but whose new row is not finite).

Field table (``svf::field_table_update_``): the parameters are F fields stacked (``A, B [F, C,
m, d]``, ``c, w2 [F, C, m]``, ``b2 [F, C]``) and ``field_ids [N]`` (int64 or int32) picks each
row's field: the program loads its row's id on the device and moves its parameter pointers to
that field (``vectors [F, d]`` too, each field's static vector, when given). An id outside ``[0, F)`` writes NaN scores and returns before any other work (the
row is left bit-identical). Without ids (``HAS_IDS`` false, a compile-time constant) the kernel
is the one-field kernel unchanged. Triton has
no CPU backend: on CPU tensors this runs only under ``TRITON_INTERPRET=1`` (set before triton is
imported), hundreds of times slower, which is how the tests exercise it.
"""

from __future__ import annotations

import os

import torch

from ..dispatch import Backend, register_backend
from .compiled import kernel_entry

try:
    import triton
    import triton.language as tl

    _TRITON_ERROR = ""
except Exception as exc:  # noqa: BLE001 - any failure to import triton means "unavailable"
    triton = None
    tl = None
    _TRITON_ERROR = f"{type(exc).__name__}: {exc}"

_FLT_MAX = 3.4028234663852886e38
_FLT_MIN = 1.1754943508222875e-38


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:
    _K_FLT_MAX = tl.constexpr(_FLT_MAX)
    _K_FLT_MIN = tl.constexpr(_FLT_MIN)

    @triton.jit
    def _tanh(x):
        # tanh(x) = 2 sigmoid(2x) - 1; exp overflow gives the right limits (+-1)
        return 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0

    @triton.jit
    def _gelu(z):
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        return 0.5 * z * (1.0 + t)

    @triton.jit
    def _gelu_grad(z):
        # the sigmoid form of the reference's gelu_tanh_grad (no cancellation in 1 - tanh^2)
        y2 = 2.0 * 0.7978845608028654 * (z + 0.044715 * z * z * z)
        s = tl.sigmoid(y2)
        q = tl.sigmoid(-y2)
        return s + 2.0 * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z) * z * s * q

    @triton.jit
    def _field_update_kernel(
        h_ptr, stride_h, A_ptr, B_ptr, c_ptr, w2_ptr, b2_ptr, alpha_ptr, target_ptr, rows_ptr,
        ids_ptr, vec_ptr, scores_ptr, z_ptr, g_ptr, d, m, C, F, tau, eps, band,
        HAS_ROWS: tl.constexpr, HAS_IDS: tl.constexpr, HAS_TARGET: tl.constexpr,
        HAS_VECTORS: tl.constexpr, NORMALIZE: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_U: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        h_row = h_ptr + row * stride_h
        Cm = C * m
        z_row = z_ptr + row * Cm
        g_row = g_ptr + row * d
        offs_d = tl.arange(0, BLOCK_D)
        offs_u = tl.arange(0, BLOCK_U)
        offs_c = tl.arange(0, BLOCK_C)

        if HAS_IDS:  # field table: this row's field, or no steering at all
            fid = tl.load(ids_ptr + row).to(tl.int64)
            if (fid < 0) | (fid >= F):
                nan = tl.full([BLOCK_C], float("nan"), tl.float32)
                tl.store(scores_ptr + row * C + offs_c, nan, mask=offs_c < C)
                return
            A_ptr += fid * Cm * d
            B_ptr += fid * Cm * d
            c_ptr += fid * Cm
            w2_ptr += fid * Cm
            b2_ptr += fid * C
            vec_ptr += fid * d

        # pass 1: rms
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        fin = tl.zeros([BLOCK_D], dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            dd = d0 + offs_d
            x = tl.load(h_row + dd, mask=dd < d, other=0.0).to(tl.float32)
            acc += x * x
            fin += x * 0.0
        ss = tl.sum(acc, axis=0)
        finite_in = tl.sum(fin, axis=0) == 0.0  # x * 0 is NaN for a non-finite x
        rms = tl.sqrt(ss / d + eps)

        # pass 2: z, scores, softmin weights
        svec = tl.zeros([BLOCK_C], dtype=tl.float32)
        for i in range(C):
            sacc = tl.zeros([BLOCK_U], dtype=tl.float32)
            for u0 in range(0, m, BLOCK_U):
                uu = u0 + offs_u
                umask = uu < m
                ui = (i * m + uu).to(tl.int64)
                zacc = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
                for d0 in range(0, d, BLOCK_D):
                    dd = d0 + offs_d
                    dmask = dd < d
                    x = tl.load(h_row + dd, mask=dmask, other=0.0).to(tl.float32)
                    a = tl.load(
                        A_ptr + ui[:, None] * d + dd[None, :],
                        mask=umask[:, None] & dmask[None, :], other=0.0,
                    )
                    zacc += a * x[None, :]
                z = tl.sum(zacc, axis=1) / rms + tl.load(c_ptr + ui, mask=umask, other=0.0)
                tl.store(z_row + ui, z, mask=umask)
                w2 = tl.load(w2_ptr + ui, mask=umask, other=0.0)
                sacc += tl.where(umask, w2 * _gelu(z), 0.0)
            s = tl.sum(sacc, axis=0) + tl.load(b2_ptr + i)
            svec = tl.where(offs_c == i, s, svec)
        cmask = offs_c < C
        # a non-finite input: the row is skipped and its scores say so
        tl.store(scores_ptr + row * C + offs_c, tl.where(finite_in, svec, float("nan")),
                 mask=cmask)
        t = tl.where(cmask, -svec / tau, -_K_FLT_MAX)
        e = tl.where(cmask, tl.exp(t - tl.max(t, axis=0)), 0.0)
        wts = e / tl.sum(e, axis=0)

        alpha = tl.load(alpha_ptr + row).to(tl.float32)
        if HAS_TARGET:  # the row's strength: alpha * gate (NaN target: alpha itself)
            tgt = tl.load(target_ptr + row).to(tl.float32)
            smin = tl.min(tl.where(cmask, svec, float("inf")), axis=0)
            tot = tl.sum(tl.where(cmask, tl.exp(-(svec - smin) / tau), 0.0), axis=0)
            smix = smin - tau * tl.log(tot)
            sgn = tl.where(alpha > 0.0, 1.0, tl.where(alpha < 0.0, -1.0, alpha))
            t = sgn * (tgt - smix) / band
            gate = tl.where(t < 0.0, 0.0, tl.where(t > 1.0, 1.0, t))  # NaN stays NaN
            gated = tl.where(gate == 0.0, 0.0, alpha * gate)
            alpha = tl.where((tgt != tgt) | (alpha == 0.0), alpha, gated)  # noqa: PLR0124 - NaN test
        # a non-finite sum of squares: non-finite input (or so large that the update is 0)
        active = (alpha != 0.0) & (ss <= _K_FLT_MAX)
        if HAS_ROWS:
            active = active & (tl.load(rows_ptr + row) != 0)
        if active:
            tl.debug_barrier()  # z was stored with another layout
            # pass 3: G = A_flat^T coef, dot = hn . G
            dacc = tl.zeros([BLOCK_D], dtype=tl.float32)
            for d0 in range(0, d, BLOCK_D):
                dd = d0 + offs_d
                dmask = dd < d
                gacc = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
                for u0 in range(0, Cm, BLOCK_U):
                    uu = u0 + offs_u
                    umask = uu < Cm
                    ui = uu.to(tl.int64)
                    z = tl.load(z_row + ui, mask=umask, other=0.0)
                    w2 = tl.load(w2_ptr + ui, mask=umask, other=0.0)
                    wi = tl.sum(tl.where((uu // m)[:, None] == offs_c[None, :], wts[None, :], 0.0),
                                axis=1)
                    coef = tl.where(umask, wi * _gelu_grad(z) * w2, 0.0)
                    b = tl.load(
                        B_ptr + ui[:, None] * d + dd[None, :],
                        mask=umask[:, None] & dmask[None, :], other=0.0,
                    )
                    gacc += coef[:, None] * b
                g = tl.sum(gacc, axis=0)
                tl.store(g_row + dd, g, mask=dmask)
                x = tl.load(h_row + dd, mask=dmask, other=0.0).to(tl.float32)
                dacc += (x / rms) * g
            dot = tl.sum(dacc, axis=0)
            tl.debug_barrier()
            # pass 4: v (overwrites G), ||v||
            vacc = tl.zeros([BLOCK_D], dtype=tl.float32)
            sacc = tl.zeros([BLOCK_D], dtype=tl.float32)  # (v * 2^100)^2: for a tiny ||v||
            for d0 in range(0, d, BLOCK_D):
                dd = d0 + offs_d
                dmask = dd < d
                x = tl.load(h_row + dd, mask=dmask, other=0.0).to(tl.float32)
                g = tl.load(g_row + dd, mask=dmask, other=0.0)
                v = (g - (x / rms) * dot / d) / rms
                tl.store(g_row + dd, v, mask=dmask)
                vacc += v * v
                vs = v * 1.2676506002282294e30  # 2^100, exact
                sacc += vs * vs
            nrm = tl.sqrt(tl.sum(vacc, axis=0))
            # below 2^-50, sum(v*v) may have underflowed: the norm of v * 2^100, scaled back
            nrm = tl.where(nrm < 8.881784197001252e-16,
                           tl.sqrt(tl.sum(sacc, axis=0)) * 7.888609052210118e-31, nrm)
            den = tl.maximum(nrm, _K_FLT_MIN)
            tl.debug_barrier()
            # pass 5: is the whole updated row finite?
            bad = tl.zeros([BLOCK_D], dtype=tl.int32)
            for d0 in range(0, d, BLOCK_D):
                dd = d0 + offs_d
                dmask = dd < d
                x = tl.load(h_row + dd, mask=dmask, other=0.0).to(tl.float32)
                v = tl.load(g_row + dd, mask=dmask, other=0.0)
                if NORMALIZE:
                    v = v / den
                if HAS_VECTORS:
                    v += tl.load(vec_ptr + dd, mask=dmask, other=0.0)
                new = (x + alpha * v).to(h_ptr.dtype.element_ty).to(tl.float32)  # as stored
                bad += tl.where(dmask & ~(tl.abs(new) <= _K_FLT_MAX), 1, 0)
            if tl.sum(bad, axis=0) != 0:
                # the update would not be finite: the row is skipped and its scores say so
                nan = tl.full([BLOCK_C], float("nan"), tl.float32)
                tl.store(scores_ptr + row * C + offs_c, nan, mask=cmask)
            else:
                # pass 6: write
                for d0 in range(0, d, BLOCK_D):
                    dd = d0 + offs_d
                    dmask = dd < d
                    x = tl.load(h_row + dd, mask=dmask, other=0.0).to(tl.float32)
                    v = tl.load(g_row + dd, mask=dmask, other=0.0)
                    if NORMALIZE:
                        v = v / den
                    if HAS_VECTORS:
                        v += tl.load(vec_ptr + dd, mask=dmask, other=0.0)
                    new = x + alpha * v
                    tl.store(h_row + dd, new.to(h_ptr.dtype.element_ty), mask=dmask)


def _why_unavailable() -> str:
    if triton is None:
        return f"triton not installed ({_TRITON_ERROR})"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (Triton needs a GPU; CPU only with TRITON_INTERPRET=1)"
    return ""


def available() -> bool:
    return _why_unavailable() == ""


def _launch(
    hidden: torch.Tensor,
    A: torch.Tensor,
    c: torch.Tensor,
    w2: torch.Tensor,
    b2: torch.Tensor,
    alpha: torch.Tensor,
    tau: float,
    normalize: bool,
    eps: float,
    rows: torch.Tensor | None,
    field_ids: torch.Tensor | None = None,
    B: torch.Tensor | None = None,
    target: torch.Tensor | None = None,
    band: float = 1.0,
    vectors: torch.Tensor | None = None,
) -> torch.Tensor:
    """One launch over all rows. CUDA tensors; CPU tensors too when ``TRITON_INTERPRET=1``
    was set before triton's import.

    With ``field_ids`` ([N] int64 or int32) the parameters are a table: ``A [F, C, m, d]``,
    ``c, w2 [F, C, m]``, ``b2 [F, C]``. The id values are read only by the kernel (no host
    synchronisation: usable under CUDA graphs and torch.compile). ``B`` (A's shape): the
    direction's matrix (None: A). ``target`` ([N], NaN: none for the row) and ``band``: the
    row's strength is alpha times its gate, computed in the kernel. ``vectors`` ([F, d], a
    table only): each field's static vector, added to the unit direction."""
    if hidden.device.type != "cuda" and not _interpreting():
        raise RuntimeError(
            f"the triton backend needs CUDA tensors (got {hidden.device.type}); "
            "CPU tensors run only under TRITON_INTERPRET=1"
        )
    if hidden.dim() != 2 or (hidden.shape[1] > 1 and hidden.stride(1) != 1):
        raise ValueError("hidden must be [N, d] with contiguous rows")
    n, d = hidden.shape
    table = field_ids is not None
    if table:
        if A.dim() != 4 or field_ids.shape != (n,):
            raise ValueError("a field table needs A [F, C, m, d] and field_ids [N]")
        F, C, m = int(A.shape[0]), int(A.shape[1]), int(A.shape[2])
    else:
        F, C, m = 1, int(A.shape[0]), int(A.shape[1])
    dev = hidden.device
    f32 = torch.float32
    A32 = A.to(device=dev, dtype=f32).contiguous()
    B32 = A32 if B is None else B.to(device=dev, dtype=f32).contiguous()
    if B is not None and B32.shape != A32.shape:
        raise ValueError("B must have the shape of A")
    c32 = c.to(device=dev, dtype=f32).contiguous()
    w232 = w2.to(device=dev, dtype=f32).contiguous()
    b232 = b2.to(device=dev, dtype=f32).contiguous()
    alpha32 = alpha.to(device=dev, dtype=f32).reshape(-1).contiguous()
    if target is not None:
        target32 = target.to(device=dev, dtype=f32).reshape(-1).contiguous()
        if target32.shape != (n,) or not band > 0:
            raise ValueError("target must be [N] and band > 0")
    else:
        target32 = alpha32  # not read (HAS_TARGET is False)
    if vectors is not None:
        if not table or vectors.shape != (F, d):
            raise ValueError("vectors must be [F, d] and come with field_ids")
        vec32 = vectors.to(device=dev, dtype=f32).contiguous()
    else:
        vec32 = alpha32  # not read (HAS_VECTORS is False)
    scores = torch.empty((n, C), dtype=f32, device=dev)
    if n == 0:
        return scores
    z_ws = torch.empty((n * C * m,), dtype=f32, device=dev)
    g_ws = torch.empty((n * d,), dtype=f32, device=dev)
    rows_u8 = rows.to(torch.uint8).contiguous() if rows is not None else alpha32
    if table:
        ids = field_ids.to(device=dev)
        if ids.dtype not in (torch.int64, torch.int32):
            ids = ids.long()
        ids = ids.contiguous()
    else:
        ids = alpha32  # not read (HAS_IDS is False)
    block_d = min(128, max(16, triton.next_power_of_2(d)))
    block_u = min(32, max(16, triton.next_power_of_2(max(m, C * m))))
    block_c = max(2, triton.next_power_of_2(C))
    _field_update_kernel[(n,)](
        hidden, hidden.stride(0), A32, B32, c32, w232, b232, alpha32, target32, rows_u8, ids,
        vec32, scores, z_ws, g_ws, d, m, C, F, float(tau), float(eps), float(band),
        HAS_ROWS=rows is not None, HAS_IDS=table, HAS_TARGET=target is not None,
        HAS_VECTORS=vectors is not None, NORMALIZE=bool(normalize), BLOCK_D=block_d, BLOCK_U=block_u, BLOCK_C=block_c,
    )
    return scores


field_update_triton = kernel_entry(
    "triton", lambda: _launch if triton is not None else None, _why_unavailable
)


def register() -> None:
    register_backend(
        Backend("triton", ("cuda",), field_update_triton, available,
                why_unavailable=_why_unavailable)
    )


register()
