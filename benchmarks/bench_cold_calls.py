"""What one small call costs when a decoder layer has just streamed its weights through the caches.

Decoding steers each layer right after the layer has read ~14 MB of fp32 weights (the default
model), so the steering call finds its code, the dispatcher's tables and the field's ``A`` out
of cache. This times single calls hot (the same call repeated) and cold (after streaming
``--stream-mb`` of memory), per call kind: a tensor view, an in-place add on one row, the fused
op through ``torch.ops`` and the compiled kernel called directly (no dispatcher), each on one
of the 30 layers' fields in turn, and reading one field's ``A``.

    python benchmarks/bench_cold_calls.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, figure, machine, random_scorer, write_csv

from svf.field_packing import packed_field
from svf.steering_field import SteeringField
from svf_kernels.ops.backends.compiled import _C
from svf_kernels.ops.op import field_update_op


def call_kinds(d: int, layers: int) -> dict[str, object]:
    """Each call kind as a function of the round index (it picks the layer's field)."""
    scorer = random_scorer(d, tuple(range(layers)))
    field = SteeringField(scorer, "bench", "bench", layers, tuple(range(layers)), torch.ones(layers),
                          torch.randn(layers, d))
    fields = [packed_field([field], i) for i in range(layers)]
    args = [(f.A, f.c, f.w2, f.b2, torch.ones(1), f.tau, f.normalize, f.eps) for f in fields]
    hidden = torch.randn(1, 1, d)
    row = hidden.select(1, -1)
    kinds = {
        "view (select)": lambda i: hidden.select(1, -1),
        "add_ on one row": lambda i: row.add_(0.0),
        "fused op (torch.ops)": lambda i: field_update_op(row, *args[i % layers], None, None, None, 1.0),
        "read A (A.sum())": lambda i: args[i % layers][0].sum(),
    }
    if _C is not None:
        kinds["compiled kernel, no dispatcher"] = lambda i: _C.field_update_cpu(
            row, *args[i % layers], None, None, None, None, 1.0, None)
    return kinds


def time_calls(fn, rounds: int, stream: torch.Tensor | None) -> list[float]:
    """Seconds of ``fn(i)`` per round, after streaming ``stream`` (None: hot)."""
    times = []
    for i in range(rounds + 20):
        if stream is not None:
            stream.add_(1.0)
        t = time.perf_counter()
        fn(i)
        if i >= 20:
            times.append(time.perf_counter() - t)
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=576, help="d (the default model's)")
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--stream-mb", type=float, default=16.0, help="memory streamed before a cold call")
    p.add_argument("--rounds", type=int, default=400)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    stream = torch.zeros(int(args.stream_mb * (1 << 20)) // 4)
    rows = []
    with torch.no_grad():
        for kind, fn in tqdm(call_kinds(args.hidden, args.layers).items(), desc="call kinds"):
            hot = statistics.median(time_calls(fn, args.rounds, None))
            cold = statistics.median(time_calls(fn, args.rounds, stream))
            rows.append({"call": kind, "hot_us": 1e6 * hot, "cold_us": 1e6 * cold,
                         "stream_mb": args.stream_mb, "rounds": args.rounds})
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, args.out / "cold_calls_cpu.csv")
    _plot(rows, args.out / "cold_calls_cpu.png", args.stream_mb)
    info = machine()
    print(f"\n{info['cpu']}, {info['threads']} threads, torch {info['torch']}, commit {info['commit']}; "
          f"median µs per call over {args.rounds} calls, hot and after streaming {args.stream_mb:g} MB")
    print("| call | hot (µs) | cold (µs) |\n| --- | --- | --- |")
    for r in rows:
        print(f"| {r['call']} | {r['hot_us']:.1f} | {r['cold_us']:.1f} |")
    return 0


def _plot(rows, path: Path, stream_mb: float) -> None:
    with figure(path, figsize=(7, 3.5)) as (_, ax):
        y = range(len(rows))
        ax.barh([i + 0.2 for i in y], [r["hot_us"] for r in rows], height=0.4, label="hot")
        ax.barh([i - 0.2 for i in y], [r["cold_us"] for r in rows], height=0.4,
                label=f"after streaming {stream_mb:g} MB")
        ax.set_yticks(list(y), [r["call"] for r in rows])
        ax.set_xlabel("µs per call (median)")
        ax.invert_yaxis()
        ax.legend()


if __name__ == "__main__":
    raise SystemExit(main())
