"""The stages of ``svf eval`` and the report's first lines.

One list of stage objects (``svf.eval.stages.STAGES``) gives the names ``--stages`` accepts, and
``plan`` the steps a run takes, in order: the run does exactly those steps and the report names
exactly those. The report says in its first lines whether the run finished: a run that stops part way (Ctrl-C, an exception) still writes what it measured, so its report
must not read as a complete one: its title says it stopped before the end, with the stage, the
reason and the stages that have no results. A report written while the run is going says so
too (a killed run leaves that one). Only a run whose every stage finished says "complete".
The stages here are stand-ins (instant); the orchestration and report writing are the real ones.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers import tiny_model

from svf.concepts import Concept
from svf.data import ContrastivePair
from svf.eval import config as eval_config
from svf.eval import evaluate_mwe, evaluation, judges, stages
from svf.eval.config import EvalConfig, quick_config
from svf.eval.stages import STAGE_NAMES, STAGES, Prepared, plan
from svf.training import TrainConfig

CONCEPTS = ("sentiment", "formality")
STEPS = ["mwe", "sentiment: train + choose layers", "sentiment: likelihood", "sentiment: open-ended",
          "sentiment: long-form", "sentiment: equal-fluency", "formality: train + choose layers",
          "formality: likelihood", "formality: open-ended", "formality: equal-fluency", "multi-attribute"]
TINY = {"concepts": CONCEPTS, "train_layers": (0, 1, 2, 3), "steer_layers": (1, 2), "n_prompts": None,
        "train": TrainConfig(r=8, de=3, m=12, max_epochs=1, patience=1),
        "mwe_behaviors": ("toy-behaviour",), "mwe_items": None}


class Stages:
    """Instant stand-ins for the stages; ``fail`` maps a stage name to the exception it raises."""

    def __init__(self, fail: dict[str, BaseException] | None = None) -> None:
        self.fail, self.reports_seen = fail or {}, {}
        self.out: Path | None = None
        self.entered: list[str] = []

    def enter(self, stage: str) -> None:
        self.entered.append(stage)
        if self.out is not None and (self.out / "README.md").is_file():
            self.reports_seen[stage] = (self.out / "README.md").read_text()
        if stage in self.fail:
            raise self.fail[stage]

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def concept(name, n_pairs=None, n_completions=2):
            pairs = tuple(ContrastivePair(f"yes {i}", f"no {i}") for i in range(8))
            return Concept(name, pairs, tuple(f"prompt {i}" for i in range(10)), ("yes",), ("no",))

        def run_mwe(*args, **kwargs):
            self.enter("mwe")
            return [{"behavior": "toy-behaviour", "method": "svf-shared", "accuracy": 0.5}]

        def prepare(model, tokenizer, concept, *args, **kwargs):
            self.enter(f"{concept.name}: train + choose layers")
            return Prepared(methods={}, scale=1.0, shared=None, info={})

        def evaluate_all(model, tokenizer, concept, *args, **kwargs):
            self.enter(f"{concept.name}: likelihood")
            return []

        def concept_judges(concept):
            return {"embed": lambda texts: [0.0] * len(texts)}, {"embed_heldout_accuracy": 1.0}

        def open_ended(model, tokenizer, concept, *args, **kwargs):
            self.enter(f"{concept.name}: open-ended")
            return []

        def long_form(model, tokenizer, concept, *args, **kwargs):
            self.enter(f"{concept.name}: long-form")
            return []

        def multi_attribute(*args, **kwargs):
            self.enter("multi-attribute")
            return []

        def equal_fluency(model, tokenizer, concept, *args, **kwargs):
            self.enter(f"{concept.name}: equal-fluency")
            return [], [], []

        monkeypatch.setattr(evaluation, "load_concept", concept)
        monkeypatch.setattr(evaluate_mwe, "load_mwe", lambda behavior, source="all": [])
        monkeypatch.setattr(evaluate_mwe, "run_mwe", run_mwe)
        monkeypatch.setattr(judges, "concept_judges", concept_judges)
        for name, stub in [("prepare", prepare), ("evaluate_all", evaluate_all),
                           ("open_ended", open_ended), ("long_form", long_form),
                           ("multi_attribute", multi_attribute), ("equal_fluency", equal_fluency),
                           ("fluency_methods", lambda *args, **kwargs: {})]:
            monkeypatch.setattr(stages, name, stub)


@pytest.fixture
def tiny(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok)), char_tok


def _run(tiny, tmp_path: Path, monkeypatch, fail: dict[str, BaseException] | None = None) -> tuple[Stages, str]:
    stages = Stages(fail)
    stages.out = tmp_path
    stages.install(monkeypatch)
    model, tok = tiny
    cfg = quick_config(**TINY)
    if fail:
        with pytest.raises(type(next(iter(fail.values())))):
            evaluation.run_eval(model, tok, cfg, tmp_path)
    else:
        evaluation.run_eval(model, tok, cfg, tmp_path)
    return stages, (tmp_path / "README.md").read_text()


def test_complete_run_says_complete(tiny, tmp_path, monkeypatch):
    _, report = _run(tiny, tmp_path, monkeypatch)
    lines = report.splitlines()
    assert lines[0] == "# svf eval report: complete"
    assert "stopped" not in report and "incomplete" not in report
    assert f"Every stage finished ({len(STEPS)} of {len(STEPS)})" in lines[2]
    for stage in STEPS:  # the stages the status counts are the ones the run times
        assert f"- {stage}: " in report


@pytest.mark.parametrize(("stage", "exc", "reason"), [
    ("formality: likelihood", KeyboardInterrupt(), "interrupted (KeyboardInterrupt)"),
    ("sentiment: long-form", RuntimeError("judge failed\nsecond line of the message"),
     "RuntimeError: judge failed"),
    ("mwe", ValueError("bad item"), "ValueError: bad item"),
])
def test_stopped_run_says_so_first(tiny, tmp_path, monkeypatch, stage, exc, reason):
    _, report = _run(tiny, tmp_path, monkeypatch, fail={stage: exc})
    lines = report.splitlines()
    assert lines[0] == "# svf eval report: stopped before the end"
    missing = STEPS[STEPS.index(stage):]
    assert lines[2].startswith(f"**The run stopped during stage `{stage}`: {reason}.**")
    assert "second line" not in report
    assert lines[2].endswith("Stages with no results: " + ", ".join(f"`{s}`" for s in missing) + ".")
    assert "complete" not in lines[0] + lines[2]
    if stage != "mwe":  # what finished before the stop is still reported
        with open(tmp_path / "mwe.csv") as f:
            assert [r["behavior"] for r in csv.DictReader(f)] == ["toy-behaviour"]
        assert "## MWE A/B questions" in report


def test_report_written_while_running_says_incomplete(tiny, tmp_path, monkeypatch):
    """A run killed outright (no exception to catch) leaves its last rewrite: not complete."""
    stages, _ = _run(tiny, tmp_path, monkeypatch)
    during = stages.reports_seen["formality: train + choose layers"]  # rewritten after the first concept
    lines = during.splitlines()
    assert lines[0] == "# svf eval report: incomplete, written while the run was going"
    assert lines[2].startswith("**Written after 6 of 11 stages, before stage `formality: train + choose layers`.**")
    assert "complete" not in lines[0].replace("incomplete", "")


def test_cli_interrupted_eval_exits_130_with_a_stopped_report(tiny, tmp_path, monkeypatch, capsys):
    from svf.cli import commands as cli

    Stages({"sentiment: open-ended": KeyboardInterrupt()}).install(monkeypatch)
    monkeypatch.setattr(cli, "_load_model", lambda name: tiny)
    real_quick = eval_config.quick_config
    monkeypatch.setattr(eval_config, "quick_config", lambda **kw: real_quick(**{**TINY, **kw}))
    assert cli.main(["eval", "--quick", "--concepts", *CONCEPTS, "--out", str(tmp_path)]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "\r" not in err  # stderr is no terminal: no progress-bar frames
    report = (tmp_path / "README.md").read_text().splitlines()
    assert report[0] == "# svf eval report: stopped before the end"
    assert report[2].startswith("**The run stopped during stage `sentiment: open-ended`: interrupted")


# -- the one list of stages --------------------------------------------------------------------


def test_stage_names_are_the_stage_objects_names(capsys):
    """``EvalConfig.stages`` and ``svf eval --stages`` take exactly the names of the stage
    objects; an unknown name is refused, naming every choice."""
    from svf.cli.commands import build_parser

    assert STAGE_NAMES == tuple(stage.name for stage in STAGES)
    assert EvalConfig().stages == STAGE_NAMES
    parser = build_parser()
    assert parser.parse_args(["eval", "--stages", *STAGE_NAMES]).stages == list(STAGE_NAMES)
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "--stages", "likelihood", "speed"])
    err = capsys.readouterr().err
    assert "unknown stage 'speed'" in err and all(name in err for name in STAGE_NAMES)
    with pytest.raises(ValueError, match="speed") as refused:
        EvalConfig(stages=("likelihood", "speed"))
    assert all(name in str(refused.value) for name in STAGE_NAMES)


@pytest.mark.parametrize(("overrides", "steps"), [
    ({}, STEPS),
    ({"stages": ("long-form",)},  # the first concept only: the second one is not trained
     ["sentiment: train + choose layers", "sentiment: long-form"]),
    ({"stages": ("multi-attribute", "mwe")},  # reads every concept's fields: both are trained
     ["mwe", "sentiment: train + choose layers", "formality: train + choose layers", "multi-attribute"]),
    ({"stages": ("multi-attribute", "likelihood"), "concepts": ("formality",)},  # one concept: no mix
     ["formality: train + choose layers", "formality: likelihood"]),
    ({"stages": ("equal-fluency", "mwe"), "mwe_behaviors": ()},  # no behaviours: no MWE stage
     ["sentiment: train + choose layers", "sentiment: equal-fluency", "formality: train + choose layers",
      "formality: equal-fluency"]),
])
def test_the_stage_list_drives_the_names_and_the_run(tiny, tmp_path, monkeypatch, overrides, steps):
    """The run does the steps ``plan`` names, in that order, and the report times exactly those."""
    recorder = Stages()
    recorder.install(monkeypatch)
    model, tok = tiny
    cfg = quick_config(**{**TINY, **overrides})
    assert [step.name for step in plan(cfg)] == steps
    evaluation.run_eval(model, tok, cfg, tmp_path)
    assert recorder.entered == steps
    report = (tmp_path / "README.md").read_text()
    timed = report.split("## Time per stage (s)")[1].split("\n\n")[1].splitlines()
    assert [line.rsplit(": ", 1)[0].removeprefix("- ") for line in timed] == [*steps, "total"]
    assert f"Every stage finished ({len(steps)} of {len(steps)})" in report


def test_cli_no_progress_reaches_run_eval(tiny, tmp_path, monkeypatch):
    from svf.cli import commands as cli

    seen = []
    monkeypatch.setattr(cli, "_load_model", lambda name: tiny)
    monkeypatch.setattr(evaluation, "run_eval", lambda *args, **kwargs: seen.append(kwargs["progress"]))
    for flag, want in (([], None), (["--no-progress"], False)):
        assert cli.main(["eval", "--quick", "--no-mwe", "--out", str(tmp_path), *flag]) == 0
        assert seen.pop() is want
