"""The op's device time at decode shapes against its floor: bytes moved / copy bandwidth + one launch.

Per backend (the CUDA C++ kernel, Triton) and shape (N rows, C concepts, d, m = 64, bf16 rows),
op calls are captured back to back in one CUDA graph, each on its own field and rows (so many
fields that together they are twice the card's L2, and at least ``--calls``: every call reads its
field from memory, as a decode step does after a layer's weights went through L2); the replay is timed by
CUDA events and divided by the calls. The floor of one call is the bytes it must move (rows read
and written, the field's parameters, the strengths and scores) over the card's measured copy
bandwidth, plus one launch: the per-kernel time of tiny kernels replayed back to back the same
way. Without CUDA the same calls run eagerly under the wall clock: that checks the script, not
speed.

    python benchmarks/gpu/kernel_floor.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import RESULTS, figure, machine, svf_backend, write_csv

from svf_kernels import available_backends
from svf_kernels.ops.op import field_update_op


def per_call_seconds(calls: list[Callable[[], object]], cuda: bool, repeats: int = 7) -> float:
    """Median seconds per call of ``calls`` run back to back (on CUDA: one graph replay)."""
    if not cuda:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for fn in calls:
                fn()
            times.append((time.perf_counter() - t) / len(calls))
        return statistics.median(times)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up (Triton compiles here), off the default stream
        for fn in calls:
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in calls:
            fn()
    times = []
    for _ in range(repeats + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / len(calls))
    return statistics.median(times[1:])


def copy_bandwidth(device: str, n_bytes: int) -> float:
    """Bytes read + written per second by a device-to-device copy of ``n_bytes``."""
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    return 2 * n_bytes / per_call_seconds([lambda: dst.copy_(src)] * 4, src.is_cuda)


def launch_seconds(device: str) -> float:
    """Per-kernel time of a one-element kernel, back to back: the floor's one launch."""
    tiny = torch.zeros(1, device=device)
    return per_call_seconds([lambda: tiny.add_(1.0)] * 64, tiny.is_cuda)


def call_bytes(N: int, C: int, m: int, d: int, row_bytes: int) -> int:
    """What one call must move: rows read and written, A, c, w2, b2, alpha, scores."""
    return 2 * N * d * row_bytes + 4 * (C * m * d + 2 * C * m + C + N + N * C)


def op_calls(N: int, C: int, m: int, d: int, dtype: torch.dtype, device: str, fields: int,
             calls: int) -> list[Callable[[], object]]:
    """``calls`` op calls cycling over ``fields`` distinct random fields and row blocks."""
    g = torch.Generator(device="cpu").manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * scale).to(device)

    params = [(rand(C, m, d, scale=d ** -0.5), rand(C, m), rand(C, m), rand(C)) for _ in range(fields)]
    rows = [rand(N, d).to(dtype) for _ in range(fields)]
    alpha = torch.full((N,), 0.5, device=device)

    def call(k: int) -> Callable[[], object]:
        A, c, w2, b2 = params[k % fields]
        h = rows[k % fields]
        return lambda: field_update_op(h, A, c, w2, b2, alpha, 1.0, True, 1e-6, None, None, None, 1.0)

    return [call(k) for k in range(calls)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--m", type=int, default=64)
    p.add_argument("--rows", type=int, nargs="+", default=[1, 8, 64])
    p.add_argument("--concepts", type=int, nargs="+", default=[1, 3])
    p.add_argument("--calls", type=int, default=64,
                   help="op calls per timed graph (at least one per field cycled)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    dtype, d, m = getattr(torch, args.dtype), args.hidden, args.m
    cuda = args.device.startswith("cuda")
    l2 = torch.cuda.get_device_properties(args.device).L2_cache_size if cuda else 4 << 20
    bw = copy_bandwidth(args.device, 1 << 30 if cuda else 64 << 20)
    launch = launch_seconds(args.device)
    providers = [b for b in ("cuda", "triton", "cpu") if b in available_backends(torch.device(args.device).type)]
    rows = []
    for name in providers:
        for C in args.concepts:
            fields = max(2, -(-2 * l2 // (4 * C * m * d)) + 1)
            for N in args.rows:
                with svf_backend(name):
                    calls = op_calls(N, C, m, d, dtype, args.device, fields, max(args.calls, fields))
                    t = per_call_seconds(calls, cuda)
                moved = call_bytes(N, C, m, d, torch.finfo(dtype).bits // 8)
                floor = moved / bw + launch
                rows.append({"backend": name, "device": args.device, "dtype": args.dtype, "N": N, "C": C,
                             "m": m, "d": d, "us_per_call": 1e6 * t, "bytes": moved,
                             "floor_us": 1e6 * floor, "x_floor": t / floor,
                             "GB_per_s": moved / t / 1e9, "fields_cycled": fields})
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"kernel_floor_{args.device}".replace(":", "_")
    write_csv(rows, args.out / f"{stem}.csv")
    _plot(rows, args.out / f"{stem}.png")
    info = machine()
    card = torch.cuda.get_device_name(args.device) if cuda else info["cpu"]
    print(f"\n{card} (torch {info['torch']}, commit {info['commit']}): copy bandwidth "
          f"{bw / 1e9:.0f} GB/s (read + written), one launch {1e6 * launch:.2f} µs; {args.dtype} rows, "
          f"d = {d}, m = {m}; per call, over one replay of a call per field cycled")
    print("| backend | N | C | µs per call | floor (µs) | x floor | GB/s |\n| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backend']} | {r['N']} | {r['C']} | {r['us_per_call']:.2f} | {r['floor_us']:.2f} | "
              f"{r['x_floor']:.2f} | {r['GB_per_s']:.0f} |")
    return 0


def _plot(rows, path: Path) -> None:
    with figure(path, figsize=(7, 4)) as (_, ax):
        for name in dict.fromkeys(r["backend"] for r in rows):
            for C in dict.fromkeys(r["C"] for r in rows):
                sel = [r for r in rows if r["backend"] == name and r["C"] == C]
                ax.plot([r["N"] for r in sel], [r["x_floor"] for r in sel], marker="o",
                        label=f"{name}, C = {C}")
        ax.axhline(2.0, color="r", lw=0.8, ls="--", label="2x floor")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rows N")
        ax.set_ylabel("device time / floor")
        ax.legend()


if __name__ == "__main__":
    raise SystemExit(main())
