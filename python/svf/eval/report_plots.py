"""The evaluation report's plots (matplotlib, no display): one function per figure, each
reading the rows the evaluation wrote to CSV, so a figure can be redrawn from the CSV alone."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _grid(n: int, width: float = 4.8, height: float = 3.6):
    fig, axes = plt.subplots(1, max(n, 1), figsize=(width * max(n, 1), height), squeeze=False)
    return fig, axes[0]


def gap_vs_alpha(sweeps: Sequence[dict], path: Path) -> Path:
    """Validation mean gap shift against signed strength, one line per method, a panel per
    concept (rows: concept, method, strength, gap_shift)."""
    concepts = sorted({r["concept"] for r in sweeps})
    fig, axes = _grid(len(concepts))
    for ax, concept in zip(axes, concepts):
        lines = defaultdict(list)
        for r in sweeps:
            if r["concept"] == concept:
                lines[r["method"]].append((float(r["strength"]), float(r["gap_shift"])))
        for method, pts in lines.items():
            pts = sorted(pts + [(0.0, 0.0)])
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=concept, xlabel="total strength (x mean residual norm)",
               ylabel="mean gap shift vs unsteered (validation)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def slope_histograms(slopes: Sequence[dict], path: Path, pairs=(("svf-shared", "caa-multi"), ("svf-1", "caa-1"))) -> Path:
    """Per-input test slopes (gap over strength, toward the concept), SVF against CAA, a panel
    per concept and pair (rows: concept, method, direction, slope)."""
    concepts = sorted({r["concept"] for r in slopes})
    panels = [(c, p) for c in concepts for p in pairs]
    fig, axes = _grid(len(panels), width=4.0)
    for ax, (concept, pair) in zip(axes, panels):
        for method in pair:
            vals = [float(r["slope"]) for r in slopes
                    if r["concept"] == concept and r["method"] == method and int(r["direction"]) == 1]
            if vals:
                ax.hist(vals, bins=20, alpha=0.55, label=f"{method} ({sum(v < 0 for v in vals)}/{len(vals)} < 0)")
        ax.axvline(0, color="k", lw=0.8)
        ax.set(title=f"{concept}: {pair[0]} vs {pair[1]}", xlabel="per-prompt slope of gap over strength",
               ylabel="prompts")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def long_form_curves(rows: Sequence[dict], path: Path) -> Path:
    """Judge score and unsteered perplexity per 32-token window, one line per run (rows:
    concept, run, window, start, score, ppl_median)."""
    concepts = sorted({r["concept"] for r in rows})
    fig, axes = plt.subplots(2, max(len(concepts), 1), figsize=(5.5 * max(len(concepts), 1), 7), squeeze=False)
    for j, concept in enumerate(concepts):
        runs = defaultdict(list)
        for r in rows:
            if r["concept"] == concept:
                runs[r["run"]].append((int(r["start"]), float(r["score"]), float(r["ppl_median"])))
        for run, pts in runs.items():
            pts.sort()
            axes[0][j].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=run)
            axes[1][j].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=run)
        axes[0][j].set(title=f"{concept}: judge score per window", ylabel="judge score (+ = concept)")
        axes[1][j].set(xlabel="window start (generated tokens)", ylabel="median perplexity (unsteered)")
        axes[1][j].set_yscale("log")
        axes[0][j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def open_ended_tradeoff(rows: Sequence[dict], path: Path, judge: str = "embed") -> Path:
    """Score shift in the requested direction against median perplexity, a point per method,
    direction and strength; a panel per concept."""
    concepts = sorted({r["concept"] for r in rows})
    fig, axes = _grid(len(concepts))
    for ax, concept in zip(axes, concepts):
        base = [r for r in rows if r["concept"] == concept and r["method"] == "base"]
        if base:
            ax.axvline(float(base[0]["ppl_median"]), color="grey", lw=0.8, ls="--", label="unsteered ppl")
        methods = sorted({r["method"] for r in rows if r["concept"] == concept and r["method"] != "base"})
        for method in methods:
            pts = [r for r in rows if r["concept"] == concept and r["method"] == method]
            ax.scatter([float(r["ppl_median"]) for r in pts], [float(r[f"{judge}_delta"]) for r in pts],
                       label=method, s=18)
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=concept, xlabel="median perplexity under the unsteered model",
               ylabel=f"{judge} judge shift, requested direction")
        ax.set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
