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
from svf.eval import config as eval_config
from svf.eval import evaluate_mwe, evaluation, judges
from svf.eval.config import EvalConfig
from svf.eval.stages import plan
from svf.training import TrainConfig

WORDS = {"toy": ("good", "bad"), "tone": ("formal", "casual"), "sea": ("ocean", "desert")}
STEERED_METHODS = {"caa-1", "caa-multi", "knn", "svf-1", "svf-indep", "svf-shared"}
FILES = ["README.md", "config.json", "examples.json", "likelihood.csv", "likelihood.md", "sweeps.csv",
         "slopes.csv", "open_ended.csv", "open_ended.md", "long_form.csv", "long_form.md",
         "multi_attribute.csv", "multi_attribute.md", "mwe.csv", "mwe.md", "judges.csv",
         "gap_vs_alpha.png", "slopes.png", "open_ended.png", "long_form.png", "fluency_sweep.csv",
         "equal_fluency.csv", "equal_fluency.md", "fluency_verdicts.csv", "fluency_verdicts.md",
         "equal_fluency.png"]
FLUENCY_METHODS = {"caa-multi", "knn", "svf", "svf-precond", "svf-closed", "svf-precond-closed"}


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
            "signs": (1, -1), "n_prompts": None, "gen_prompts": 5,
            "train": TrainConfig(r=8, de=3, m=12, max_epochs=2, patience=1), "gen_total_strengths": (0.5,),
            "gen_samples": 2, "gen_tokens": 6, "long_refresh": (1, 2), "long_prompts": 2, "long_tokens": 16,
            "long_window": 8, "multi_samples": 1, "mwe_behaviors": ("toy-behaviour",), "mwe_items": None,
            "fluency_strengths": (0.5, 2.0), "fluency_budgets": (1.25, 100.0), "fluency_val_prompts": 3,
            "fluency_test_prompts": 4, "fluency_tokens": 6}
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
    real_quick, real_run = eval_config.quick_config, evaluation.run_eval
    seen = {}

    def tiny_quick(**overrides):  # the default layers do not exist in a 4-layer model
        return real_quick(**{**_tiny_config(), **overrides})

    def run_and_keep(*args, **kwargs):
        seen["tables"] = real_run(*args, **kwargs)
        return seen["tables"]

    monkeypatch.setattr(eval_config, "quick_config", tiny_quick)
    monkeypatch.setattr(evaluation, "run_eval", run_and_keep)
    assert cli.main(["eval", "--quick", "--concepts", *WORDS, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| toy | svf-shared |" in out and "wrote" in out
    assert "svf eval --quick" in (tmp_path / "README.md").read_text()
    tables = seen["tables"]
    for f in FILES:
        assert (tmp_path / f).is_file() and (tmp_path / f).stat().st_size > 0, f
    lik = tables["likelihood"]
    assert {(r["concept"], r["method"], r["sign"]) for r in lik} == {
        (c, m, sg) for c in WORDS for m in STEERED_METHODS for sg in (1, -1)}
    for r in lik:
        assert r["n_test"] == 7  # 10 prompts: 3 validation, 7 test
        assert r["total_strength"] * r["sign"] in (0.2, 0.6)
        assert 0.0 <= r["steerable_rate"] <= 1.0 and 0.0 <= r["anti_steerable"] <= 1.0
        assert torch.isfinite(torch.tensor([r["mean_shift"], r["mean_slope"]])).all()
    assert len(tables["slopes"]) == len(lik) * 7
    opened = tables["open_ended"]
    assert {(r["concept"], r["method"], r["sign"]) for r in opened} == {
        (c, m, sg) for c in WORDS for m in STEERED_METHODS for sg in (1, -1)} | {(c, "base", 0) for c in WORDS}
    base_score = {r["concept"]: r["embed_score"] for r in opened if r["method"] == "base"}
    for r in opened:
        assert r["samples"] == 2 and r["n_prompts"] == 5 and -1.0 <= r["embed_score"] <= 1.0
        assert r["ppl_median"] > 1.0 and 0.0 <= r["distinct2"] <= 1.0
        if r["method"] != "base":
            assert 0.0 <= r["embed_right"] + r["embed_wrong"] <= 1.0
            want = r["sign"] * (r["embed_score"] - base_score[r["concept"]])
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
    _check_fluency_tables(tables)


def _check_fluency_tables(tables: dict, concepts=tuple(WORDS), signs=(1, -1)) -> None:
    """Every method swept on validation, one row per budget, sign and method on test at a
    strength the validation sweep allows, and one verdict per concept, budget and sign."""
    sweep, chosen = tables["fluency_sweep"], tables["equal_fluency"]
    assert {(r["concept"], r["method"], r["sign"], r["total_strength"]) for r in sweep} == {
        (c, m, sg, t) for c in concepts for m in FLUENCY_METHODS for sg in signs for t in (0.5, 2.0)
    } | {(c, "base", 0, 0.0) for c in concepts}
    assert all(r["n_prompts"] == 3 for r in sweep)
    for r in chosen:
        assert r["n_prompts"] == 4
        base_ppl = next(x["ppl_median"] for x in sweep if x["concept"] == r["concept"] and x["method"] == "base")
        rows = [x for x in sweep if (x["concept"], x["method"], x["sign"]) ==
                (r["concept"], r["method"], r["sign"])]
        allowed = [x for x in rows if x["ppl_median"] <= r["budget"] * base_ppl and x["delta"] > 0]
        if allowed:  # the strongest shift within the budget was kept
            best = max(allowed, key=lambda x: (x["delta"], -x["total_strength"]))
            assert (r["total_strength"], r["val_delta"]) == (best["total_strength"], best["delta"])
        else:  # nothing within the budget: not moved
            assert r["total_strength"] == 0.0 and r["delta"] == 0.0 and r["ppl_median"] == r["base_ppl"]
    assert {(r["concept"], r["budget"], r["sign"], r["method"]) for r in chosen} == {
        (c, b, sg, m) for c in concepts for b in (1.25, 100.0) for sg in signs for m in FLUENCY_METHODS}
    verdicts = tables["fluency_verdicts"]
    assert {(r["concept"], r["budget"], r["sign"]) for r in verdicts} == {
        (c, b, sg) for c in concepts for b in (1.25, 100.0) for sg in signs}
    for v in verdicts:
        assert v["svf_at_least_caa"] == (v["svf_delta"] >= v["caa_delta"])


def test_eval_stages_runs_only_the_equal_fluency_comparison(toy_world, tmp_path):
    model, tok = toy_world
    cfg = EvalConfig(concepts=("toy",), **_tiny_config(stages=("equal-fluency",)))
    assert [step.name for step in plan(cfg)] == ["toy: train + choose layers", "toy: equal-fluency"]
    tables = evaluation.run_eval(model, tok, cfg, tmp_path)
    assert not tables["likelihood"] and not tables["open_ended"] and not tables["mwe"]
    _check_fluency_tables(tables, concepts=("toy",))
    assert (tmp_path / "equal_fluency.png").is_file() and not (tmp_path / "likelihood.csv").exists()
    assert "svf eval report: complete" in (tmp_path / "README.md").read_text()


def test_choose_strength_keeps_the_strongest_shift_within_the_budget():
    from svf.eval.evaluate_fluency import choose_strength

    rows = [{"total_strength": 0.1, "delta": 0.1, "ppl_median": 5.0},
            {"total_strength": 0.2, "delta": 0.3, "ppl_median": 6.0},
            {"total_strength": 0.4, "delta": 0.5, "ppl_median": 9.0},
            {"total_strength": 0.8, "delta": -0.2, "ppl_median": 5.0}]
    assert choose_strength(rows, 5.0, 1.25)["total_strength"] == 0.2
    assert choose_strength(rows, 5.0, 2.0)["total_strength"] == 0.4
    assert choose_strength(rows, 3.0, 1.25) is None  # nothing within the budget
    assert choose_strength(rows[3:], 5.0, 2.0) is None  # no shift the right way


def test_eval_without_mwe_writes_no_mwe_table(toy_world, tmp_path):
    model, tok = toy_world
    cfg = EvalConfig(concepts=("toy",), **_tiny_config(mwe_behaviors=()))
    tables = evaluation.run_eval(model, tok, cfg, tmp_path)
    assert not tables["mwe"] and not tables["multi_attribute"] and not (tmp_path / "mwe.csv").exists()
    assert (tmp_path / "likelihood.csv").is_file() and (tmp_path / "long_form.png").is_file()


@pytest.fixture
def cheap_judges(monkeypatch):
    """A deterministic stand-in for the sentence-encoder judges (the layer tests below are about
    layers; the judges are exercised above)."""
    def judge(texts):
        return [(sum(map(ord, t)) % 101) / 50.0 - 1.0 for t in texts]

    monkeypatch.setattr(judges, "concept_judges",
                        lambda concept: ({"embed": judge}, {"embed_heldout_accuracy": 1.0, "embed_n_heldout": 0}))


def _no_layers(**overrides) -> dict:
    """The tiny configuration without layers (derived from the model's depth), shrunk further:
    one sign, one sweep point, 4 prompts (1 validation, 3 test), short generations."""
    base = _tiny_config(**{"signs": (1,), "sweep": (0.2,), "n_prompts": 4, "gen_prompts": 2,
                           "gen_samples": 1, "gen_tokens": 4, "long_refresh": (1,), "long_prompts": 1,
                           "long_tokens": 8, "long_window": 4, "mwe_items": 20, **overrides})
    return {k: v for k, v in base.items() if k not in ("train_layers", "steer_layers")}


def test_eval_quick_on_an_18_layer_model_derives_the_layers(toy_world, cheap_judges, tmp_path, monkeypatch,
                                                             capsys):
    """``svf eval --quick`` with no layer options on a model of 18 layers: the quick
    configuration (shrunk, its layers left None) trains on 7-12 and steers 9, 11, 12
    (svf.layer_windows.default_layers(18)); config.json and README.md record them."""
    import json

    from helpers import tiny_model

    from svf.cli import commands as cli

    _, tok = toy_world
    model = tiny_model("llama", vocab_size=len(tok), layers=18, d=32)
    monkeypatch.setattr(cli, "_load_model", lambda name: (model, tok))
    real_quick = eval_config.quick_config
    monkeypatch.setattr(eval_config, "quick_config", lambda **o: real_quick(**{**_no_layers(), **o}))
    assert eval_config.quick_config().train_layers is None
    assert cli.main(["eval", "--quick", "--concepts", "toy", "tone", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["train_layers"], config["steer_layers"]) == ([7, 8, 9, 10, 11, 12], [9, 11, 12])
    readme = (tmp_path / "README.md").read_text()
    assert ("- layers: train 7-12, steer 9, 11, 12 (training derived, steering derived; the model "
            "has 18 decoder layers)") in readme
    assert "# svf eval report: complete" in readme
    with open(tmp_path / "likelihood.csv") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert rows["svf-shared"]["layers"] == "9+11+12" and rows["caa-multi"]["layers"] == "9+11+12"
    assert int(rows["svf-1"]["layers"]) in (9, 11, 12)


def test_eval_cli_layer_options_reach_the_config(toy_world, cheap_judges, tmp_path, monkeypatch):
    """``--layers`` / ``--steer-layers`` of ``svf eval``: given layers are used and recorded as
    given; ``--layers`` alone steers the layers 2/5, 3/5, 4/5 of the way into it."""
    import json

    from svf.cli import commands as cli

    model, tok = toy_world  # 4 decoder layers
    monkeypatch.setattr(cli, "_load_model", lambda name: (model, tok))
    real_quick = eval_config.quick_config
    monkeypatch.setattr(eval_config, "quick_config", lambda **o: real_quick(**{**_no_layers(), **o}))
    for argv, train, steer, origin in (
            (["--layers", "0-3", "--steer-layers", "1,3"], [0, 1, 2, 3], [1, 3], "training given, steering given"),
            (["--layers", "1-3"], [1, 2, 3], [2, 3], "training given, steering derived"),
            (["--steer-layers", "2"], [2], [2], "training derived, steering given")):
        out = tmp_path / "-".join(argv)
        assert cli.main(["eval", "--quick", "--concepts", "toy", "--no-mwe", "--out", str(out), *argv]) == 0
        config = json.loads((out / "config.json").read_text())
        assert (config["train_layers"], config["steer_layers"]) == (train, steer), argv
        assert f"({origin}; the model has 4 decoder layers)" in (out / "README.md").read_text()


def test_run_eval_leaves_the_callers_config_alone(toy_world, cheap_judges, tmp_path):
    model, tok = toy_world
    cfg = EvalConfig(concepts=("toy",), **_no_layers(mwe_behaviors=()))
    evaluation.run_eval(model, tok, cfg, tmp_path)
    assert cfg.train_layers is None and cfg.steer_layers is None and cfg.chat is None
