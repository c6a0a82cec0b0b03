"""The defaults decision from validation evidence (``svf.eval.defaults``): each variant against
``svf`` per equal-fluency cell, on ``val_delta`` only, tallied over the reports of both models."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from svf.eval.defaults import cell_votes, decide, library_defaults, main, read_report, tally
from svf_kernels import SVFArgumentError


def _row(concept, sign, budget, method, val, test=0.0):
    return {"concept": concept, "sign": sign, "budget": budget, "method": method,
            "val_delta": str(val), "delta": str(test)}


ROWS = [
    _row("a", "1", "1.25", "svf", 0.20, test=0.9),
    _row("a", "1", "1.25", "svf-natural", 0.30, test=-0.9),   # wins on validation, loses on test
    _row("a", "1", "1.25", "svf-inner", 0.20),                # equal: a tie
    _row("a", "1", "1.25", "caa", 0.90),                      # not a variant of the field
    _row("a", "-1", "1.25", "svf", 0.10),
    _row("a", "-1", "1.25", "svf-natural", 0.05),
    _row("a", "-1", "1.25", "svf-closed", 0.40),
    _row("b", "1", "1.5", "svf-precond", 0.40),               # no svf in this cell: no vote
]


def test_votes_read_validation_only():
    votes = cell_votes(ROWS, "m")
    got = {(v["concept"], v["sign"], v["variant"]): v["vote"] for v in votes}
    assert got == {("a", "1", "svf-inner"): "tie", ("a", "1", "svf-natural"): "win",
                   ("a", "-1", "svf-closed"): "win", ("a", "-1", "svf-natural"): "loss"}


def test_defaults_change_only_on_more_wins_than_losses():
    votes = cell_votes(ROWS, "m1") + cell_votes(ROWS, "m2")
    counts = {c["variant"]: c for c in tally(votes)}
    assert (counts["svf-natural"]["wins"], counts["svf-natural"]["losses"]) == (2, 2)
    assert (counts["svf-closed"]["wins"], counts["svf-closed"]["cells"]) == (2, 2)
    assert decide(tally(votes)) == {"direction": "gradient", "target": 0.9, "positions": "last"}
    better = votes + [dict(votes[0], variant="svf-precond", setting="direction", vote="win")]
    assert decide(tally(better))["direction"] == "preconditioned"


def test_reads_reports_and_prints_the_table(tmp_path, capsys):
    folder = tmp_path / "report"
    folder.mkdir()
    with open(folder / "equal_fluency.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(ROWS[0]))
        writer.writeheader()
        writer.writerows(ROWS)
    (folder / "run.json").write_text(json.dumps({"model": "tiny"}))
    assert read_report(folder)[0] == "tiny"
    assert main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| direction | svf-natural | 2 | 1 | 0 | 1 |" in out and "default target: 0.9 (the library's is None)" in out
    with pytest.raises(SVFArgumentError, match="no equal_fluency.csv"):
        read_report(tmp_path)


#: The equal-fluency reports of the two development models, committed with the package.
REPORTS = [Path(__file__).resolve().parents[1] / "docs" / "eval-fluency" / name
           for name in ("SmolLM2-135M-Instruct", "gemma-3-270m")]


def test_the_committed_evidence_against_the_library_defaults():
    """The committed reports of both models decide the direction, the target and the training
    positions the library uses (docs/EVALUATION.md, "Both models: the counts, and the
    defaults")."""
    votes = []
    for folder in REPORTS:
        model, rows = read_report(folder)
        votes += cell_votes(rows, model)
    assert {v["model"] for v in votes} == {"SmolLM2-135M-Instruct", "gemma-3-270m"}
    decision, library = decide(tally(votes)), library_defaults()
    assert decision == library == {"direction": "gradient", "target": None, "positions": "last"}
