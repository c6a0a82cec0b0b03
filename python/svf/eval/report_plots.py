"""The evaluation report's plots (matplotlib, no display): one function per figure, each
reading the rows the evaluation wrote to CSV, so a figure can be redrawn from the CSV alone
(:func:`replot`).

In every figure a method keeps one color in all panels, the two signs (``+`` toward the
concept, ``-`` away) have their own marker and line style, tick labels are plain decimals
(``0.2``, ``4``, never ``4×10⁰``) and the legend sits outside the panels, clear of the data.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..optional import require

# matplotlib comes with the 'eval' extra: without it, importing this module fails with the
# pip command that installs it.  Agg: files only, no display.
require("matplotlib", "eval").use("Agg")
plt = require("matplotlib.pyplot", "eval")
ticker = require("matplotlib.ticker", "eval")
Line2D = require("matplotlib.lines", "eval").Line2D
Patch = require("matplotlib.patches", "eval").Patch

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.axis import Axis
    from matplotlib.figure import Figure

#: Marker, line style and legend label of each sign.
SIGNS = {
    1: {"marker": "^", "linestyle": "-", "label": "+ toward the concept"},
    -1: {"marker": "v", "linestyle": "--", "label": "− away from it"},
}
LEGEND_WIDTH = 1.9  # inches added to a figure for the legend at its right


def _sign(row: dict) -> int:
    """The row's sign (+1 toward the concept or -1 away): its ``sign`` column, or ``direction``
    in reports that name the column so (the committed ones under docs/eval*/); tables without
    either steer toward the concept."""
    value = row["sign"] if "sign" in row else row.get("direction")
    return -1 if int(float(value or 1)) < 0 else 1


def _total_strength(row: dict) -> float:
    """The row's total strength: its ``total_strength`` column, or ``strength`` in reports that
    name the column so."""
    return float(row["total_strength"] if "total_strength" in row else row["strength"])


def _colors(names: Iterable[str]) -> dict[str, tuple]:
    """One tab10 color per name, in sorted order, the same in every panel of a figure."""
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(names)))}


def _figure(n: int, width: float = 4.8, height: float = 3.6,
            rows: int = 1) -> tuple[Figure, list[list[Axes]]]:
    """``rows`` x ``n`` panels, laid out by matplotlib with room for a legend at the right."""
    n = max(n, 1)
    fig, axes = plt.subplots(rows, n, figsize=(width * n + LEGEND_WIDTH, height * rows),
                             squeeze=False, layout="constrained")
    return fig, [list(r) for r in axes]


def _legend(fig: Figure, handles: list) -> None:
    """The figure's one legend, outside the panels at the upper right."""
    fig.legend(handles=handles, loc="outside right upper", fontsize=8)


def _method_handles(colors: dict[str, tuple]) -> list:
    """Legend entries of the methods (or runs): a line in each one's color."""
    return [Line2D([], [], color=c, lw=2, label=name) for name, c in colors.items()]


def _sign_handles(signs: Iterable[int], lines: bool = True) -> list:
    """Legend entries of the signs present: their marker (and line style if ``lines``)."""
    return [Line2D([], [], color="0.35", marker=SIGNS[sg]["marker"],
                   linestyle=SIGNS[sg]["linestyle"] if lines else "",
                   label=SIGNS[sg]["label"])
            for sg in sorted(set(signs), reverse=True)]


def _plain_log(axis: Axis) -> None:
    """Log-scaled ``axis`` labelled in plain numbers: matplotlib's LogFormatter picks which
    ticks to label (minor ones too, when the range holds no whole decade)."""
    axis.set_major_formatter(ticker.LogFormatter())
    axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _strength_ticks(ax: Axes, values: Iterable[float], min_gap: float = 0.125) -> None:
    """x ticks at the swept strengths and 0, as plain decimals; a strength closer than
    ``min_gap`` of the axis span to the previous tick gets none, so labels never collide."""
    values = sorted(set(values) | {0.0})
    span = (values[-1] - values[0]) or 1.0
    kept = [values[0]]
    for v in values[1:]:
        if v - kept[-1] >= min_gap * span:
            kept.append(v)
    ax.set_xticks(kept)
    ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:g}"))


