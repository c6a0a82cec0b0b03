"""The report's plots, drawn from tiny synthetic tables: tick labels are plain numbers that do
not collide, legends are clear of the data, and the two signs (toward, away) look different."""

from __future__ import annotations

import csv
import random
import re
import shutil
from itertools import combinations
from pathlib import Path

import pytest

from svf.eval import report_plots as rp

PLAIN_NUMBER = re.compile(r"^[−-]?\d+(\.\d+)?$")
METHODS = ("svf-shared", "caa-multi", "svf-1", "caa-1")
CONCEPTS = ("sentiment", "formality")
DOCS_EVAL = Path(__file__).resolve().parents[1] / "docs" / "eval"


def _sweeps() -> list[dict]:
    rng = random.Random(0)
    return [{"concept": c, "method": m, "sign": sg, "total_strength": s,
             "gap_shift": s * rng.uniform(0.5, 4.0)}
            for c in CONCEPTS for m in METHODS for sg in (1, -1)
            for s in (0.02, 0.05, 0.1, 0.2, 0.4, 0.8)]


def _slopes() -> list[dict]:
    rng = random.Random(1)
    return [{"concept": c, "method": m, "sign": sg, "prompt": i, "slope": rng.gauss(1.0, 0.8)}
            for c in CONCEPTS for m in METHODS for sg in (1, -1) for i in range(30)]


def _open_ended() -> list[dict]:
    rng = random.Random(2)
    rows = [{"concept": c, "method": "base", "sign": 0, "ppl_median": 3.1, "embed_delta": 0.0}
            for c in CONCEPTS]
    rows += [{"concept": c, "method": m, "sign": sg, "ppl_median": rng.uniform(3.2, 8.5),
              "embed_delta": rng.uniform(-0.05, 0.6)}
             for c in CONCEPTS for m in METHODS for sg in (1, -1)]
    return rows


def _long_form() -> list[dict]:
    rng = random.Random(3)
    return [{"concept": "sentiment", "run": run, "window": w, "start": 32 * w,
             "score": rng.uniform(0.2, 0.6), "ppl_median": rng.uniform(2.1, 5.2)}
            for run in ("base", "caa-multi", "svf-shared K=1", "svf-shared K=4") for w in range(8)]


def _fluency_sweep() -> list[dict]:
    rng = random.Random(4)
    rows = [{"concept": c, "method": "base", "sign": 0, "total_strength": 0.0, "delta": 0.0,
             "ppl_median": 4.2} for c in CONCEPTS]
    rows += [{"concept": c, "method": m, "sign": sg, "total_strength": s,
              "delta": s * rng.uniform(0.1, 0.5), "ppl_median": 4.2 * (1 + s * rng.uniform(0.2, 2.0))}
             for c in CONCEPTS for m in ("caa-multi", "svf", "svf-precond") for sg in (1, -1)
             for s in (0.1, 0.2, 0.4, 0.8, 1.6)]
    return rows


def _fluency_verdicts() -> list[dict]:
    rng = random.Random(5)
    rows = []
    for c in CONCEPTS:
        for sg in (1, -1):
            for b in (1.25, 1.5):
                for comparison in ("best-svf vs best-static", "best-svf vs best-prompt"):
                    d, w = rng.uniform(-0.3, 0.3), rng.uniform(0.03, 0.1)
                    rows.append({"concept": c, "sign": sg, "budget": b, "comparison": comparison, "diff": d,
                                 "lo": d - w, "hi": d + w, "verdict": "win" if d > w else "loss" if d < -w else "tie"})
    return rows


FIGURES = {
    "gap_vs_alpha": lambda: rp.draw_gap_vs_alpha(_sweeps()),
    "slopes": lambda: rp.draw_slope_histograms(_slopes()),
    "open_ended": lambda: rp.draw_open_ended_tradeoff(_open_ended()),
    "long_form": lambda: rp.draw_long_form_curves(_long_form()),
    "equal_fluency": lambda: rp.draw_equal_fluency(_fluency_sweep()),
    "fluency_verdicts": lambda: rp.draw_fluency_verdicts(_fluency_verdicts()),
}


@pytest.fixture(params=sorted(FIGURES))
def drawn(request):
    """(name, figure, renderer) of each figure, laid out and drawn."""
    fig = FIGURES[request.param]()
    fig.canvas.draw()
    yield request.param, fig, fig.canvas.get_renderer()
    rp.plt.close(fig)


def _tick_labels(axis):
    ticks = axis.get_major_ticks() + axis.get_minor_ticks()
    lo, hi = sorted(axis.get_view_interval())
    return [t.label1 for t in ticks
            if t.label1.get_visible() and t.label1.get_text() and lo <= t.get_loc() <= hi]


