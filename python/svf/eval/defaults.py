"""What the validation data say about a field's defaults: direction, target, training positions.

Each choice is a variant of the evaluation's base field (``svf``: gradient direction, open loop,
scorer trained on the last token) that differs in that one setting (``SETTINGS``). In every cell of an
equal-fluency report (concept, direction of steering, budget) the variant and ``svf`` each kept
the strength that moved the judge most on **validation** within the budget; the cell votes for
whichever of the two moved it further there (``val_delta``; equal: a tie). Test shifts are not
read. A setting takes a variant's value when the variant wins more cells than it loses across
the reports given (one per development model); the command also prints the library's defaults
(:func:`library_defaults`) beside that decision.

    python -m svf.eval.defaults docs/eval-fluency/SmolLM2-135M-Instruct docs/eval-fluency/gemma-3-270m
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from svf_kernels import SVFArgumentError

from ..steering_field import SteeringField
from ..training import TrainConfig

#: setting -> (the base field's value, {variant method: the value it tries}); a target of None
#: is the open loop.
SETTINGS: dict[str, tuple[object, dict[str, object]]] = {
    "direction": ("gradient", {"svf-precond": "preconditioned", "svf-natural": "natural"}),
    "target": (None, {"svf-closed": 0.9}),
    "positions": ("last", {"svf-inner": "inner"}),
}


def library_defaults() -> dict[str, object]:
    """The library's defaults for each setting: the direction and target a new field steers
    with (:class:`~svf.steering_field.SteeringField`), the positions its scorer trains on
    (:class:`~svf.training.TrainConfig`)."""
    field_defaults = {f.name: f.default for f in dataclasses.fields(SteeringField)}
    return {"direction": field_defaults["default_direction"],
            "target": field_defaults["default_target"], "positions": TrainConfig().positions}


def cell_votes(rows: Sequence[Mapping[str, str]], model: str) -> list[dict]:
    """One vote per (cell, variant) of ``rows`` (an ``equal_fluency.csv``) where both the
    variant and ``svf`` were run: ``win`` / ``tie`` / ``loss`` of the variant on validation."""
    kept = {(r["concept"], r["sign"], r["budget"], r["method"]): float(r["val_delta"]) for r in rows}
    votes = []
    for (concept, sign, budget, method), value in sorted(kept.items()):
        base = kept.get((concept, sign, budget, "svf"))
        setting = next((s for s, (_, variants) in SETTINGS.items() if method in variants), None)
        if setting is None or base is None:
            continue
        verdict = "win" if value > base else "loss" if value < base else "tie"
        votes.append({"model": model, "concept": concept, "sign": sign, "budget": budget,
                      "setting": setting, "variant": method, "val_delta": value,
                      "svf_val_delta": base, "vote": verdict})
    return votes


def tally(votes: Sequence[Mapping]) -> list[dict]:
    """Per setting and variant: wins, ties and losses over all cells."""
    out = []
    for setting, (_, variants) in SETTINGS.items():
        for variant in variants:
            mine = [v["vote"] for v in votes if v["variant"] == variant]
            if mine:
                out.append({"setting": setting, "variant": variant, "cells": len(mine),
                            "wins": mine.count("win"), "ties": mine.count("tie"),
                            "losses": mine.count("loss")})
    return out


def decide(counts: Sequence[Mapping]) -> dict[str, object]:
    """Each setting's default that follows from :func:`tally`: the value of the variant with
    the most wins over losses, when it wins more cells than it loses; else the base value."""
    out = {}
    for setting, (current, variants) in SETTINGS.items():
        best = max((c for c in counts if c["setting"] == setting),
                   key=lambda c: c["wins"] - c["losses"], default=None)
        out[setting] = variants[best["variant"]] if best and best["wins"] > best["losses"] \
            else current
    return out


def read_report(folder: Path) -> tuple[str, list[dict]]:
    """A report directory's model name (``run.json``) and ``equal_fluency.csv`` rows."""
    table = folder / "equal_fluency.csv"
    if not table.is_file():
        raise SVFArgumentError(f"{folder}: no equal_fluency.csv (not an equal-fluency report)")
    run = json.loads((folder / "run.json").read_text()) if (folder / "run.json").is_file() else {}
    model = str(run.get("model", folder.name))
    with open(table, newline="") as f:
        return model, list(csv.DictReader(f))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", type=Path, help="equal-fluency report directories")
    args = parser.parse_args(argv)
    votes = []
    for folder in args.reports:
        model, rows = read_report(folder)
        votes += cell_votes(rows, model)
    counts = tally(votes)
    print("| setting | variant | cells | wins | ties | losses |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t in counts:
        print(f"| {t['setting']} | {t['variant']} | {t['cells']} | {t['wins']} | {t['ties']} | "
              f"{t['losses']} |")
    print()
    library = library_defaults()
    for setting, value in decide(counts).items():
        agrees = "as the library's" if library[setting] == value else \
            f"the library's is {library[setting]!r}"
        print(f"default {setting}: {value!r} ({agrees})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
