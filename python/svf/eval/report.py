"""The ``svf eval`` report: :func:`write_report` writes a report directory (a CSV and a Markdown
table per table, the plots, example continuations, the configuration and ``README.md``);
:class:`RunStatus` is its first paragraph (complete, stopped or still running) and
:func:`layers_fact` its line on the layers.
"""

from __future__ import annotations

import csv
import json
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import report_plots

if TYPE_CHECKING:
    from .config import EvalConfig


def _layer_text(layers: Sequence[int]) -> str:
    """``12-21`` for a run of consecutive layers, else ``16, 18, 20``."""
    layers = list(layers)
    if len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1)):
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(map(str, layers))


def layers_fact(cfg: EvalConfig, given: EvalConfig, depth: int) -> str:
    """The report's line on the layers of ``cfg`` (filled in from ``given`` by
    :func:`svf.eval.config.with_model_layers` for a model of ``depth`` layers): which, and where
    they came from."""
    origin = [f"{what} {'given' if getattr(given, key) is not None else 'derived'}"
              for what, key in (("training", "train_layers"), ("steering", "steer_layers"))]
    return (f"layers: train {_layer_text(cfg.train_layers)}, steer {_layer_text(cfg.steer_layers)} "
            f"({', '.join(origin)}; the model has {depth} decoder layers)")


@dataclass
class RunStatus:
    """How far a run got, for the report's first lines: the report is rewritten after every
    stage and on the way out of an interrupted or failed run, so without this a partial report
    would read as a complete one."""

    stages: list[str]  # every step of the run, in order (the names of svf.eval.stages.plan)
    done: list[str] = field(default_factory=list)
    finished: bool = False  # every stage ran and returned
    reason: str = ""  # why the run stopped before the end (empty while it runs or once finished)

    def stop(self, exc: BaseException) -> None:
        """Record that ``exc`` ended the run before the end, in one line."""
        if isinstance(exc, KeyboardInterrupt):
            self.reason = "interrupted (KeyboardInterrupt)"
            return
        lines = str(exc).strip().splitlines()
        self.reason = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

    def headline(self) -> list[str]:
        """The report's title and first paragraph: complete, stopped (where, why, what has no
        results) or still running."""
        if self.finished:
            n = len(self.stages)
            return ["# svf eval report: complete", "", f"Every stage finished ({n} of {n})."]
        missing = [s for s in self.stages if s not in self.done]
        listed = ", ".join(f"`{s}`" for s in missing) or "none"
        stage = f"stage `{missing[0]}`" if missing else "its last stage"
        if self.reason:
            said = (f"**The run stopped during {stage}: {self.reason}.** Only the stages that "
                    f"finished have results below. Stages with no results: {listed}.")
            return ["# svf eval report: stopped before the end", "", said]
        said = (f"**Written after {len(self.done)} of {len(self.stages)} stages, before {stage}.** "
                "If no run is writing here any more, it ended without a word (killed). "
                f"Stages with no results yet: {listed}.")
        return ["# svf eval report: incomplete, written while the run was going", "", said]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    cpu = platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def write_report(out: Path, tables: dict[str, list[dict]], examples: list[dict], cfg: EvalConfig,
                 timings: dict[str, float], model_name: str, command: str,
                 status: RunStatus | None = None, layers: str = "",
                 parts: Sequence[dict] | None = None, commit: str | None = None) -> None:
    """CSV and Markdown per table, the plots, example continuations and ``README.md``, which
    opens with ``status`` (complete, stopped or still running) when given; ``layers``: the line
    on the layers used (:func:`layers_fact`; default: the layers of ``cfg``); ``parts``: the
    facts of each part of a merged report (:func:`svf.eval.merge.merge_reports`); ``commit``: the
    commit the run started at (default: the checkout's commit now)."""
    for key, rows in tables.items():
        _write_csv(rows, out / f"{key}.csv")
    for fname, (table, draw) in report_plots.PLOTS.items():
        if report_plots.drawable(fname, tables.get(table, [])):
            draw(tables[table], out / fname)
    (out / "examples.json").write_text(json.dumps(examples, indent=1) + "\n")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1, default=str) + "\n")
    run = {"command": command or " ".join(sys.argv), "model": model_name or "unknown",
           "layers": layers or f"layers: train {cfg.train_layers}, steer {cfg.steer_layers}",
           "commit": commit or git_commit(), "machine": _machine(), "wall_min": round(timings.get("total", 0.0) / 60, 1),
           "complete": bool(status is not None and status.finished), "timings": timings}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    facts = [f"- command: `{run['command']}`", f"- model: {run['model']}", f"- {run['layers']}",
             f"- commit: {run['commit']}", f"- machine: {run['machine']}", f"- wall time: {run['wall_min']:.1f} min"]
    head = status.headline() if status is not None else ["# svf eval report"]
    if parts:
        facts += ["", "## Parts", "", _markdown(parts)]
    lines = [*head, "", *facts, "", "## Time per stage (s)", "",
             *[f"- {k}: {v:.0f}" for k, v in timings.items() if k != "total"],
             f"- total: {timings.get('total', 0.0):.0f}", ""]
    sections = [("likelihood",
                 "Likelihood steerability (test prompts; total strength chosen on validation)",
                 ["concept", "method", "sign", "layers", "total_strength", "mean_shift",
                  "steerable_rate", "anti_steerable", "mean_slope", "n_test"]),
                ("open_ended", "Open-ended generation (test prompts, matched total displacement)", None),
                ("long_form", "Long-form, per window", None),
                ("multi_attribute", "Multi-attribute (softmin SVF vs summed CAA)", None),
                ("fluency_verdicts", ("Equal fluency: paired comparisons (methods kept on validation; test "
                 "judge shift A - B per prompt, 95 % bootstrap interval over prompts)"),
                 ["concept", "sign", "budget", "comparison", "a", "b", "a_delta", "b_delta", "diff", "lo", "hi",
                  "verdict", "a_ppl", "b_ppl", "n_prompts"]),
                ("equal_fluency", ("Equal fluency: every method at the point kept on validation within "
                 "each perplexity budget (test prompts)"), None),
                ("mwe", "MWE A/B questions (40/10/50 split)", None),
                ("judges", "Judges' held-out accuracy", None)]
    for key, title, keys in sections:
        if tables.get(key):
            lines += [f"## {title}", "", _markdown(tables[key], keys), ""]
            (out / f"{key}.md").write_text(_markdown(tables[key], keys) + "\n")
    lines += ["## Plots", ""] + [f"![{f}]({f})" for f in report_plots.PLOTS if (out / f).is_file()]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def _markdown(rows: Sequence[dict], keys: Sequence[str] | None = None) -> str:
    keys = list(keys or dict.fromkeys(k for r in rows for k in r))

    def cell(v) -> str:
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)