#: Figures with a categorical axis (its tick labels name the rows): that axis is not numeric.
CATEGORICAL_AXIS = {"fluency_verdicts": "y"}


def test_tick_labels_are_plain_numbers(drawn):
    name, fig, _ = drawn
    assert fig.axes
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            if axis.axis_name == CATEGORICAL_AXIS.get(name):
                continue
            texts = [label.get_text() for label in _tick_labels(axis)]
            assert texts
            assert all(PLAIN_NUMBER.match(t) for t in texts), texts


def test_tick_labels_do_not_overlap(drawn):
    _, fig, renderer = drawn
    assert fig.axes
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [(label.get_text(), label.get_window_extent(renderer))
                     for label in _tick_labels(axis)]
            clashes = [(a, b) for (a, box_a), (b, box_b) in combinations(boxes, 2)
                       if box_a.overlaps(box_b)]
            assert not clashes, f"{ax.get_title()!r}: overlapping tick labels {clashes}"


def _data_artists(fig):
    """The plotted data: every line and patch drawn with a ``"<method> <sign>"`` gid."""
    return [(ax, a) for ax in fig.axes for a in (*ax.lines, *ax.patches) if a.get_gid()]


def test_the_legend_is_clear_of_every_data_point(drawn):
    _, fig, renderer = drawn
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    artists = _data_artists(fig)
    assert artists
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax, artist in artists:
            if hasattr(artist, "get_xydata"):
                points = ax.transData.transform(artist.get_xydata())
                assert not box.count_contains(points), f"legend covers points of {artist.get_gid()}"
            else:
                assert not box.overlaps(artist.get_window_extent(renderer)), artist.get_gid()


def _looks(fig) -> dict[str, set]:
    """Per sign (``+1``, ``-1``), the looks (marker or fill, line style) of its data."""
    by_sign: dict[str, set] = {"+1": set(), "-1": set()}
    for _, artist in _data_artists(fig):
        sign = artist.get_gid().rsplit(" ", 1)[1]
        if hasattr(artist, "get_marker"):
            look = (artist.get_marker(), artist.get_linestyle())
        else:
            look = (artist.get_fill(), artist.get_linestyle())
        by_sign[sign].add(look)
    return by_sign


def test_the_two_signs_look_different(drawn):
    name, fig, _ = drawn
    by_sign = _looks(fig)
    if name == "long_form":  # long-form runs steer toward the concept only: one sign drawn
        assert by_sign["+1"] and not by_sign["-1"]
        return
    assert by_sign["+1"] and by_sign["-1"]
    assert not by_sign["+1"] & by_sign["-1"]
    if name in ("gap_vs_alpha", "open_ended"):
        markers = [{m for m, _ in looks} for looks in by_sign.values()]
        assert len(markers[0]) == len(markers[1]) == 1 and markers[0] != markers[1]


def test_a_direction_column_reads_as_the_sign():
    """The reports committed under docs/eval*/ name the sign column ``direction``: their rows
    draw as the same rows with ``sign`` do."""
    renamed = [{("direction" if k == "sign" else k): v for k, v in r.items()} for r in _fluency_sweep()]
    figs = [rp.draw_equal_fluency(rows) for rows in (_fluency_sweep(), renamed)]
    try:
        assert _looks(figs[0]) == _looks(figs[1])
        assert [a.get_gid() for _, a in _data_artists(figs[0])] == [a.get_gid() for _, a in _data_artists(figs[1])]
    finally:
        for fig in figs:
            rp.plt.close(fig)


def test_replot_redraws_the_committed_reports(tmp_path):
    """Every committed report's CSV tables redraw into the plots of the tables it holds, and
    together the committed reports hold every plot of the report."""
    reports = [DOCS_EVAL, *sorted(p.parent for p in (DOCS_EVAL.parent / "eval-fluency").rglob("README.md"))]
    drawn: set[str] = set()
    for k, report in enumerate(reports):
        out = tmp_path / str(k)
        out.mkdir()
        for path in report.glob("*.csv"):
            shutil.copy(path, out / path.name)
        written = rp.replot(out)

        def rows(table: str, report: Path = report) -> list[dict]:
            with open(report / f"{table}.csv", newline="") as f:
                return list(csv.DictReader(f))

        assert sorted(p.name for p in written) == sorted(
            name for name, (table, _) in rp.PLOTS.items()
            if (report / f"{table}.csv").is_file() and rp.drawable(name, rows(table))), report
        for path in written:
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        drawn |= {p.name for p in written}
    assert drawn == set(rp.PLOTS)
