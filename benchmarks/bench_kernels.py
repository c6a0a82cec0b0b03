"""Kernel benchmark: field_update_ providers side by side over shared shapes.

Providers: ``paper`` (autograd of the unfolded scorer, as the published method does it),
``torch`` (the reference backend) and every compiled backend available for the device
(``cpu``; on a GPU ``cuda`` and ``triton``), the last two through the public
``svf_kernels.field_update_`` with ``SVF_BACKEND`` set, as users call them. Each compiled
backend also runs as ``<backend>+B``: the same call with a second folded matrix ``B`` for the
direction (``field_update_(..., B=B)``), so the cost of reading B is measured side by side.
Shapes: d in {576, 2048, 4096}, m = 64, C in {1, 3}, rows N in {1, 16, 256, 4096}.

    python -m pytest benchmarks/bench_kernels.py --benchmark-json benchmarks/results/kernels_cpu.json
    python benchmarks/report_kernels.py benchmarks/results/kernels_cpu.json   # CSV, plot, table
    SVF_BENCH_DEVICE=cuda SVF_BENCH_DTYPE=bfloat16 python -m pytest benchmarks/bench_kernels.py ...
    # with and without B only, decode shapes:
    python -m pytest benchmarks/bench_kernels.py -k "cpu and (-576- or -2048-) and (-1] or -16])" \
        --benchmark-json benchmarks/results/kernels_b_cpu.json
    python benchmarks/report_kernels.py benchmarks/results/kernels_b_cpu.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import random_scorer

import svf_kernels

DEVICE = torch.device(os.environ.get("SVF_BENCH_DEVICE", "cpu"))
DTYPE = getattr(torch, os.environ.get("SVF_BENCH_DTYPE", "float32"))
D = [576, 2048, 4096]
C = [1, 3]
N = [1, 16, 256, 4096]
M = 64
COMPILED = [b for b in svf_kernels.available_backends(DEVICE.type) if b != "torch"]
PROVIDERS = ["paper", "torch"] + [p for b in COMPILED for p in (b, f"{b}+B")]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _setup(d, c, n):
    layer = 0
    scorers = [random_scorer(d, (layer,), m=M, seed=i).to(DEVICE) for i in range(c)]
    folded = [s.fold(layer) for s in scorers]
    packed = (
        torch.stack([f.A for f in folded]), torch.stack([f.c for f in folded]),
        torch.stack([f.w2 for f in folded]), torch.cat([f.b2 for f in folded]),
    )
    hidden = torch.randn(n, d, device=DEVICE).to(DTYPE)
    return scorers, packed, hidden


def _paper_step(scorers, hidden, alpha):
    with torch.enable_grad():
        x = hidden.detach().float().requires_grad_(True)
        f = torch.stack([s.score_layer(x, 0) for s in scorers], -1)
        (g,) = torch.autograd.grad((-torch.logsumexp(-f, dim=-1)).sum(), x)
    hidden += (alpha * g / g.norm(dim=-1, keepdim=True).clamp_min(1e-30)).to(hidden.dtype)


@pytest.mark.parametrize("n", N)
@pytest.mark.parametrize("c", C)
@pytest.mark.parametrize("d", D)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_field_update(benchmark, monkeypatch, provider, d, c, n):
    scorers, packed, hidden = _setup(d, c, n)
    benchmark.group = f"d={d} C={c} N={n}"
    elt = hidden.element_size()
    benchmark.extra_info.update(provider=provider, d=d, C=c, N=n, m=M, device=DEVICE.type,
                                dtype=str(DTYPE).replace("torch.", ""),
                                bytes=2 * n * d * elt + c * M * d * 4)
    if provider == "paper":
        def step():
            _paper_step(scorers, hidden, 1e-3)
            _sync()
    else:  # the public op, as users call it (argument checks + dispatcher + backend)
        backend, _, option = provider.partition("+")
        monkeypatch.setenv("SVF_BACKEND", backend)
        alpha = torch.full((n,), 1e-3, device=DEVICE)
        if option == "B":  # a second matrix of A's shape and scale for the direction
            gen = torch.Generator(device="cpu").manual_seed(d + c)
            B = (torch.randn(packed[0].shape, generator=gen) * packed[0].std().item()).to(DEVICE)
            benchmark.extra_info["bytes"] += c * M * d * 4

            def step():
                svf_kernels.field_update_(hidden, *packed, alpha, B=B)
                _sync()
        else:
            def step():
                svf_kernels.field_update_(hidden, *packed, alpha)
                _sync()
    with torch.no_grad():
        benchmark(step)
