"""Merge the reports of a run split into parts (``svf eval --merge PART... --out DIR``).

A long evaluation runs as parts that each fit in a session (one model, some concepts each, or for
the equal-fluency stage alone also some of its methods); every part writes a whole report
directory. :func:`merge_reports` checks that the parts ran the same configuration on the same
model, on different concepts or on different equal-fluency methods of a concept (with the same
unsteered continuations), concatenates their tables, recomputes the equal-fluency verdicts from
the merged per-prompt shifts, and writes one report that lists each part with its command,
commit, machine and wall time.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from svf_kernels import SVFArgumentError

from ..training import TrainConfig
from .base_field import eval_train_config
from .config import EvalConfig
from .evaluate_fluency import verdicts
from .report import RunStatus, write_report
from .stages import TABLES

#: Configuration keys the parts may differ in.
PART_KEYS = ("concepts", "stages", "fluency_methods")


def _number(value: str) -> object:
    """A CSV cell as an int or float when it is one (so merged tables print like fresh ones)."""
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _read_part(part: Path) -> tuple[dict, dict, dict[str, list[dict]], list[dict]]:
    for name in ("config.json", "run.json"):
        if not (part / name).is_file():
            raise SVFArgumentError(f"{part} is not an svf eval report directory: no {name}")
    config = json.loads((part / "config.json").read_text())
    run = json.loads((part / "run.json").read_text())
    tables = {}
    for key in TABLES:
        path = part / f"{key}.csv"
        if path.is_file():
            with open(path, newline="") as f:
                tables[key] = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    examples = json.loads((part / "examples.json").read_text()) if (part / "examples.json").is_file() else []
    return config, run, tables, examples


def _config(raw: dict, concepts: Sequence[str]) -> EvalConfig:
    """The parts' configuration as an :class:`EvalConfig` over every part's concepts."""
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    train_known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in raw.items() if k in known}
    values["train"] = eval_train_config(**{k: v for k, v in raw["train"].items() if k in train_known})
    values["concepts"] = tuple(concepts)
    values["stages"] = tuple(values["stages"])
    return EvalConfig(**values)


#: Per table, the columns that identify a row that two parts of one concept both write (the
#: unsteered runs and the judges), which must then agree.
_SHARED_ROWS = {"fluency_sweep": ("concept", "method", "sign"), "fluency_prompts": ("concept", "method", "sign", "prompt"),
                "judges": ("concept",)}


def _repeated(table: str, row: dict, merged: list[dict], path: Path) -> bool:
    """Whether ``row`` (of ``path``) is a shared row already merged: an unsteered row of the
    equal-fluency tables or a judge's accuracy. It must equal the merged one (the parts ran the
    same configuration and seeds), else the parts cannot be merged."""
    keys = _SHARED_ROWS.get(table)
    if keys is None or (table != "judges" and row["method"] != "base"):
        return False
    ident = tuple(row[k] for k in keys)
    for other in merged:
        if tuple(other[k] for k in keys) == ident:
            if other != row:
                raise SVFArgumentError(f"{path}: its {table} row {ident} differs from an earlier part's "
                                       f"({row} vs {other}): the parts' unsteered runs differ")
            return True
    return False


def merge_reports(parts: Sequence[str | Path], out: str | Path) -> dict[str, list[dict]]:
    """Merge the report directories ``parts`` into ``out`` (see the module docstring); returns
    the merged tables. Raises :class:`SVFArgumentError` naming the part and the key when the
    parts differ in anything but their concepts, stages and equal-fluency methods, ran on
    different models, share a concept other than by disjoint equal-fluency methods, or differ in
    a shared unsteered run."""
    paths = [Path(p) for p in parts]
    if len(paths) < 2:
        raise SVFArgumentError(f"--merge needs at least two report directories, got {len(paths)}")
    out = Path(out)
    if any(p.resolve() == out.resolve() for p in paths):
        raise SVFArgumentError(f"out {str(out)!r} is one of the parts: merge into a new directory")
    read = [_read_part(p) for p in paths]
    first_cfg, first_run = read[0][0], read[0][1]
    concepts: list[str] = []
    methods: dict[str, set[str]] = {}  # concept -> equal-fluency methods merged so far
    for path, (cfg, run, _, _) in zip(paths, read):
        for key in sorted(set(cfg) | set(first_cfg)):
            if key not in PART_KEYS and cfg.get(key) != first_cfg.get(key):
                raise SVFArgumentError(f"{path} differs from {paths[0]} in {key!r}: {cfg.get(key)!r} vs "
                                       f"{first_cfg.get(key)!r}; only {list(PART_KEYS)} may differ between parts")
        if run["model"] != first_run["model"]:
            raise SVFArgumentError(f"{path} ran on {run['model']!r}, {paths[0]} on {first_run['model']!r}")
        for concept in cfg["concepts"]:
            if concept in methods:
                fluency_only = list(cfg["stages"]) == ["equal-fluency"]
                overlap = sorted(methods[concept] & set(cfg["fluency_methods"]))
                if not fluency_only or overlap:
                    why = f"methods {overlap}" if overlap else "stages other than equal-fluency"
                    raise SVFArgumentError(f"{path} repeats concept {concept!r} of an earlier part with {why}: "
                                           "parts share a concept only for disjoint equal-fluency methods")
                methods[concept] |= set(cfg["fluency_methods"])
            else:
                concepts.append(concept)
                methods[concept] = set(cfg["fluency_methods"])
    tables: dict[str, list[dict]] = {key: [] for key in TABLES}
    examples: list[dict] = []
    timings: dict[str, float] = {}
    for path, (_, run, part_tables, part_examples) in zip(paths, read):
        for key, rows in part_tables.items():
            tables[key] += [r for r in rows if not _repeated(key, r, tables[key], path)]
        examples += [e for e in part_examples if e not in examples]  # each part's unsteered one once
        timings.update({f"{path.name}: {k}": v for k, v in run["timings"].items() if k != "total"})
    timings["total"] = sum(run["timings"].get("total", 0.0) for _, run, _, _ in read)
    if tables["equal_fluency"] and tables["fluency_prompts"]:
        tables["fluency_verdicts"] = verdicts(tables["equal_fluency"], tables["fluency_prompts"],
                                              seed=int(first_cfg.get("seed", 0)))
    cfg = _config(first_cfg, concepts)
    steps = [k for k in timings if k != "total"]
    status = RunStatus(steps, done=steps, finished=all(run.get("complete") for _, run, _, _ in read))
    part_facts = [{"part": str(path), **{k: run[k] for k in ("command", "commit", "machine", "wall_min", "complete")}}
                  for path, (_, run, _, _) in zip(paths, read)]
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:  # each concept's choices made on validation, from the first part with them
        for choices in sorted(path.glob("*_choices.json")):
            if not (out / choices.name).exists():
                shutil.copyfile(choices, out / choices.name)
    command = "svf eval --merge " + " ".join(map(str, paths)) + f" --out {out}"
    write_report(out, tables, examples, cfg, timings, first_run["model"], command, status,
                 layers=first_run["layers"], parts=part_facts)
    return tables