def draw_gap_vs_alpha(sweeps: Sequence[dict]) -> Figure:
    """Validation mean gap shift (toward the requested side) against total strength, a line per
    method and sign, a panel per concept (rows: concept, method, total_strength, gap_shift,
    optionally sign)."""
    concepts = sorted({r["concept"] for r in sweeps})
    colors = _colors(r["method"] for r in sweeps)
    fig, (axes,) = _figure(len(concepts))
    for ax, concept in zip(axes, concepts):
        lines = defaultdict(list)
        for r in sweeps:
            if r["concept"] == concept:
                lines[r["method"], _sign(r)].append(
                    (_total_strength(r), float(r["gap_shift"])))
        for (method, sign), pts in sorted(lines.items()):
            pts = sorted(pts + [(0.0, 0.0)])
            style = SIGNS[sign]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[method],
                    marker=style["marker"], linestyle=style["linestyle"],
                    gid=f"{method} {sign:+d}")
        _strength_ticks(ax, [_total_strength(r) for r in sweeps if r["concept"] == concept])
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=concept, xlabel="total strength (x mean residual norm)",
               ylabel="mean gap shift vs unsteered (validation)")
    _legend(fig, _method_handles(colors) + _sign_handles(_sign(r) for r in sweeps))
    return fig


SLOPE_PAIRS = (("svf-shared", "caa-multi"), ("svf-1", "caa-1"))


def draw_slope_histograms(slopes: Sequence[dict],
                          pairs: Sequence[tuple[str, str]] = SLOPE_PAIRS) -> Figure:
    """Per-input test slopes (gap over total strength, toward the concept), SVF against CAA, a
    panel per concept and pair; ``+`` filled, ``-`` dashed outlines (rows: concept, method,
    sign, slope)."""
    np = require("numpy", "eval")
    concepts = sorted({r["concept"] for r in slopes})
    panels = [(c, p) for c in concepts for p in pairs]
    colors = _colors(m for p in pairs for m in p if any(r["method"] == m for r in slopes))
    fig, (axes,) = _figure(len(panels), width=4.0)
    for ax, (concept, pair) in zip(axes, panels):
        groups = defaultdict(list)
        for r in slopes:
            if r["concept"] == concept and r["method"] in pair:
                groups[r["method"], _sign(r)].append(float(r["slope"]))
        values = [v for vals in groups.values() for v in vals]
        bins = np.histogram_bin_edges(values or [0.0], bins=20)
        both = len({d for _, d in groups}) > 1
        counts = []
        for (method, sign), vals in sorted(groups.items(),
                                                key=lambda g: (-g[0][1], pair.index(g[0][0]))):
            if sign > 0:
                ax.hist(vals, bins=bins, alpha=0.55, color=colors[method], gid=f"{method} +1")
            else:
                ax.hist(vals, bins=bins, histtype="step", linestyle="--", lw=1.5,
                        color=colors[method], gid=f"{method} -1")
            mark = ("+" if sign > 0 else "−") if both else ""
            counts.append(f"{method}{mark} {sum(v < 0 for v in vals)}/{len(vals)}")
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{concept}: {pair[0]} vs {pair[1]}\nslopes < 0: " + ", ".join(counts),
                     fontsize=9)
        ax.set(xlabel="per-prompt slope of gap over total strength", ylabel="prompts")
    handles = [Patch(color=c, alpha=0.55, label=m) for m, c in colors.items()]
    if any(_sign(r) < 0 for r in slopes):
        handles += [Patch(facecolor="0.6", label="+ toward the concept"),
                    Patch(fill=False, edgecolor="0.3", linestyle="--", label="− away from it")]
    _legend(fig, handles)
    return fig


def draw_long_form_curves(rows: Sequence[dict]) -> Figure:
    """Judge score and unsteered perplexity per 32-token window, a line per run (rows: concept,
    run, window, start, score, ppl_median, optionally sign)."""
    concepts = sorted({r["concept"] for r in rows})
    colors = _colors(r["run"] for r in rows)
    fig, (top, bottom) = _figure(len(concepts), width=5.5, height=3.5, rows=2)
    for j, concept in enumerate(concepts):
        runs = defaultdict(list)
        for r in rows:
            if r["concept"] == concept:
                runs[r["run"], _sign(r)].append(
                    (int(r["start"]), float(r["score"]), float(r["ppl_median"])))
        for (run, sign), pts in sorted(runs.items()):
            pts.sort()
            style = {k: v for k, v in SIGNS[sign].items() if k != "label"}
            for ax, col in ((top[j], 1), (bottom[j], 2)):
                ax.plot([p[0] for p in pts], [p[col] for p in pts], color=colors[run],
                        gid=f"{run} {sign:+d}", **style)
        top[j].set(title=f"{concept}: judge score per window", ylabel="judge score (+ = concept)")
        bottom[j].set(xlabel="window start (generated tokens)",
                      ylabel="median perplexity (unsteered)")
        bottom[j].set_yscale("log")
        _plain_log(bottom[j].yaxis)
    _legend(fig, _method_handles(colors) + _sign_handles(_sign(r) for r in rows))
    return fig


