"""Turn a pytest-benchmark JSON of bench_kernels.py into CSV, a plot and a Markdown table.

Speed-ups are ratios of medians from the same run; bandwidth is (read h + read A [+ read B] +
write h) per second against this machine's measured copy bandwidth. When the run measured
``<backend>+B`` providers (the op with a second matrix B for the direction), a second table gives
each backend's median with and without B and their ratio. Several JSON files (repeated runs of
the same command) are combined: each figure is then the median over the runs of the per-run
medians, and the CSV, plot and tables are written next to the first file.

    python benchmarks/report_kernels.py run1.json [run2.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_bandwidth, figure, write_csv


def main(paths: list[str]) -> int:
    runs: dict[tuple, list[float]] = {}
    info: dict[tuple, dict] = {}
    for path in paths:
        for b in json.loads(Path(path).read_text())["benchmarks"]:
            e = b["extra_info"]
            k = tuple(e[k] for k in ("provider", "d", "C", "N", "m", "device", "dtype"))
            runs.setdefault(k, []).append(b["stats"]["median"])
            info[k] = e
    rows = []
    for k, medians in runs.items():
        e, median = info[k], statistics.median(medians)
        rows.append({**{n: e[n] for n in ("provider", "d", "C", "N", "m", "device", "dtype")},
                     "median_us": median * 1e6, "runs": len(medians),
                     "GBps": e["bytes"] / median / 1e9})
    path = paths[0]
    copy = copy_bandwidth() / 1e9 if rows and rows[0]["device"] == "cpu" else float("nan")
    out = Path(path).with_suffix(".csv")
    write_csv(rows, out)
    key = lambda r: (r["d"], r["C"], r["N"])
    shapes = sorted({key(r) for r in rows})
    order = ["paper", "torch", "cpu", "cpu+B", "cuda", "cuda+B", "triton", "triton+B"]
    providers = sorted({r["provider"] for r in rows}, key=order.index)
    med = {(key(r), r["provider"]): r for r in rows}
    _b_table(med, shapes, [p for p in providers if f"{p}+B" in providers])
    if "paper" not in providers or "torch" not in providers:
        return _finish(rows, shapes, providers, path)
    fused = [p for p in providers if p not in ("paper", "torch")]
    head = "| d | C | N | " + " | ".join(f"{p} µs" for p in providers)
    head += "".join(f" | {p}: x paper | {p}: x torch | {p} GB/s" for p in fused) + " |"
    print(head)
    print("|" + " --- |" * (3 + len(providers) + 3 * len(fused)))
    for s in shapes:
        cells = [f"{med[(s, p)]['median_us']:.1f}" if (s, p) in med else "-" for p in providers]
        for p in fused:
            r = med.get((s, p))
            if r is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{med[(s, 'paper')]['median_us'] / r['median_us']:.1f}",
                      f"{med[(s, 'torch')]['median_us'] / r['median_us']:.1f}", f"{r['GBps']:.2f}"]
        print(f"| {s[0]} | {s[1]} | {s[2]} | " + " | ".join(cells) + " |")
    print(f"\nmeasured copy bandwidth (read + write): {copy:.1f} GB/s")
    return _finish(rows, shapes, providers, path)


def _b_table(med, shapes, backends) -> None:
    """Median µs of each backend without and with B, and the ratio (with / without)."""
    if not backends:
        return
    head = "| d | C | N |" + "".join(f" {p} µs | {p}+B µs | {p}: +B / without |" for p in backends)
    print(head)
    print("|" + " --- |" * (3 + 3 * len(backends)))
    for s in shapes:
        cells = []
        for p in backends:
            a, b = med.get((s, p)), med.get((s, f"{p}+B"))
            if a is None or b is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{a['median_us']:.1f}", f"{b['median_us']:.1f}",
                      f"{b['median_us'] / a['median_us']:.2f}"]
        print(f"| {s[0]} | {s[1]} | {s[2]} | " + " | ".join(cells) + " |")
    print()


def _finish(rows, shapes, providers, path: str) -> int:
    _plot(rows, shapes, providers, Path(path).with_suffix(".png"))
    print(f"wrote {Path(path).with_suffix('.csv')} and {Path(path).with_suffix('.png')}")
    return 0


def _plot(rows, shapes, providers, path: Path) -> None:
    with figure(path, nrows=1, ncols=2, figsize=(13, 4.5), squeeze=False) as (_, axes):
        for ax, c in zip(axes[0], (1, 3)):
            for p in providers:
                for d, style in zip((576, 2048, 4096), ("-", "--", ":")):
                    sel = sorted((r for r in rows if r["provider"] == p and r["C"] == c and r["d"] == d),
                                 key=lambda r: r["N"])
                    if sel:
                        ax.plot([r["N"] for r in sel], [r["median_us"] for r in sel], style, marker="o",
                                label=f"{p} d={d}", color=f"C{providers.index(p)}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("rows N")
            ax.set_ylabel("median µs per call")
            ax.set_title(f"C = {c} concept(s), m = 64")
            ax.legend(fontsize=6, ncol=2)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
