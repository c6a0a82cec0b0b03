"""The stages of ``svf eval`` (importable without the evaluation's optional dependencies)."""

#: The stages a run can hold (``EvalConfig.stages``, ``svf eval --stages``), in running order.
STAGES = ("mwe", "likelihood", "open-ended", "long-form", "multi-attribute", "equal-fluency")