def draw_open_ended_tradeoff(rows: Sequence[dict], judge: str = "embed") -> Figure:
    """Score shift toward the requested side against median perplexity, a point per method,
    sign and total strength; a panel per concept."""
    concepts = sorted({r["concept"] for r in rows})
    steered = [r for r in rows if r["method"] != "base"]
    colors = _colors(r["method"] for r in steered)
    fig, (axes,) = _figure(len(concepts))
    for ax, concept in zip(axes, concepts):
        base = [r for r in rows if r["concept"] == concept and r["method"] == "base"]
        if base:
            ax.axvline(float(base[0]["ppl_median"]), color="grey", lw=0.8, ls="--")
        groups = defaultdict(list)
        for r in steered:
            if r["concept"] == concept:
                groups[r["method"], _sign(r)].append(
                    (float(r["ppl_median"]), float(r[f"{judge}_delta"])))
        for (method, sign), pts in sorted(groups.items()):
            ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle="",
                    marker=SIGNS[sign]["marker"], markersize=6, color=colors[method],
                    gid=f"{method} {sign:+d}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=concept, xlabel="median perplexity under the unsteered model",
               ylabel=f"{judge} judge shift, requested side")
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
    handles = [Line2D([], [], color=c, marker="o", linestyle="", label=m)
               for m, c in colors.items()]
    handles += _sign_handles((_sign(r) for r in steered), lines=False)
    handles.append(Line2D([], [], color="grey", lw=0.8, ls="--", label="unsteered perplexity"))
    _legend(fig, handles)
    return fig


def draw_equal_fluency(sweep: Sequence[dict], budgets: Sequence[float] = (1.25, 1.5)) -> Figure:
    """The validation sweep of the equal-fluency comparison: judge shift toward the requested
    side against median perplexity, a line per method through its total strengths; a
    panel per concept (columns) and sign (rows); the unsteered perplexity and the fluency
    budgets as vertical lines."""
    concepts = sorted({r["concept"] for r in sweep})
    steered = [r for r in sweep if r["method"] != "base"]
    colors = _colors(r["method"] for r in steered)
    signs = sorted({_sign(r) for r in steered}, reverse=True)
    fig, axes = _figure(len(concepts), rows=len(signs))
    for row, sign in zip(axes, signs):
        for ax, concept in zip(row, concepts):
            base = [r for r in sweep if r["concept"] == concept and r["method"] == "base"]
            if base:
                ppl = float(base[0]["ppl_median"])
                ax.axvline(ppl, color="grey", lw=0.8, ls="--")
                for b in budgets:
                    ax.axvline(ppl * float(b), color="grey", lw=0.6, ls=":")
            groups = defaultdict(list)
            for r in steered:
                if r["concept"] == concept and _sign(r) == sign:
                    groups[r["method"]].append((_total_strength(r), float(r["ppl_median"]), float(r["delta"])))
            for method, pts in sorted(groups.items()):
                pts.sort()
                ax.plot([p[1] for p in pts], [p[2] for p in pts], color=colors[method], lw=1.5,
                        marker=SIGNS[sign]["marker"], markersize=5, gid=f"{method} {sign:+d}")
            ax.axhline(0, color="k", lw=0.5)
            ax.set(title=f"{concept} ({'+' if sign > 0 else '−'})",
                   xlabel="median perplexity under the unsteered model",
                   ylabel="judge shift, requested side")
            ax.set_xscale("log")
            _plain_log(ax.xaxis)
    handles = _method_handles(colors) + _sign_handles(signs, lines=False)
    handles += [Line2D([], [], color="grey", lw=0.8, ls="--", label="unsteered perplexity"),
                Line2D([], [], color="grey", lw=0.6, ls=":", label="fluency budgets")]
    _legend(fig, handles)
    return fig


#: The color of each verdict of a paired comparison.
VERDICT_COLORS = {"win": "tab:green", "tie": "tab:gray", "loss": "tab:red"}


