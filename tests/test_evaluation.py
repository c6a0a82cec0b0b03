"""``svf eval`` end to end on a tiny random model with synthetic concepts: every method, every
table and every plot of the report."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import tiny_model

from svf import concepts
from svf.concepts import Concept
from svf.data import ContrastivePair
from svf.eval import evaluate_mwe, evaluation
from svf.training import TrainConfig

WORDS = {"toy": ("good", "bad"), "tone": ("formal", "casual"), "sea": ("ocean", "desert")}
STEERED_METHODS = {"caa-1", "caa-multi", "knn", "svf-1", "svf-indep", "svf-shared"}
FILES = ["README.md", "config.json", "examples.json", "likelihood.csv", "likelihood.md", "sweeps.csv",
         "slopes.csv", "open_ended.csv", "open_ended.md", "long_form.csv", "long_form.md",
         "multi_attribute.csv", "multi_attribute.md", "mwe.csv", "mwe.md", "judges.csv",
         "gap_vs_alpha.png", "slopes.png", "open_ended.png", "long_form.png"]


def _concept(name: str, n_pairs=30, n_completions=2) -> Concept:
    pos, neg = WORDS[name]
    pairs = tuple(ContrastivePair(f"{pos} {i} {pos} yes", f"{neg} {i} {neg} no") for i in range(n_pairs))
    prompts = tuple(f"prompt number {i}" for i in range(10))
    return Concept(name, pairs, prompts, (f"{pos}!", f"{pos} {pos}"), (f"{neg}.", f"{neg} {neg}"))


def _mwe_items(behavior: str, source: str = "all") -> list[dict]:
    return [{"question": f"Q{i}: pick\n(A) yes\n(B) no", "answer_matching_behavior": "(A)" if i % 2 else "(B)",
             "answer_not_matching_behavior": "(B)" if i % 2 else "(A)"} for i in range(60)]


def _tiny_config(**overrides) -> dict:
    base = {"train_layers": (0, 1, 2, 3), "steer_layers": (1, 2), "sweep": (0.2, 0.6), "knn_k": 4,
            "directions": (1, -1), "n_prompts": None, "gen_prompts": 5,
            "train": TrainConfig(r=8, de=3, m=12, max_epochs=2, patience=1), "gen_total_strengths": (0.5,),
            "gen_samples": 2, "gen_tokens": 6, "long_refresh": (1, 2), "long_prompts": 2, "long_tokens": 16,
            "long_window": 8, "multi_samples": 1, "mwe_behaviors": ("toy-behaviour",), "mwe_items": None}
    base.update(overrides)
    return base


@pytest.fixture
def toy_world(monkeypatch, char_tok):
    monkeypatch.setattr(evaluation, "load_concept", lambda name, n_pairs, n_completions: _concept(name))
    monkeypatch.setattr(evaluate_mwe, "load_mwe", _mwe_items)
    monkeypatch.setattr(concepts, "CONCEPTS", (*concepts.CONCEPTS, *WORDS))  # `svf eval --concepts` checks names
    return tiny_model("llama", vocab_size=len(char_tok)), char_tok


def test_eval_quick_cli_writes_every_table_and_plot(toy_world, tmp_path, monkeypatch, capsys):
    """``svf eval --quick`` end to end on a tiny model (quick configuration with the tiny
    model's layers and sizes): every method, measure, table and plot of the report."""
    from svf.cli import commands as cli

    model, tok = toy_world
    monkeypatch.setattr(cli, "_load_model", lambda name: (model, tok))
    real_quick, real_run = evaluation.quick_config, evaluation.run_eval
    seen = {}

    def tiny_quick(**overrides):  # the default layers do not exist in a 4-layer model
        return real_quick(**{**_tiny_config(), **overrides})

    def run_and_keep(*args, **kwargs):
        seen["tables"] = real_run(*args, **kwargs)
        return seen["tables"]

    monkeypatch.setattr(evaluation, "quick_config", tiny_quick)
    monkeypatch.setattr(evaluation, "run_eval", run_and_keep)
    assert cli.main(["eval", "--quick", "--concepts", *WORDS, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| toy | svf-shared |" in out and "wrote" in out
    assert "svf eval --quick" in (tmp_path / "README.md").read_text()
    tables = seen["tables"]
    for f in FILES:
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    lik = tables["likelihood"]
    assert {(r["concept"], r["method"], r["direction"]) for r in lik} == {
        (c, m, d) for c in WORDS for m in STEERED_METHODS for d in (1, -1)}
    for r in lik:
        assert r["n_test"] == 7  # 10 prompts: 3 validation, 7 test
        assert r["total_strength"] * r["direction"] in (0.2, 0.6)
        assert 0.0 <= r["steerable_rate"] <= 1.0 and 0.0 <= r["anti_steerable"] <= 1.0
        assert torch.isfinite(torch.tensor([r["mean_shift"], r["mean_slope"]])).all()
    assert len(tables["slopes"]) == len(lik) * 7
    opened = tables["open_ended"]
    assert {(r["concept"], r["method"], r["direction"]) for r in opened} == {
        (c, m, d) for c in WORDS for m in STEERED_METHODS for d in (1, -1)} | {(c, "base", 0) for c in WORDS}
    base_score = {r["concept"]: r["embed_score"] for r in opened if r["method"] == "base"}
    for r in opened:
        assert r["samples"] == 2 and r["n_prompts"] == 5 and -1.0 <= r["embed_score"] <= 1.0
        assert r["ppl_median"] > 1.0 and 0.0 <= r["distinct2"] <= 1.0
        if r["method"] != "base":
            assert 0.0 <= r["embed_right"] + r["embed_wrong"] <= 1.0
            want = r["direction"] * (r["embed_score"] - base_score[r["concept"]])
            assert r["embed_delta"] == pytest.approx(want, abs=1e-9)
    runs = {r["run"] for r in tables["long_form"]}
    assert runs == {"base", "caa-multi", "svf-shared K=1", "svf-shared K=2"}
    assert {r["window"] for r in tables["long_form"]} == {0, 1}
    assert {r["concept"] for r in tables["long_form"]} == {"toy"}
    multi = tables["multi_attribute"]
    assert [(r["combo"], r["method"]) for r in multi] == [
        ("", "base"), ("toy+tone", "softmin-svf"), ("toy+tone", "summed-caa"),
        ("toy+tone+sea", "softmin-svf"), ("toy+tone+sea", "summed-caa")]
    assert "sea_delta" in multi[-1] and "sea_delta" not in multi[1]
    assert {r["method"] for r in tables["mwe"]} >= {"caa-multi", "svf-shared"}
    assert [r["concept"] for r in tables["judges"]] == list(WORDS)
    with open(tmp_path / "likelihood.csv") as f:
        assert len(list(csv.DictReader(f))) == len(lik)
    readme = (tmp_path / "README.md").read_text()
    assert "wall time" in readme and "commit" in readme and "![slopes.png](slopes.png)" in readme


def test_eval_without_mwe_writes_no_mwe_table(toy_world, tmp_path):
    model, tok = toy_world
    cfg = evaluation.EvalConfig(concepts=("toy",), **_tiny_config(mwe_behaviors=()))
    tables = evaluation.run_eval(model, tok, cfg, tmp_path)
    assert not tables["mwe"] and not tables["multi_attribute"] and not (tmp_path / "mwe.csv").exists()
    assert (tmp_path / "likelihood.csv").is_file() and (tmp_path / "long_form.png").is_file()
