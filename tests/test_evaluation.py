"""The likelihood evaluation end to end on a tiny random model with a synthetic concept."""

from __future__ import annotations

import csv

import torch

from svf import evaluation
from svf.concepts import Concept
from svf.data import ContrastivePair
from svf.training import TrainConfig


def _concept() -> Concept:
    pairs = tuple(ContrastivePair(f"good {i} yes yes", f"bad {i} no no") for i in range(30))
    prompts = tuple(f"prompt number {i}" for i in range(10))
    return Concept("toy", pairs, prompts, ("yes!", "yes yes"), ("no.", "no no"))


def test_likelihood_run_writes_every_method_and_direction(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    monkeypatch.setattr(evaluation, "load_concept", lambda name, n_pairs, n_completions: _concept())
    cfg = evaluation.EvalConfig(concepts=("toy",), train_layers=(0, 1, 2, 3), steer_layers=(1, 2),
                                sweep=(0.2, 0.6), train=TrainConfig(r=8, de=3, m=12, max_epochs=3, patience=1))
    rows = evaluation.run_likelihood(model, tok, cfg, tmp_path)
    got = {(r["method"], r["direction"]) for r in rows}
    methods = {"caa-1", "caa-multi", "svf-1", "svf-indep", "svf-shared"}
    assert {m for m, _ in got} >= methods
    assert got >= {(m, d) for m in methods for d in (1, -1)}
    for r in rows:
        assert r["n_test"] == 7  # 10 prompts: 3 validation, 7 test
        assert r["strength"] * r["direction"] in (0.2, 0.6)
        assert 0.0 <= r["steerable_rate"] <= 1.0 and 0.0 <= r["anti_steerable"] <= 1.0
        assert torch.isfinite(torch.tensor([r["mean_shift"], r["mean_slope"]])).all()
        assert r["layers"] in ("1", "2", "1+2")
    with open(tmp_path / "likelihood.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert (tmp_path / "likelihood.md").read_text().count("\n") == len(rows) + 2
    assert (tmp_path / "toy_choices.json").is_file()


def test_cli_eval_quick_writes_report(tiny, tmp_path, monkeypatch, capsys):
    """``svf eval --quick`` wiring: model loading, quick config, report directory."""
    from svf import cli

    model, tok = tiny
    monkeypatch.setattr(cli, "_load_model", lambda name: (model, tok))
    monkeypatch.setattr(evaluation, "load_concept", lambda name, n_pairs, n_completions: _concept())
    real_quick = evaluation.quick_config

    def tiny_quick(**overrides):  # the default layers do not exist in a 4-layer model
        return real_quick(train_layers=(0, 1, 2, 3), steer_layers=(1, 2),
                          train=TrainConfig(r=8, de=3, m=12, max_epochs=2, patience=1), **overrides)

    monkeypatch.setattr(evaluation, "quick_config", tiny_quick)
    assert cli.main(["eval", "--quick", "--concepts", "toy", "--out", str(tmp_path)]) == 0
    assert "| toy | svf-shared |" in capsys.readouterr().out
    assert (tmp_path / "likelihood.csv").is_file() and (tmp_path / "config.txt").is_file()
