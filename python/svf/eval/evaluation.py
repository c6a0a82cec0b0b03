"""``svf eval``: train each concept's fields, build every method, measure, write a report.

:func:`run_eval` checks its arguments, then runs the steps :func:`svf.eval.stages.plan` makes of
the configuration (:class:`svf.eval.config.EvalConfig`; the stages are
:data:`svf.eval.stages.STAGES`), timing each and rewriting the report
(:func:`svf.eval.report.write_report`) after each. The measures live in :mod:`svf.eval.metrics`,
the likelihood protocol in :mod:`svf.eval.evaluate_likelihood`, generation in
:mod:`svf.eval.evaluate_generation`, the A/B questions in :mod:`svf.eval.evaluate_mwe`, the
methods in :mod:`svf.eval.methods`. Every choice (the single layer of one-layer methods, the
likelihood total strength) is made on validation prompts; test prompts are read once, for the
report. Generation compares methods at fixed, matched total displacements, chosen before any run.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from svf_kernels import SVFArgumentError

from ..arguments import check_optional_bool, check_path, check_text, check_tokenizer, show
from ..concepts import Concept, load_concept
from ..hf import check_layers, check_model, num_layers
from ..progress import progress_bar
from . import evaluate_mwe
from .config import EvalConfig, with_model_layers
from .report import RunStatus, git_commit, layers_fact, write_report
from .stages import EvalRun, plan


def _cap(concept: Concept, n_prompts: int | None) -> Concept:
    """``concept`` with at most ``n_prompts`` prompts, validation and test in their 30/70 split."""
    if n_prompts is None or n_prompts >= len(concept.prompts):
        return concept
    n_val = max(1, round(0.3 * n_prompts))
    prompts = concept.validation_prompts[:n_val] + concept.test_prompts[: n_prompts - n_val]
    return dataclasses.replace(concept, prompts=tuple(prompts))


def run_eval(model, tokenizer, cfg: EvalConfig, out: Path, model_name: str = "",
             command: str = "", progress: bool | None = None,
             field_cache: Path | None = None) -> dict[str, list[dict]]:
    """Every concept, method and measure ``cfg`` selects; writes the report directory ``out``
    (Markdown tables, CSV, plots, ``README.md`` with the run's facts) and returns the tables'
    rows. The report is rewritten after every step and when a step raises
    (``KeyboardInterrupt`` included, which is raised again); its first lines say whether the run
    is complete (:class:`svf.eval.report.RunStatus`). ``progress``: the progress bars' rule of
    :func:`svf.progress.progress_bar` (None: on a terminal only; False: never).
    ``field_cache``: a directory where trained fields are kept and found again
    (:mod:`svf.eval.field_cache`; the parts of a split run then train once).

    Every argument (and every concept's data) is checked before anything runs or is written:
    a bad one raises :class:`SVFArgumentError` naming it."""
    check_model(model)
    check_tokenizer(tokenizer)
    if not isinstance(cfg, EvalConfig):
        raise SVFArgumentError(f"cfg must be an svf.eval.config.EvalConfig, got {show(cfg)}")
    cfg.validate()
    depth = num_layers(model)
    given, cfg = cfg, with_model_layers(cfg, depth)
    check_layers(model, cfg.train_layers, "cfg.train_layers")
    layers_line = layers_fact(cfg, given, depth)
    out = check_path(out, "out")
    if out.exists() and not out.is_dir():
        raise SVFArgumentError(f"out {str(out)!r} exists and is not a directory")
    check_text(model_name, "model_name", allow_empty=True)
    check_text(command, "command", allow_empty=True)
    check_optional_bool(progress, "progress")
    if field_cache is not None:
        field_cache = check_path(field_cache, "field_cache")
        if field_cache.exists() and not field_cache.is_dir():
            raise SVFArgumentError(f"field_cache {str(field_cache)!r} exists and is not a directory")
    concepts: dict[str, Concept] = {}
    uncapped: dict[str, Concept] = {}
    for name in cfg.concepts:
        try:
            uncapped[name] = load_concept(name, cfg.n_pairs, cfg.n_completions)
            concepts[name] = _cap(uncapped[name], cfg.n_prompts)
        except SVFArgumentError as exc:
            raise SVFArgumentError(f"cfg.concepts: concept {name!r} cannot be loaded: {exc}") from None
    for behavior in cfg.mwe_behaviors:
        try:
            evaluate_mwe.load_mwe(behavior)
        except SVFArgumentError as exc:
            raise SVFArgumentError(f"cfg.mwe_behaviors: {behavior!r} cannot be loaded: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    run = EvalRun(model, tokenizer, cfg, concepts, out, uncapped=uncapped, model_name=model_name,
                  progress=progress, field_cache=field_cache)
    steps = plan(cfg)
    status = RunStatus([step.name for step in steps])
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    commit = git_commit()  # the code this run imported, whatever is checked out later

    def flush() -> None:  # the report so far: a late failure loses nothing already measured
        timings["total"] = time.perf_counter() - t0
        status.done = [k for k in timings if k != "total"]
        write_report(out, run.tables, run.examples, cfg, timings, model_name, command, status, layers=layers_line,
                     commit=commit)

    try:
        for step in progress_bar(steps, desc="svf eval", enabled=progress):
            t = time.perf_counter()
            step.do(run)
            timings[step.name] = time.perf_counter() - t
            flush()
    except BaseException as exc:  # Ctrl-C too: the report says where and why it stopped
        status.stop(exc)
        flush()
        raise
    status.finished = True
    flush()
    return run.tables
