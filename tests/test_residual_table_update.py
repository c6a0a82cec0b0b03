"""``svf::residual_table_update_`` (``FieldTable.residual_update_``): the field table on a decoder
layer's ``(hidden, residual)`` pair, as the vLLM plugin calls it once per steered layer.

With its ``live`` flag set the op leaves ``hidden`` equal to the table's update of ``hidden +
residual`` (bit for bit what ``FieldTable.apply_`` does to that sum, per-field targets signed by
each row's strength) and ``residual`` zero, reading only the first ``N`` ids and strengths;
with the flag off it touches nothing. The C++ kernel (CPU) and the Python kernel (every other
device) give the same bits; float64 and another ``SVF_BACKEND`` go through the table op's own
dispatch; ``torch.compile(fullgraph=True)`` traces it.
"""

from __future__ import annotations

import math

import pytest
import torch
from kernel_checks import D, M, forbid_python_dispatch, make_table

from svf_kernels import FieldTable
from svf_kernels.ops import op as op_module

DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def _table(C: int, dtype: torch.dtype, gen: torch.Generator, *, extras: bool) -> FieldTable:
    """A 4-field table; ``extras``: with a direction matrix, per-field targets (one NaN) and
    static vectors."""
    A, c, w2, b2 = make_table(4, C, D, M, torch.float32, gen)
    kwargs = {}
    if extras:
        kwargs = {"B": A + 0.1 * torch.randn(A.shape, generator=gen),
                  "targets": torch.tensor([0.5, math.nan, -0.3, 2.0]),
                  "vectors": 0.2 * torch.randn(4, D, generator=gen)}
    return FieldTable(A, c, w2, b2, **kwargs)


def _pair(N: int, dtype: torch.dtype, gen: torch.Generator):
    base = (2.0 * torch.randn(N, 2, D, generator=gen)).to(dtype)
    return base[:, 0], (0.5 * torch.randn(N, D, generator=gen)).to(dtype)  # hidden: a view


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize(("C", "N"), [(1, 1), (3, 9)])
def test_live_pair_is_the_table_update_of_its_sum(dtype, extras, C, N):
    gen = torch.Generator().manual_seed(31 * N + C + 7 * DTYPES.index(dtype) + 100 * extras)
    table = _table(C, dtype, gen, extras=extras)
    hidden, residual = _pair(N, dtype, gen)
    ids = torch.randint(-1, 4, (N + 5,), generator=gen)  # longer than N: the tail is not read
    alpha = torch.randn(N + 5, generator=gen)
    want = hidden + residual
    table.apply_(want, alpha[:N], ids[:N])
    table.residual_update_(hidden, residual, alpha, ids, torch.ones(1, dtype=torch.bool))
    assert torch.equal(hidden, want)
    assert torch.equal(residual, torch.zeros_like(residual))


def test_a_layer_that_is_not_live_is_left_alone():
    gen = torch.Generator().manual_seed(3)
    table = _table(2, torch.float32, gen, extras=True)
    hidden, residual = _pair(7, torch.float32, gen)
    before = hidden.clone(), residual.clone()
    table.residual_update_(hidden, residual, torch.ones(7), torch.zeros(7, dtype=torch.long),
                           torch.zeros(1, dtype=torch.bool))
    assert torch.equal(hidden, before[0]) and torch.equal(residual, before[1])


@pytest.mark.parametrize("extras", [False, True])
def test_the_cpp_and_python_kernels_agree(extras, monkeypatch):
    """The CPU call reaches the C++ kernel (the Python dispatch would fail the test); the Python
    kernel, which serves every other device, gives the same bits."""
    gen = torch.Generator().manual_seed(11)
    table = _table(2, torch.float32, gen, extras=extras)
    hidden, residual = _pair(12, torch.float32, gen)
    ids, alpha = torch.randint(-1, 4, (12,), generator=gen), torch.randn(12, generator=gen)
    live = torch.ones(1, dtype=torch.bool)
    h2, r2 = hidden.clone(), residual.clone()
    b = table._buffers
    op_module._residual_table_update(h2, r2, b["A"], b["c"], b["w2"], b["b2"], ids, alpha, live,
                                     table.tau, table.normalize, table.eps, b["B"], b["targets"],
                                     table.band, b["vectors"])
    with monkeypatch.context() as m:
        forbid_python_dispatch(m)
        table.residual_update_(hidden, residual, alpha, ids, live)
    assert torch.equal(hidden, h2) and torch.equal(residual, r2)


def test_compiles_in_one_graph():
    gen = torch.Generator().manual_seed(5)
    table = _table(1, torch.float32, gen, extras=True)
    ids, alpha = torch.randint(-1, 4, (6,), generator=gen), torch.randn(6, generator=gen)
    live = torch.ones(1, dtype=torch.bool)

    def step(h, r):
        h = h * 1.0
        r = r * 1.0
        table.residual_update_(h, r, alpha, ids, live)
        return h + r

    hidden, residual = _pair(6, torch.float32, gen)
    want = step(hidden, residual)
    torch._dynamo.reset()
    got = torch.compile(step, fullgraph=True, backend="eager")(hidden, residual)
    assert torch.equal(got, want)
    live[0] = False  # the flag is read at every call, not baked into the graph
    assert torch.equal(torch.compile(step, fullgraph=True, backend="eager")(hidden, residual),
                       hidden + residual)


def test_live_must_be_a_cpu_bool():
    gen = torch.Generator().manual_seed(2)
    table = _table(1, torch.float32, gen, extras=False)
    hidden, residual = _pair(2, torch.float32, gen)
    with pytest.raises(RuntimeError, match="live must be a one-element bool tensor on the CPU"):
        table.residual_update_(hidden, residual, torch.ones(2), torch.zeros(2, dtype=torch.long),
                               torch.ones(1))
