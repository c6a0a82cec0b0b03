"""The Triton kernel against the reference, on CPU under ``TRITON_INTERPRET=1``.

The interpreter flag takes effect only if it is set before triton is imported (``triton.jit``
decides at decoration time), and another test of the session may already have imported triton.
So the numerical checks run in a fresh interpreter: this file, run as a script (which sets
``TRITON_INTERPRET=1`` first), executes the ``check_*`` functions it is given and writes each
one's result. Under pytest one module fixture runs the selected checks in one such process and
``test_triton_kernel_interpreter[check_...]`` reports each check on its own; a check with no
result (the process died or ran over its deadline) fails. The pytest process itself never sets
the flag, so a GPU session's other tests keep compiled Triton.
Triton is in the ``dev`` extra: a missing triton fails these tests rather than skipping them.
"""

from __future__ import annotations

import json
import math
import os

if __name__ == "__main__":  # the checks' own process: before any triton import
    os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from svf_kernels.ops.reference import (
    field_table_update_reference,
    field_update_reference,
    soft_min_score,
)

# Absolute error floors per storage dtype (hidden ~ N(0, 1)): the kernel may also be up to 2x
# the torch reference's own error in that dtype, whichever is larger.
HIDDEN_FLOOR = {torch.float32: 2e-6, torch.bfloat16: 2e-2, torch.float16: 3e-3}
SCORE_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def _field(C: int, m: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(C, m, d, generator=g) / d**0.5
    c = 0.1 * torch.randn(C, m, generator=g)
    w2 = torch.randn(C, m, generator=g) / m**0.5
    b2 = torch.randn(C, generator=g)
    return A, c, w2, b2


def _run_triton(hidden, A, c, w2, b2, alpha, **kw):
    from svf_kernels.ops.backends.triton_backend import field_update_triton

    return field_update_triton(hidden, A, c, w2, b2, alpha, **kw)


def _compare(hidden, A, c, w2, b2, alpha, *, normalize=True, tau=1.0, rows=None, out=None):
    """Run kernel and torch reference on copies of ``hidden``; return (errors, results)."""
    dt = hidden.dtype
    h64 = hidden.double()
    s64 = field_update_reference(h64, A.double(), c.double(), w2.double(), b2.double(),
                                 alpha.double(), tau, normalize, rows=rows)
    h_ref = hidden.clone()
    s_ref = field_update_reference(h_ref, A, c, w2, b2, alpha, tau, normalize, rows=rows)
    h_k = hidden.clone() if out is None else out
    s_k = _run_triton(h_k, A, c, w2, b2, alpha, tau=tau, normalize=normalize, rows=rows)
    assert s_k.dtype == torch.float32 and s_k.shape == s_ref.shape
    assert h_k.dtype == dt

    def err(x, y):
        return (x.double() - y).abs().nan_to_num(0.0).max().item() if x.numel() else 0.0

    e = {
        "h_kernel": err(h_k, h64), "h_ref": err(h_ref, h64),
        "s_kernel": err(s_k, s64), "s_ref": err(s_ref, s64),
    }
    return e, (h_k, s_k, h_ref, s_ref, h64)


def _assert_close(e, dt, label):
    hk, hr = e["h_kernel"], e["h_ref"]
    sk, sr = e["s_kernel"], e["s_ref"]
    assert hk <= max(2 * hr, HIDDEN_FLOOR[dt]), f"{label}: hidden error {hk:.3g} (ref {hr:.3g})"
    assert sk <= max(2 * sr, SCORE_FLOOR[dt]), f"{label}: score error {sk:.3g} (ref {sr:.3g})"


DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_shapes_dtypes_normalize():
    """d=77, m=12; C in {1, 3}; N in {1, 7}; three dtypes; normalize on and off."""
    for C in (1, 3):
        A, c, w2, b2 = _field(C, 12, 77, seed=C)
        for N in (1, 7):
            for dt in DTYPES:
                for normalize in (True, False):
                    g = torch.Generator().manual_seed(100 * N + C)
                    hidden = torch.randn(N, 77, generator=g).to(dt)
                    alpha = torch.linspace(0.3, 1.5, N)
                    e, (h_k, *_rest) = _compare(hidden, A, c, w2, b2, alpha, normalize=normalize)
                    label = f"C={C} N={N} {dt} normalize={normalize}"
                    _assert_close(e, dt, label)
                    assert (h_k != hidden).any(), f"{label}: nothing was updated"


def check_params_in_hidden_dtype_and_tau():
    """Parameters stored in the hidden dtype; tau != 1 (softmin sharper)."""
    A, c, w2, b2 = _field(3, 12, 77, seed=7)
    for dt in (torch.bfloat16, torch.float16):
        hidden = torch.randn(7, 77, generator=torch.Generator().manual_seed(8)).to(dt)
        p = [t.to(dt) for t in (A, c, w2, b2)]
        alpha = torch.full((7,), 0.8)
        e, _ = _compare(hidden, *p, alpha, tau=0.3)
        _assert_close(e, dt, f"{dt} params, tau=0.3")


def check_larger_shape():
    """d=769, m=96, C=3, N=7: several BLOCK_D / BLOCK_U tiles with ragged edges."""
    A, c, w2, b2 = _field(3, 96, 769, seed=11)
    hidden = torch.randn(7, 769, generator=torch.Generator().manual_seed(12))
    alpha = torch.full((7,), 0.5)
    e, _ = _compare(hidden, A, c, w2, b2, alpha)
    _assert_close(e, torch.float32, "d=769 m=96 C=3")


def check_noncontiguous_rows():
    """hidden = x[:, -1] of a [B, T, d] tensor: only those rows change, in place."""
    A, c, w2, b2 = _field(3, 12, 77, seed=3)
    for dt in DTYPES:
        x = torch.randn(4, 5, 77, generator=torch.Generator().manual_seed(4)).to(dt)
        x0 = x.clone()
        view = x[:, -1]
        assert not view.is_contiguous()
        alpha = torch.full((4,), 1.0)
        e, _ = _compare(view.clone(), A, c, w2, b2, alpha, out=view)
        _assert_close(e, dt, f"non-contiguous {dt}")
        assert torch.equal(x[:, :-1], x0[:, :-1]), "other positions changed"
        assert (x[:, -1] != x0[:, -1]).any()


def check_mask_zero_alpha_nonfinite():
    """rows False / alpha 0 / non-finite rows bit-identical; the other rows updated."""
    A, c, w2, b2 = _field(3, 12, 77, seed=5)
    for dt in DTYPES:
        for normalize in (True, False):
            hidden = torch.randn(7, 77, generator=torch.Generator().manual_seed(6)).to(dt)
            hidden[4, 3] = float("nan")
            hidden[5, 10] = float("inf")
            alpha = torch.tensor([0.7, 0.0, 0.7, 0.7, 0.7, 0.7, -0.9])
            rows = torch.tensor([True, True, False, True, True, True, True])
            before = hidden.clone()
            e, (h_k, s_k, h_ref, s_ref, _) = _compare(
                hidden, A, c, w2, b2, alpha, rows=rows, normalize=normalize
            )
            label = f"mask {dt} normalize={normalize}"
            bits = torch.int32 if dt == torch.float32 else torch.int16
            for r in (1, 2, 4, 5):  # alpha 0, masked, nan, inf: bit-identical (NaN payload too)
                assert torch.equal(h_k[r].view(bits), before[r].view(bits)), f"{label}: row {r}"
            for r in (0, 3, 6):
                assert (h_k[r] != before[r]).any(), f"{label}: row {r} not updated"
            ok = [0, 1, 2, 3, 6]
            hk = (h_k[ok].double() - h_ref[ok].double()).abs().max().item()
            assert hk <= max(2 * e["h_ref"], HIDDEN_FLOOR[dt]), f"{label}: {hk:.3g}"
            fin = torch.isfinite(s_ref)
            assert torch.equal(fin, torch.isfinite(s_k)), f"{label}: score finiteness differs"
            sk = (s_k[fin].double() - s_ref[fin].double()).abs().max().item()
            assert sk <= max(2 * e["s_ref"], 1e-5), f"{label}: scores {sk:.3g}"


def check_overflow_row_left_alone():
    """A row whose update overflows float32 is left unchanged (like the reference)."""
    A, c, w2, b2 = _field(1, 12, 77, seed=9)
    hidden = 1e-4 * torch.randn(2, 77, generator=torch.Generator().manual_seed(10))
    alpha = torch.tensor([1e37, 0.5])
    h_k = hidden.clone()
    s_k = _run_triton(h_k, A, c, w2, b2, alpha, normalize=False)
    h_ref = hidden.clone()
    field_update_reference(h_ref, A, c, w2, b2, alpha, normalize=False)
    assert torch.equal(h_ref[0], hidden[0]), "test premise: the reference leaves row 0 alone"
    assert torch.equal(h_k[0], hidden[0]), "overflowing row changed"
    assert bool(s_k[0].isnan().all()) and bool(s_k[1].isfinite().all()), "scores: skipped row not NaN"
    assert (h_k[1] != hidden[1]).any()
    assert (h_k[1] - h_ref[1]).abs().max().item() <= 1e-5 * h_ref[1].abs().max().item()


# ---------------------------------------------------------------- field table (F fields, ids)


def _table(F: int, C: int, m: int, d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(F, C, m, d, generator=g) / d**0.5
    c = 0.1 * torch.randn(F, C, m, generator=g)
    w2 = torch.randn(F, C, m, generator=g) / m**0.5
    b2 = torch.randn(F, C, generator=g)
    return A, c, w2, b2


def _ids(F: int, N: int, dtype=torch.int64) -> torch.Tensor:
    """Every field, -1, and out-of-range ids (F, F + 2, -5) among N rows."""
    pool = [*range(F), -1, F, *range(F), F + 2, -5]
    return torch.tensor([pool[i % len(pool)] for i in range(N)], dtype=dtype)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int16)


def _compare_table(hidden, A, c, w2, b2, ids, alpha, *, normalize=True, tau=1.0, out=None,
                   B=None, target=None, band=1.0):
    """Kernel vs float64 table reference and the reference in the storage dtype.

    Checks the contract's exact parts (rows with an id outside [0, F): bit-identical, NaN
    scores; NaN scores nowhere else unless the reference has them) and returns the errors on
    the other rows (shape of ``_compare``'s) plus the results.
    """
    dt = hidden.dtype
    F = A.shape[0]
    h64 = hidden.double()
    kw64 = {"B": None if B is None else B.double(),
            "target": None if target is None else target.double(), "band": band}
    s64 = field_table_update_reference(h64, A.double(), c.double(), w2.double(), b2.double(),
                                       ids, alpha.double(), tau, normalize, **kw64)
    h_ref = hidden.clone()
    kw = {"B": B, "target": target, "band": band}
    s_ref = field_table_update_reference(h_ref, A, c, w2, b2, ids, alpha, tau, normalize, **kw)
    h_k = hidden.clone() if out is None else out
    s_k = _run_triton(h_k, A, c, w2, b2, alpha, tau=tau, normalize=normalize, field_ids=ids, **kw)
    assert s_k.dtype == torch.float32 and s_k.shape == s_ref.shape == (hidden.shape[0], A.shape[1])
    assert h_k.dtype == dt
    bad = (ids < 0) | (ids >= F)
    assert torch.equal(_bits(h_k[bad]), _bits(hidden[bad])), "a row with no field changed"
    assert bool(s_k[bad].isnan().all()), "a row with no field has non-NaN scores"
    assert torch.equal(s_k.isnan(), s64.isnan()), "NaN scores differ from the reference"
    ok = ~bad

    def err(x, y):
        x, y = x[ok], y[ok]
        fin = torch.isfinite(y)  # a padded concept scores +inf in both
        assert torch.equal(fin, torch.isfinite(x.double())), "non-finite values differ"
        return (x.double()[fin] - y[fin]).abs().max().item() if fin.any() else 0.0

    e = {
        "h_kernel": err(h_k, h64), "h_ref": err(h_ref, h64),
        "s_kernel": err(s_k, s64), "s_ref": err(s_ref, s64),
    }
    return e, (h_k, s_k, h_ref, s_ref, h64)


def check_table_vectors():
    """Static vectors (vectors [F, d]): a field with a vector, a static entry (zero scorer), a
    field without one; three dtypes, both normalisations, against the float64 reference."""
    from svf_kernels.ops.backends.triton_backend import field_update_triton

    A, c, w2, b2 = _table(3, 2, 12, 37, seed=71)
    A[1], c[1], w2[1], b2[1] = 0.0, 0.0, 0.0, 0.0
    g = torch.Generator().manual_seed(72)
    vectors = 0.3 * torch.randn(3, 37, generator=g)
    vectors[2] = 0.0
    ids = _ids(3, 11)
    out = {}
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        for normalize in (True, False):
            hidden = torch.randn(11, 37, generator=g).to(dt)
            alpha = torch.rand(11, generator=g) - 0.3
            h64 = hidden.double()
            field_table_update_reference(h64, A.double(), c.double(), w2.double(), b2.double(),
                                         ids, alpha.double(), 1.0, normalize,
                                         vectors=vectors.double())
            h_ref = hidden.clone()
            field_table_update_reference(h_ref, A, c, w2, b2, ids, alpha, 1.0, normalize,
                                         vectors=vectors)
            h_k = hidden.clone()
            field_update_triton(h_k, A, c, w2, b2, alpha, normalize=normalize, field_ids=ids,
                                vectors=vectors)
            bad = (ids < 0) | (ids >= 3)
            assert torch.equal(_bits(h_k[bad]), _bits(hidden[bad]))
            static = ids == 1
            assert (h_k[static] != hidden[static]).any(-1).all(), "a static row did not move"
            e = {"h_kernel": (h_k.double() - h64).abs().max().item(),
                 "h_ref": (h_ref.double() - h64).abs().max().item(), "s_kernel": 0.0, "s_ref": 0.0}
            _assert_close(e, dt, f"table vectors {dt} normalize={normalize}")
            out[f"{dt} normalize={normalize}"] = e["h_kernel"]
    return out


def check_table_shapes_dtypes_ids():
    """F in {1, 3}, C in {1, 2}, d=37; three dtypes; int64 and int32 ids with -1 and
    out-of-range values; every steered row updated, every other row bit-identical."""
    for F in (1, 3):
        for C in (1, 2):
            A, c, w2, b2 = _table(F, C, 12, 37, seed=10 * F + C)
            for dt in DTYPES:
                for id_dtype in (torch.int64, torch.int32):
                    N = 9
                    hidden = torch.randn(N, 37, generator=torch.Generator().manual_seed(F + C)).to(dt)
                    ids = _ids(F, N, id_dtype)
                    alpha = torch.linspace(0.4, 1.4, N)
                    e, (h_k, *_rest) = _compare_table(hidden, A, c, w2, b2, ids, alpha)
                    label = f"table F={F} C={C} {dt} ids {id_dtype}"
                    _assert_close(e, dt, label)
                    steered = (ids >= 0) & (ids < F)
                    assert bool((h_k[steered] != hidden[steered]).any(-1).all()), (
                        f"{label}: a steered row was not updated"
                    )


def check_table_matches_one_field_kernel():
    """Row r of the table op == the one-field kernel with field ids[r], bit for bit (scores
    too); normalize off, tau != 1, parameters in the hidden dtype, d and C*m over several tiles."""
    for dt, d, m, normalize in ((torch.float32, 131, 40, False), (torch.bfloat16, 37, 12, True)):
        A, c, w2, b2 = (t.to(dt) for t in _table(3, 2, m, d, seed=21))
        N = 8
        hidden = torch.randn(N, d, generator=torch.Generator().manual_seed(22)).to(dt)
        ids = _ids(3, N, torch.int32)
        alpha = torch.full((N,), 0.7)
        e, (h_k, s_k, *_rest) = _compare_table(hidden, A, c, w2, b2, ids, alpha,
                                               normalize=normalize, tau=0.5)
        _assert_close(e, dt, f"table vs reference {dt} d={d}")
        for f in range(3):
            h_one = hidden.clone()
            s_one = _run_triton(h_one, A[f], c[f], w2[f], b2[f], alpha, tau=0.5,
                                normalize=normalize)
            mine = ids.long() == f
            assert torch.equal(_bits(h_k[mine]), _bits(h_one[mine])), f"{dt} field {f}: hidden"
            assert torch.equal(s_k[mine], s_one[mine]), f"{dt} field {f}: scores"


def check_table_noncontiguous_rows():
    """hidden = x[:, -1] of a [B, T, d] tensor: only the steered rows of the view change."""
    A, c, w2, b2 = _table(3, 2, 12, 37, seed=31)
    for dt in DTYPES:
        x = torch.randn(6, 3, 37, generator=torch.Generator().manual_seed(32)).to(dt)
        x0 = x.clone()
        view = x[:, -1]
        assert not view.is_contiguous()
        ids = torch.tensor([1, -1, 0, 2, 3, 1])
        e, _ = _compare_table(view.clone(), A, c, w2, b2, ids, torch.full((6,), 1.0), out=view)
        _assert_close(e, dt, f"table non-contiguous {dt}")
        assert torch.equal(_bits(x[:, :-1]), _bits(x0[:, :-1])), "other positions changed"
        steered = torch.tensor([True, False, True, True, False, True])
        assert bool((x[steered, -1] != x0[steered, -1]).any(-1).all())


def check_table_zero_alpha_nonfinite_all_unsteered():
    """alpha 0 / NaN / inf rows with a valid field stay bit-identical (scores as the
    reference's); ids all -1: nothing changes and every score is NaN."""
    A, c, w2, b2 = _table(3, 2, 12, 37, seed=41)
    for dt in DTYPES:
        for normalize in (True, False):
            hidden = torch.randn(7, 37, generator=torch.Generator().manual_seed(42)).to(dt)
            hidden[3, 5] = float("nan")
            hidden[4, 9] = float("-inf")
            before = hidden.clone()
            ids = torch.tensor([0, 1, 2, 1, 0, -1, 2], dtype=torch.int32)
            alpha = torch.tensor([0.8, 0.0, 0.8, 0.8, 0.8, 0.8, -0.6])
            e, (h_k, s_k, h_ref, s_ref, _) = _compare_table(hidden, A, c, w2, b2, ids, alpha,
                                                            normalize=normalize)
            label = f"table mask {dt} normalize={normalize}"
            for r in (1, 3, 4, 5):  # alpha 0, nan, inf, no field: bit-identical (NaN payload too)
                assert torch.equal(_bits(h_k[r]), _bits(before[r])), f"{label}: row {r}"
            for r in (0, 2, 6):
                assert (h_k[r] != before[r]).any(), f"{label}: row {r} not updated"
            fin = [0, 1, 2, 6]
            hk = (h_k[fin].double() - h_ref[fin].double()).abs().max().item()
            assert hk <= max(2 * e["h_ref"], HIDDEN_FLOOR[dt]), f"{label}: {hk:.3g}"
            sk = (s_k[fin].double() - s_ref[fin].double()).abs().max().item()
            assert sk <= max(2 * e["s_ref"], 1e-5), f"{label}: scores {sk:.3g}"
        none = torch.full((7,), -1)
        h_k = before.clone()
        s_k = _run_triton(h_k, A, c, w2, b2, torch.full((7,), 0.8), field_ids=none)
        assert torch.equal(_bits(h_k), _bits(before)) and bool(s_k.isnan().all()), f"all -1 {dt}"


def _overflow_alpha_and_scale(dt, normalize):
    """(alpha, row scale) making a finite row's update overflow its storage dtype."""
    if dt == torch.float16:
        return 1e7, 1.0  # finite in fp32, not as fp16
    return (float("inf"), 1.0) if normalize else (3e38, 1e-3)


def _dirty_rows(clean: torch.Tensor, scale: float) -> torch.Tensor:
    """``clean`` with NaN, +Inf and -Inf in rows 1-3 and row 4 scaled so its update overflows."""
    dirty = clean.clone()
    dirty[1, 3] = float("nan")
    dirty[2, 0] = float("inf")
    dirty[3, 36] = float("-inf")
    dirty[4] = (clean[4].float() * scale).to(clean.dtype)
    return dirty


def check_nonfinite_contract_scores_nan():
    """NaN / +Inf / -Inf rows and an overflowing update (fp16: only as stored): bit-identical
    with NaN scores (exactly the rows the reference makes NaN); masked / alpha-0 rows keep real
    scores; the other rows equal a call with the bad rows clean; nothing non-finite written."""
    A, c, w2, b2 = _field(2, 12, 37, seed=61)
    for dt in DTYPES:
        for normalize in (True, False):
            label = f"nonfinite {dt} normalize={normalize}"
            clean = torch.randn(8, 37, generator=torch.Generator().manual_seed(62)).to(dt)
            big, scale = _overflow_alpha_and_scale(dt, normalize)
            dirty = _dirty_rows(clean, scale)
            alpha_clean = torch.tensor([0.7, 0.7, 0.7, 0.7, 0.7, 0.0, 0.7, -0.6])
            alpha = alpha_clean.clone()
            alpha[4] = big
            alpha[6] = float("inf")
            rows = torch.tensor([True, True, True, True, True, True, False, True])
            h_c = clean.clone()
            s_c = _run_triton(h_c, A, c, w2, b2, alpha_clean, rows=rows, normalize=normalize)
            h_k = dirty.clone()
            s_k = _run_triton(h_k, A, c, w2, b2, alpha, rows=rows, normalize=normalize)
            h_ref = dirty.clone()
            s_ref = field_update_reference(h_ref, A, c, w2, b2, alpha, 1.0, normalize, rows=rows)
            bad = torch.tensor([False, True, True, True, True, False, False, False])
            assert torch.equal(s_ref.isnan().all(1), bad), f"{label}: reference premise"
            assert torch.equal(s_k.isnan().all(1), bad), f"{label}: {s_k.isnan().all(1)}"
            assert torch.equal(s_k.isnan().any(1), bad), label
            assert torch.equal(_bits(h_k[bad]), _bits(dirty[bad])), f"{label}: bad rows changed"
            assert torch.equal(_bits(h_k[~bad]), _bits(h_c[~bad])), f"{label}: other rows differ"
            assert torch.equal(s_k[~bad], s_c[~bad]), f"{label}: other scores differ"
            assert bool(torch.isfinite(h_k[[0, 4, 5, 6, 7]]).all()), f"{label}: non-finite written"
            assert torch.equal(_bits(h_k[[5, 6]]), _bits(dirty[[5, 6]])), label


def check_zero_and_tiny_gradients():
    """A = 0 (direction 0: unchanged in value, finite scores) and A * 1e-30 (sum(v*v)
    underflows fp32; still a unit step)
    with a NaN row mixed in; fields in one table call too."""
    A, c, w2, b2 = _field(2, 12, 37, seed=63)
    hidden = torch.randn(3, 37, generator=torch.Generator().manual_seed(64))
    hidden[0, 0] = -0.0
    hidden[2, 4] = float("nan")
    h_k = hidden.clone()
    s_k = _run_triton(h_k, A * 0, c, w2, b2, torch.full((3,), 0.5))
    assert torch.equal(h_k[:2], hidden[:2]) and bool(torch.isfinite(s_k[:2]).all())
    assert bool(s_k[2].isnan().all()) and torch.equal(_bits(h_k[2]), _bits(hidden[2]))
    h_k = hidden.clone()
    s_k = _run_triton(h_k, A * 1e-30, c, w2, b2, torch.full((3,), 0.5))
    step = (h_k[:2].double() - hidden[:2].double()).norm(dim=-1)
    assert bool(torch.isfinite(s_k[:2]).all()) and bool(((step - 0.5).abs() < 1e-3).all()), step
    AT, cT, w2T, b2T = _table(3, 2, 12, 37, seed=65)
    AT[1] = 0.0
    AT[2] *= 1e-30
    ids = torch.tensor([1, 2, 1, 0])
    h4 = torch.randn(4, 37, generator=torch.Generator().manual_seed(66))
    h4[2, 1] = float("nan")
    h_k = h4.clone()
    s_k = _run_triton(h_k, AT, cT, w2T, b2T, torch.full((4,), 0.5), field_ids=ids)
    h_ref = h4.clone()
    s_ref = field_table_update_reference(h_ref, AT, cT, w2T, b2T, ids, torch.full((4,), 0.5))
    assert torch.equal(s_k.isnan().all(1), torch.tensor([False, False, True, False]))
    assert torch.equal(s_ref.isnan().all(1), s_k.isnan().all(1))
    assert torch.equal(h_k[0], h4[0]) and torch.equal(_bits(h_k[2]), _bits(h4[2]))
    assert bool(torch.isfinite(h_k[[0, 1, 3]]).all())
    assert (h_k[1] - h_ref[1]).abs().max().item() < 1e-5


def check_table_nonfinite_contract_scores_nan():
    """The table op: NaN / +-Inf / overflowing rows NaN scores and bit-identical, unsteered
    rows NaN, the others as in a call with the bad rows clean."""
    A, c, w2, b2 = _table(3, 2, 12, 37, seed=67)
    ids = torch.tensor([0, 1, 2, 0, 1, -1, 2, 5], dtype=torch.int32)
    for dt in DTYPES:
        for normalize in (True, False):
            label = f"table nonfinite {dt} normalize={normalize}"
            clean = torch.randn(8, 37, generator=torch.Generator().manual_seed(68)).to(dt)
            big, scale = _overflow_alpha_and_scale(dt, normalize)
            dirty = _dirty_rows(clean, scale)
            dirty[5, 2] = float("nan")  # unsteered
            alpha_clean = torch.full((8,), 0.7)
            alpha = alpha_clean.clone()
            alpha[4] = big
            h_c = clean.clone()
            s_c = _run_triton(h_c, A, c, w2, b2, alpha_clean, normalize=normalize, field_ids=ids)
            h_k = dirty.clone()
            s_k = _run_triton(h_k, A, c, w2, b2, alpha, normalize=normalize, field_ids=ids)
            h_ref = dirty.clone()
            s_ref = field_table_update_reference(h_ref, A, c, w2, b2, ids, alpha, 1.0, normalize)
            bad = torch.tensor([False, True, True, True, True, True, False, True])
            assert torch.equal(s_ref.isnan().all(1), bad), f"{label}: reference premise"
            assert torch.equal(s_k.isnan().all(1), bad), f"{label}: {s_k.isnan().all(1)}"
            assert torch.equal(s_k.isnan().any(1), bad), label
            assert torch.equal(_bits(h_k[bad]), _bits(dirty[bad])), f"{label}: bad rows changed"
            assert torch.equal(_bits(h_k[~bad]), _bits(h_c[~bad])), f"{label}: other rows differ"
            assert torch.equal(s_k[~bad], s_c[~bad]), f"{label}: other scores differ"
            assert bool(torch.isfinite(h_k[[0, 4, 6, 7]]).all()), f"{label}: non-finite written"


# ---------------------------------------------------------------- B and target (both ops)


def _gate_targets(s_mix, alpha, offsets, band):
    """Per-row targets whose gate is clamp(offset, 0, 1) (NaN offset: no target)."""
    off = torch.tensor(offsets, dtype=torch.float64)
    return (s_mix.double() + torch.sign(alpha.double()) * off * band).float()


def check_B_and_target():
    """B (not A) for the direction and per-row targets with partial, reached and NaN gates;
    C in {1, 3}, three dtypes: within 2x the torch reference's error of float64 truth; rows whose
    target is reached bit-identical; a NaN target or a gate of 1 equal to the untargeted call bit
    for bit; scores always the scores before the update."""
    offsets = [0.3, -0.2, math.nan, 2.0, 0.6, -1.0, 0.85]
    for C in (1, 3):
        A, c, w2, b2 = _field(C, 12, 77, seed=70 + C)
        B = _field(C, 12, 77, seed=80 + C)[0]
        for dt in DTYPES:
            label = f"B/target C={C} {dt}"
            hidden = torch.randn(7, 77, generator=torch.Generator().manual_seed(71)).to(dt)
            alpha = torch.tensor([0.8, 0.8, 0.8, -0.6, -0.6, 1.2, 1.0])
            s64 = field_update_reference(hidden.double(), A.double(), c.double(), w2.double(),
                                         b2.double(), torch.zeros(7, dtype=torch.float64), 0.7)
            band = 1.5
            target = _gate_targets(soft_min_score(s64, 0.7), alpha, offsets, band)
            kw = {"B": B, "target": target, "band": band}
            h64 = hidden.double()
            t64 = field_update_reference(h64, A.double(), c.double(), w2.double(), b2.double(),
                                         alpha.double(), 0.7, B=B.double(),
                                         target=target.double(), band=band)
            h_ref = hidden.clone()
            s_ref = field_update_reference(h_ref, A, c, w2, b2, alpha, 0.7, **kw)
            h_k = hidden.clone()
            s_k = _run_triton(h_k, A, c, w2, b2, alpha, tau=0.7, **kw)
            h_plain = hidden.clone()
            s_plain = _run_triton(h_plain, A, c, w2, b2, alpha, tau=0.7, B=B)
            h0 = hidden.clone()
            s_0 = _run_triton(h0, A, c, w2, b2, torch.zeros(7), tau=0.7, B=B)
            e_h = (h_k.double() - h64).abs().max().item()
            e_r = (h_ref.double() - h64).abs().max().item()
            assert e_h <= max(2 * e_r, HIDDEN_FLOOR[dt]), f"{label}: hidden {e_h:.3g} ({e_r:.3g})"
            e_s = (s_k.double() - t64.double()).abs().max().item()
            assert e_s <= max(2 * (s_ref.double() - t64.double()).abs().max().item(), 1e-5), label
            assert torch.equal(s_k, s_0) and torch.equal(s_plain, s_0), f"{label}: scores"
            for r in (1, 5):  # target reached
                assert torch.equal(_bits(h_k[r]), _bits(hidden[r])), f"{label}: row {r} moved"
            for r in (2, 3):  # no target / gate 1
                assert torch.equal(_bits(h_k[r]), _bits(h_plain[r])), f"{label}: row {r}"
            if dt == torch.float32:
                step = (h_k.double() - hidden.double()).norm(dim=-1)
                gate = torch.tensor([0.3, 0.0, 1.0, 1.0, 0.6, 0.0, 0.85], dtype=torch.float64)
                want = alpha.double().abs() * gate
                assert bool(((step - want).abs() < 1e-4).all()), f"{label}: {step} vs {want}"
                h_no_b = hidden.clone()
                _run_triton(h_no_b, A, c, w2, b2, alpha, tau=0.7)
                assert bool((h_no_b != h_plain).any(-1).all()), f"{label}: B made no difference"
        if C == 1:  # a target equal to the row's own score: gate 0, bit-identical
            hidden = torch.randn(3, 77, generator=torch.Generator().manual_seed(72))
            s_0 = _run_triton(hidden.clone(), A, c, w2, b2, torch.zeros(3))
            h_k = hidden.clone()
            _run_triton(h_k, A, c, w2, b2, torch.ones(3), target=s_0[:, 0].clone())
            assert torch.equal(h_k, hidden), "a target equal to the score must stop the row"


def check_table_B_and_target():
    """The table op with a B table, per-row targets and a +inf padded concept: against the
    float64 table reference; unsteered rows bit-identical with NaN scores; a row whose target is
    reached bit-identical with its real scores (the padded one +inf)."""
    F, C, m, d = 3, 2, 12, 37
    A, c, w2, b2 = _table(F, C, m, d, seed=73)
    B = _table(F, C, m, d, seed=74)[0]
    for t in (A, B, c, w2):
        t[2, 1] = 0.0
    b2[2, 1] = math.inf  # field 2: one real concept, one padded
    ids = torch.tensor([0, 1, 2, -1, 2, 0, 1, 3, 2], dtype=torch.int32)
    offsets = [0.4, 0.7, 0.25, 0.5, -0.3, math.nan, -0.5, 0.5, 3.0]
    alpha = torch.tensor([0.9, -0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, -0.5])
    band = 0.7
    for dt in DTYPES:
        label = f"table B/target {dt}"
        hidden = torch.randn(9, d, generator=torch.Generator().manual_seed(75)).to(dt)
        s64 = field_table_update_reference(hidden.double(), A.double(), c.double(), w2.double(),
                                           b2.double(), ids, torch.zeros(9, dtype=torch.float64))
        target = _gate_targets(soft_min_score(s64, 1.0), alpha, offsets, band)
        kw = {"B": B, "target": target, "band": band}
        e, (h_k, s_k, *_rest) = _compare_table(hidden, A, c, w2, b2, ids, alpha, **kw)
        _assert_close(e, dt, label)
        assert bool(torch.isposinf(s_k[[2, 4, 8], 1]).all()), f"{label}: padded score"
        for r in (4, 6):  # target reached
            assert torch.equal(_bits(h_k[r]), _bits(hidden[r])), f"{label}: row {r} moved"
        assert bool(torch.isfinite(s_k[[4, 6]]).any(-1).all()), f"{label}: reached rows' scores"
        if dt == torch.float32:
            step = (h_k.double() - hidden.double()).norm(dim=-1)
            want = torch.tensor([0.36, 0.63, 0.225, 0.0, 0.0, 0.9, 0.0, 0.0, 0.5],
                                dtype=torch.float64)
            assert bool(((step - want).abs() < 1e-4).all()), f"{label}: {step} vs {want}"


# Every check above, by name: one test each.
CHECKS = sorted(name for name, fn in globals().items() if name.startswith("check_") and callable(fn))


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _main(argv: list[str]) -> int:
    """``test_kernel_triton.py [--json PATH] [CHECK ...]``: run the named checks (all by default)
    under ``TRITON_INTERPRET=1``; with ``--json``, write ``{check: {"passed", "seconds",
    "error"}}`` to PATH after each check, so a process that dies keeps what it finished."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("run with TRITON_INTERPRET=1")
        return 2
    out = None
    if argv[:1] == ["--json"]:
        out, argv = Path(argv[1]), argv[2:]
    unknown = sorted(set(argv) - set(CHECKS))
    if unknown:
        print(f"no such checks: {unknown}; known: {CHECKS}")
        return 2
    torch.set_num_threads(1)
    results: dict[str, dict] = {}
    for name in argv or CHECKS:
        t0 = time.perf_counter()
        try:
            globals()[name]()
            error = ""
        except Exception:  # noqa: BLE001 - report every failing check
            error = traceback.format_exc()
        seconds = time.perf_counter() - t0
        results[name] = {"passed": not error, "seconds": round(seconds, 2), "error": error}
        print(f"{'FAIL' if error else 'PASS'} {name} ({seconds:.1f}s)" + (f"\n{error}" if error else ""),
              flush=True)
        if out is not None:
            _write_json(out, results)
    return 0 if all(r["passed"] for r in results.values()) else 1


def test_triton_is_installed():
    """triton is in the dev extra: its absence is a failure, not a skip."""
    import importlib.util

    assert importlib.util.find_spec("triton") is not None, (
        "triton is not installed; install the dev extra (pip install -e '.[dev]')"
    )


INTERPRETER_TIMEOUT = 600


@pytest.fixture(scope="module")
def interpreter(request, tmp_path_factory) -> dict:
    """The checks this session selected, run once in a fresh interpreter with
    ``TRITON_INTERPRET=1``: ``{"results": {check: result}, "output": str, "returncode": int}``."""
    wanted = sorted({
        item.callspec.params["check"] for item in request.session.items
        if getattr(item, "module", None) is request.module
        and "check" in getattr(getattr(item, "callspec", None), "params", {})
    })
    path = tmp_path_factory.mktemp("triton-interpreter") / "results.json"
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--json", str(path), *wanted]
    try:
        proc = subprocess.run(cmd, check=False, env=env, cwd=str(ROOT), capture_output=True,
                              text=True, timeout=INTERPRETER_TIMEOUT)
        output, returncode = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "")
                         for x in (exc.stdout, exc.stderr))
        output += f"\n(killed after {INTERPRETER_TIMEOUT} s)"
        returncode = None
    results = json.loads(path.read_text()) if path.exists() else {}
    return {"results": results, "output": output, "returncode": returncode}


@pytest.mark.parametrize("check", CHECKS)
def test_triton_kernel_interpreter(check, interpreter):
    """One check above, run under TRITON_INTERPRET=1; a check with no result fails."""
    result = interpreter["results"].get(check)
    assert result is not None, (
        f"{check}: no result from the interpreter process (exit status "
        f"{interpreter['returncode']}):\n{interpreter['output'][-4000:]}"
    )
    assert result["passed"], f"{check} failed under TRITON_INTERPRET=1:\n{result['error']}"


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
