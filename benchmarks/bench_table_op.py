"""The field-table op's cost per call at decode shapes, on the CPU, for one or several builds.

Per call of ``svf_kernels.field_table_update_`` (d = 576, m = 64, the default model's width),
for tables of F fields of C concepts and N rows, the median over repeats of the calling
thread's CPU time (``time.thread_time``: on a shared machine the time the kernel itself takes,
not the time other jobs take from it), one thread. With ``--trees A B ...`` each tree (a
checkout with its extension built in place) runs in its own process, the trees alternating
round by round, and the table gives each tree's time and its ratio to the first tree's.

    python benchmarks/bench_table_op.py                       # this checkout
    python benchmarks/bench_table_op.py --trees ../old . --rounds 3 --csv benchmarks/results/table_op.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

#: (F fields, C concepts, N rows) per case.
CASES = ((3, 1, 1), (3, 1, 8), (3, 1, 32), (1, 1, 32), (3, 3, 32))
D, M = 576, 64


def measure(calls: int = 300, repeats: int = 7) -> dict[str, float]:
    """Per case, the median per-call thread CPU time in microseconds (this process's build)."""
    import torch

    import svf_kernels

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    out = {}
    for F, C, N in CASES:
        A = torch.randn(F, C, M, D, generator=g) / D**0.5
        c = 0.1 * torch.randn(F, C, M, generator=g)
        w2 = torch.randn(F, C, M, generator=g)
        b2 = torch.randn(F, C, generator=g)
        ids = torch.arange(N) % F
        h0 = torch.randn(N, D, generator=g)
        alpha = torch.full((N,), 0.01)
        times = []
        for k in range(repeats + 1):  # the first repeat warms up, untimed
            h = h0.clone()
            t = time.thread_time()
            for _ in range(calls):
                svf_kernels.field_table_update_(h, A, c, w2, b2, ids, alpha, check_ids=False)
            if k:
                times.append((time.thread_time() - t) / calls * 1e6)
        out[f"F{F}-C{C}-N{N}"] = statistics.median(times)
    return out


def _in_tree(tree: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(tree / "python")])}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bench_table_op as b; "
            "print(json.dumps(b.measure()))")
    run = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parent)],
                         env=env, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trees", nargs="+", type=Path, default=None,
                        help="checkouts to compare (each with its extension built in place)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per tree")
    parser.add_argument("--csv", type=Path, default=None, help="write the table here too")
    args = parser.parse_args(argv)
    if not args.trees:
        print(json.dumps(measure(), indent=1))
        return 0
    runs: dict[Path, list[dict[str, float]]] = {t: [] for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            runs[tree].append(_in_tree(tree))
    rows = []
    first = args.trees[0]
    for case in runs[first][0]:
        base = statistics.median(r[case] for r in runs[first])
        for tree in args.trees:
            us = statistics.median(r[case] for r in runs[tree])
            rows.append({"case": case, "tree": str(tree), "us_per_call": round(us, 1),
                         "ratio_to_first": round(us / base, 3)})
    for row in rows:
        print(f"{row['case']:<12} {row['tree']:<30} {row['us_per_call']:>8.1f} us  x{row['ratio_to_first']:.3f}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
