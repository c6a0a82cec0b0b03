"""The GPU check's scripts (``benchmarks/gpu/``) run end to end on the CPU, on small shapes.

A device is lent by chance and briefly, so the scripts must not fail there for a reason a CPU
run would have shown: these run each one eagerly (no CUDA graph, wall clock) and check what it
writes, including that every steered step moved the logits and the unsteered one did not.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

GPU_SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"


@pytest.fixture
def scripts(monkeypatch):
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS.parent))
    monkeypatch.syspath_prepend(str(GPU_SCRIPTS))
    yield
    for name in ("decode_graphs", "kernel_floor"):
        sys.modules.pop(name, None)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_decode_graphs_runs_every_mode_and_steering_moves_the_logits(scripts, tmp_path):
    import decode_graphs

    assert decode_graphs.main(["--model", "tiny-llama-random", "--device", "cpu", "--dtype", "float32",
                               "--batch", "1", "3", "--rounds", "2", "--out", str(tmp_path)]) == 0
    stem = "decode_graphs_tiny-llama-random_cpu"
    rows = _rows(tmp_path / f"{stem}.csv")
    modes = {(int(r["batch"]), r["mode"]) for r in rows}
    for batch in (1, 3):
        for mode in ("unsteered", "svf/4", "svf/all", "unsteered eager", "svf-paper/4 eager"):
            assert (batch, mode) in modes
    assert (3, "table/all") in modes and (1, "table/all") not in modes
    for r in rows:
        assert float(r["ms_per_token"]) > 0 and float(r["ratio_to_unsteered_graph"]) > 0
    checks = {(int(c["batch"]), c["mode"]): c for c in _rows(tmp_path / f"{stem}_checks.csv")}
    for (batch, mode), c in checks.items():
        assert float(c["graph_vs_eager"]) == 0.0  # no graph on a CPU: the same eager step
        assert (float(c["moved"]) > 1e-3) == (mode != "unsteered"), (batch, mode, c["moved"])
    assert (tmp_path / f"{stem}.png").stat().st_size > 0


def test_kernel_floor_times_every_shape_against_a_positive_floor(scripts, tmp_path):
    import kernel_floor

    assert kernel_floor.main(["--device", "cpu", "--dtype", "bfloat16", "--hidden", "97", "--m", "8",
                              "--rows", "1", "5", "--concepts", "1", "3", "--calls", "4",
                              "--out", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "kernel_floor_cpu.csv")
    assert {(int(r["N"]), int(r["C"])) for r in rows} == {(1, 1), (5, 1), (1, 3), (5, 3)}
    for r in rows:
        assert float(r["us_per_call"]) > 0 and float(r["floor_us"]) > 0
        # bf16 rows read and written, fp32 parameters, strengths and scores
        N, C, m, d = int(r["N"]), int(r["C"]), 8, 97
        assert int(r["bytes"]) == 2 * N * d * 2 + 4 * (C * m * d + 2 * C * m + C + N + N * C)