def draw_fluency_verdicts(rows: Sequence[dict]) -> Figure:
    """The paired comparisons at equal fluency: per comparison (a panel), one row per
    (concept, sign, budget) cell with the mean test shift difference A - B and its 95 %
    bootstrap interval, colored by verdict, the sign's marker; the vertical line is no
    difference."""
    comparisons = list(dict.fromkeys(r["comparison"] for r in rows))
    cells = sorted({(r["concept"], _sign(r), float(r["budget"])) for r in rows}, key=lambda c: (c[0], -c[1], c[2]))
    fig, axes = _figure(len(comparisons), width=4.2, height=0.32 * len(cells) + 1.2)
    for ax, comparison in zip(axes[0], comparisons):
        for y, cell in enumerate(cells):
            for r in rows:
                if r["comparison"] == comparison and (r["concept"], _sign(r), float(r["budget"])) == cell:
                    d, lo, hi = float(r["diff"]), float(r["lo"]), float(r["hi"])
                    color = VERDICT_COLORS.get(r["verdict"], "k")
                    bar = ax.errorbar([d], [y], xerr=[[d - lo], [hi - d]], fmt=SIGNS[cell[1]]["marker"], color=color,
                                      capsize=2, markersize=5)
                    bar.lines[0].set_gid(f"{comparison} {cell[0]} {cell[2]:g} {cell[1]:+d}")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(range(len(cells)))
        ax.set_yticklabels([f"{c} {'+' if s > 0 else '−'} {b:g}×" for c, s, b in cells], fontsize=7)
        ax.set_ylim(len(cells) - 0.5, -0.5)
        ax.set(title=comparison, xlabel="test judge shift, A − B")
    handles = [Line2D([], [], color=c, marker="s", linestyle="", label=v) for v, c in VERDICT_COLORS.items()]
    _legend(fig, handles + _sign_handles(sorted({c[1] for c in cells}, reverse=True), lines=False))
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` to ``path`` and free it."""
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def gap_vs_alpha(sweeps: Sequence[dict], path: Path) -> Path:
    """Write :func:`draw_gap_vs_alpha` to ``path``."""
    return _save(draw_gap_vs_alpha(sweeps), path)


def slope_histograms(slopes: Sequence[dict], path: Path,
                     pairs: Sequence[tuple[str, str]] = SLOPE_PAIRS) -> Path:
    """Write :func:`draw_slope_histograms` to ``path``."""
    return _save(draw_slope_histograms(slopes, pairs), path)


def long_form_curves(rows: Sequence[dict], path: Path) -> Path:
    """Write :func:`draw_long_form_curves` to ``path``."""
    return _save(draw_long_form_curves(rows), path)


def open_ended_tradeoff(rows: Sequence[dict], path: Path, judge: str = "embed") -> Path:
    """Write :func:`draw_open_ended_tradeoff` to ``path``."""
    return _save(draw_open_ended_tradeoff(rows, judge), path)


def equal_fluency(sweep: Sequence[dict], path: Path) -> Path:
    """Write :func:`draw_equal_fluency` to ``path``."""
    return _save(draw_equal_fluency(sweep), path)


def fluency_verdicts(rows: Sequence[dict], path: Path) -> Path:
    """Write :func:`draw_fluency_verdicts` to ``path``."""
    return _save(draw_fluency_verdicts(rows), path)


#: The report's plots: file name -> (the table, ``<table>.csv``, it is drawn from; the drawing).
PLOTS: dict[str, tuple[str, Callable[[Sequence[dict], Path], Path]]] = {
    "gap_vs_alpha.png": ("sweeps", gap_vs_alpha),
    "slopes.png": ("slopes", slope_histograms),
    "open_ended.png": ("open_ended", open_ended_tradeoff),
    "long_form.png": ("long_form", long_form_curves),
    "equal_fluency.png": ("fluency_sweep", equal_fluency),
    "fluency_verdicts.png": ("fluency_verdicts", fluency_verdicts),
}


#: The columns a plot needs beyond its table's name (older reports' tables may lack them).
PLOT_COLUMNS: dict[str, tuple[str, ...]] = {"fluency_verdicts.png": ("comparison", "lo", "hi")}


def drawable(name: str, rows: Sequence[dict]) -> bool:
    """Whether plot ``name`` can be drawn from ``rows``: some rows, with its columns."""
    return bool(rows) and all(col in rows[0] for col in PLOT_COLUMNS.get(name, ()))


def replot(report_dir: str | Path) -> list[Path]:
    """Redraw the plots of a report directory from its CSV tables (each plot whose table is
    there, not empty and has the plot's columns); returns the files written."""
    root = Path(report_dir)
    written = []
    for name, (table, draw) in PLOTS.items():
        path = root / f"{table}.csv"
        if path.is_file():
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            if drawable(name, rows):
                written.append(draw(rows, root / name))
    return written
