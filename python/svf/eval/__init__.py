"""Evaluation of steering methods: ``svf eval`` and its measures, judges, plots and baselines.

The orchestration is :mod:`svf.eval.evaluation` (``run_eval``), what it runs
:mod:`svf.eval.config` (``EvalConfig``), its stages :mod:`svf.eval.stages` (``STAGES``, ``plan``)
and its report :mod:`svf.eval.report` (``write_report``); the measures are in
:mod:`svf.eval.metrics`, the compared methods (CAA, KNN, SVF variants at matched displacement)
in :mod:`svf.eval.methods` and :mod:`svf.eval.knn_field`, the independent judges in
:mod:`svf.eval.judges`. Imports from the core library only; the core never imports this package.
"""
