"""``svf eval`` end to end on a tiny random model with synthetic concepts: every method, every
table and every plot of the report."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch
from helpers import tiny_model

from svf import concepts
from svf.concepts import Concept
from svf.data import ContrastivePair
from svf.eval import config as eval_config
from svf.eval import evaluate_mwe, evaluation, judges
from svf.eval.base_field import eval_train_config
from svf.eval.config import EvalConfig
from svf.eval.stages import plan
from svf_kernels import SVFArgumentError

WORDS = {"toy": ("good", "bad"), "tone": ("formal", "casual"), "sea": ("ocean", "desert")}
STEERED_METHODS = {"caa-1", "caa-multi", "knn", "svf-1", "svf-indep", "svf-shared"}
FILES = ["README.md", "config.json", "examples.json", "likelihood.csv", "likelihood.md", "sweeps.csv",
         "slopes.csv", "open_ended.csv", "open_ended.md", "long_form.csv", "long_form.md",
         "multi_attribute.csv", "multi_attribute.md", "mwe.csv", "mwe.md", "judges.csv",
         "gap_vs_alpha.png", "slopes.png", "open_ended.png", "long_form.png", "fluency_sweep.csv",
         "equal_fluency.csv", "equal_fluency.md", "fluency_prompts.csv", "fluency_verdicts.csv",
         "fluency_verdicts.md", "equal_fluency.png", "fluency_verdicts.png", "run.json"]
FLUENCY_METHODS = {"caa", "svf", "svf-closed", "svf-precond", "prompt", "prompt+svf"}
INTENSITIES = ("slightly", "plain", "very")


def _concept(name: str, n_pairs=30, n_completions=2) -> Concept:
    pos, neg = WORDS[name]
    pairs = tuple(ContrastivePair(f"{pos} {i} {pos} yes", f"{neg} {i} {neg} no") for i in range(n_pairs))
    prompts = tuple(f"prompt number {i}" for i in range(10))
    instructions = {1: {k: f"be {k} {pos}" for k in INTENSITIES}, -1: {k: f"be {k} {neg}" for k in INTENSITIES}}
    return Concept(name, pairs, prompts, (f"{pos}!", f"{pos} {pos}"), (f"{neg}.", f"{neg} {neg}"), instructions)


def _mwe_items(behavior: str, source: str = "all") -> list[dict]:
    return [{"question": f"Q{i}: pick\n(A) yes\n(B) no", "answer_matching_behavior": "(A)" if i % 2 else "(B)",
             "answer_not_matching_behavior": "(B)" if i % 2 else "(A)"} for i in range(60)]


def _tiny_config(**overrides) -> dict:
    base = {"train_layers": (0, 1, 2, 3), "steer_layers": (1, 2), "sweep": (0.2, 0.6), "knn_k": 4,
            "signs": (1, -1), "n_prompts": None, "gen_prompts": 5,
            "train": eval_train_config(r=8, de=3, m=12, max_epochs=2, patience=1), "gen_total_strengths": (0.5,),
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
    _check_fluency_tables(tables, samples=1)


def _points(method: str, strengths=(0.5, 2.0)) -> set[tuple[float, str]]:
    """The (total strength, intensity) points a method sweeps."""
    if method == "prompt":
        return {(0.0, k) for k in INTENSITIES}
    if method == "prompt+svf":
        return {(t, "plain") for t in (0.0, *strengths)}
    return {(t, "") for t in strengths}


def _check_fluency_tables(tables: dict, concepts=tuple(WORDS), signs=(1, -1), samples: int = 2,
                          distinct_drop: float = 0.1) -> None:
    """Every method swept on validation, one row per budget, sign and method on test at a
    point the validation sweep allows (perplexity and distinct-2), per-prompt shifts that average to each row's shift, and
    one verdict per concept, budget, sign and comparison whose difference and interval follow
    from the per-prompt shifts."""
    sweep, chosen, per_prompt = tables["fluency_sweep"], tables["equal_fluency"], tables["fluency_prompts"]
    assert {(r["concept"], r["method"], r["sign"], r["total_strength"], r["intensity"]) for r in sweep} == {
        (c, m, sg, *p) for c in concepts for m in FLUENCY_METHODS for sg in signs for p in _points(m)
    } | {(c, "base", 0, 0.0, "") for c in concepts}
    assert all(r["n_prompts"] == 3 and 0.0 <= r["distinct2"] <= 1.0 for r in sweep)
    for r in chosen:
        assert r["n_prompts"] == 4 and r["samples"] == samples
        assert r["delta_lo"] <= r["delta"] + 1e-12 and r["delta"] <= r["delta_hi"] + 1e-12
        base = next(x for x in sweep if x["concept"] == r["concept"] and x["method"] == "base")
        rows = [x for x in sweep if (x["concept"], x["method"], x["sign"]) ==
                (r["concept"], r["method"], r["sign"])]
        allowed = [x for x in rows if x["ppl_median"] <= r["budget"] * base["ppl_median"]
                   and x["distinct2"] >= base["distinct2"] - distinct_drop and x["delta"] > 0]
        if allowed:  # the strongest shift within the budget was kept (ties: the milder point)
            best = max(allowed, key=lambda x: (x["delta"], -rows.index(x)))
            assert (r["total_strength"], r["intensity"], r["val_delta"]) == (
                best["total_strength"], best["intensity"], best["delta"])
        else:  # nothing within the budget: not moved
            assert r["total_strength"] == 0.0 and r["intensity"] == "" and r["delta"] == 0.0
            assert r["ppl_median"] == r["base_ppl"] and r["distinct2"] == r["base_distinct2"]
        shifts = [x["shift"] for x in per_prompt if (x["concept"], x["sign"], x["total_strength"], x["intensity"])
                  == (r["concept"], r["sign"], r["total_strength"], r["intensity"])
                  and x["method"] == (r["method"] if (r["total_strength"], r["intensity"]) != (0.0, "") else "base")]
        if r["method"] == "prompt+svf" and r["total_strength"] == 0.0 and r["intensity"] == "plain":
            plain = next(x for x in sweep if (x["concept"], x["method"], x["sign"], x["intensity"])
                         == (r["concept"], "prompt", r["sign"], "plain"))
            assert r["val_delta"] == plain["delta"]  # the same text as the prompt alone, measured once
        assert len(shifts) == 4 and sum(shifts) / 4 == pytest.approx(r["delta"], abs=1e-9)
    assert {(r["concept"], r["budget"], r["sign"], r["method"]) for r in chosen} == {
        (c, b, sg, m) for c in concepts for b in (1.25, 100.0) for sg in signs for m in FLUENCY_METHODS}
    verdicts = tables["fluency_verdicts"]
    assert {(r["concept"], r["budget"], r["sign"], r["comparison"]) for r in verdicts} == {
        (c, b, sg, comp) for c in concepts for b in (1.25, 100.0) for sg in signs
        for comp in ("best-svf vs best-static", "best-svf vs best-prompt", "prompt+svf vs best-prompt")}
    for v in verdicts:
        assert v["diff"] == pytest.approx(v["a_delta"] - v["b_delta"], abs=1e-9)
        assert v["lo"] <= v["diff"] + 1e-12 and v["diff"] <= v["hi"] + 1e-12
        assert v["verdict"] == ("win" if v["lo"] > 0 else "loss" if v["hi"] < 0 else "tie")
        cell = [r for r in chosen if (r["concept"], r["budget"], r["sign"]) == (v["concept"], v["budget"], v["sign"])]
        svf = max((r for r in cell if r["method"].startswith("svf")), key=lambda r: r["val_delta"])
        if v["comparison"].startswith("best-svf"):
            assert v["a"].startswith(svf["method"] + " @")


def test_eval_stages_runs_only_the_equal_fluency_comparison(toy_world, tmp_path):
    model, tok = toy_world
    cfg = EvalConfig(concepts=("toy",), **_tiny_config(stages=("equal-fluency",), fluency_distinct_drop=0.0))
    assert [step.name for step in plan(cfg)] == ["toy: train + choose layers", "toy: equal-fluency"]
    tables = evaluation.run_eval(model, tok, cfg, tmp_path)
    assert not tables["likelihood"] and not tables["open_ended"] and not tables["mwe"]
    _check_fluency_tables(tables, concepts=("toy",), distinct_drop=0.0)
    examples = json.loads((tmp_path / "examples.json").read_text())  # a text per test-measured point
    assert {(e["method"], e["sign"], e["total_strength"], e["intensity"]) for e in examples} == {
        (r["method"] if (r["total_strength"], r["intensity"]) != (0.0, "") else "base",
         r["sign"] if (r["total_strength"], r["intensity"]) != (0.0, "") else 0, r["total_strength"], r["intensity"])
        for r in tables["equal_fluency"]} | {("base", 0, 0.0, "")}
    assert all(isinstance(e["text"], str) and e["prompt"] for e in examples)
    assert (tmp_path / "equal_fluency.png").is_file() and not (tmp_path / "likelihood.csv").exists()
    assert "svf eval report: complete" in (tmp_path / "README.md").read_text()


def test_equal_fluency_compares_the_natural_direction_and_inner_positions(toy_world, tmp_path):
    """With svf-natural (a field trained with Fisher samples) and svf-inner (a second field trained
    on inner positions), each is compared with the plain gradient per cell, and may be the best
    SVF variant."""
    model, tok = toy_world
    base = _tiny_config()
    methods = ("caa", "svf", "svf-natural", "svf-inner", "prompt")
    cfg = EvalConfig(concepts=("toy",), **_tiny_config(
        stages=("equal-fluency",), fluency_methods=methods,
        train=dataclasses.replace(base["train"], fisher_samples=8)))
    tables = evaluation.run_eval(model, tok, cfg, tmp_path)
    assert {r["method"] for r in tables["equal_fluency"]} == set(methods)
    comparisons = {r["comparison"] for r in tables["fluency_verdicts"]}
    assert comparisons == {"best-svf vs best-static", "best-svf vs best-prompt", "svf-natural vs svf",
                           "svf-inner vs svf"}
    choices = json.loads((tmp_path / "toy_choices.json").read_text())
    assert choices["inner_train_report"]["training"]["positions"] == "inner"
    assert choices["natural"]["layers"] == [1, 2] and len(choices["natural"]["lambdas"]) == 2
    with pytest.raises(SVFArgumentError, match="fisher_samples"):
        EvalConfig(concepts=("toy",), **_tiny_config(stages=("equal-fluency",), fluency_methods=methods))


def test_parts_merge_into_one_report(toy_world, tmp_path, capsys):
    """Two parts on different concepts merge into one report whose verdicts are those of a run
    over both; parts that differ in configuration, or repeat a concept, are refused."""
    from svf.cli import commands as cli
    from svf.eval.merge import merge_reports

    model, tok = toy_world
    parts = []
    for name in ("toy", "tone"):
        cfg = EvalConfig(concepts=(name,), **_tiny_config(stages=("equal-fluency",)))
        evaluation.run_eval(model, tok, cfg, tmp_path / name, command=f"part {name}")
        parts.append(tmp_path / name)
    assert cli.main(["eval", "--merge", *map(str, parts), "--out", str(tmp_path / "all")]) == 0
    merged = tmp_path / "all"
    with open(merged / "fluency_verdicts.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["concept"] for r in rows} == {"toy", "tone"}
    for name in ("toy", "tone"):
        with open(tmp_path / name / "fluency_verdicts.csv") as f:
            own = list(csv.DictReader(f))
        mine = [r for r in rows if r["concept"] == name]
        assert [(r["comparison"], float(r["diff"]), float(r["lo"]), r["verdict"]) for r in mine] == [
            (r["comparison"], float(r["diff"]), float(r["lo"]), r["verdict"]) for r in own]
    readme = (merged / "README.md").read_text()
    assert "## Parts" in readme and "part toy" in readme and "part tone" in readme
    assert (merged / "fluency_verdicts.png").is_file()
    assert (merged / "toy_choices.json").is_file() and (merged / "tone_choices.json").is_file()
    with pytest.raises(SVFArgumentError, match="repeats concept 'toy'.*methods"):
        merge_reports([parts[0], parts[0]], tmp_path / "twice")
    # one concept split by methods merges into what one run of every method gives
    halves = []
    for k, methods in enumerate((("caa", "svf", "svf-closed", "svf-precond"), ("prompt", "prompt+svf"))):
        cfg = EvalConfig(concepts=("toy",), **_tiny_config(stages=("equal-fluency",), fluency_methods=methods))
        evaluation.run_eval(model, tok, cfg, tmp_path / f"half{k}")
        halves.append(tmp_path / f"half{k}")
    whole = merge_reports(halves, tmp_path / "halves")
    with open(parts[0] / "fluency_verdicts.csv") as f:
        own = list(csv.DictReader(f))
    assert [(r["comparison"], r["a"], r["b"], float(r["diff"]), float(r["hi"])) for r in whole["fluency_verdicts"]] == [
        (r["comparison"], r["a"], r["b"], float(r["diff"]), float(r["hi"])) for r in own]
    cfg = EvalConfig(concepts=("sea",), **_tiny_config(stages=("equal-fluency",), fluency_budgets=(1.5,)))
    evaluation.run_eval(model, tok, cfg, tmp_path / "sea")
    with pytest.raises(SVFArgumentError, match="fluency_budgets"):
        merge_reports([parts[0], tmp_path / "sea"], tmp_path / "mixed")
    assert not (tmp_path / "twice").exists() and not (tmp_path / "mixed").exists()


def test_field_cache_trains_each_field_once_and_gives_the_same_report(toy_world, tmp_path, monkeypatch):
    """Two parts with one field cache: the second part trains nothing (training raises) and
    reports exactly what training again gives; another training setting misses the cache; a
    damaged entry is trained again."""
    from svf.eval import concept_fields

    model, tok = toy_world
    methods = ("caa", "svf", "svf-inner")
    cfg = EvalConfig(concepts=("toy",), **_tiny_config(stages=("equal-fluency",), fluency_methods=methods))
    cache = tmp_path / "cache"
    first = evaluation.run_eval(model, tok, cfg, tmp_path / "first", field_cache=cache)
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 2 and not any(name.startswith(".") for name in entries)  # shared, inner
    fresh = evaluation.run_eval(model, tok, cfg, tmp_path / "fresh")  # trained again, no cache
    real_train = concept_fields.train_field

    def no_training(*args, **kwargs):
        raise AssertionError("trained although the field was in the cache")

    monkeypatch.setattr(concept_fields, "train_field", no_training)
    again = evaluation.run_eval(model, tok, cfg, tmp_path / "again", field_cache=cache)
    for table in ("fluency_sweep", "equal_fluency", "fluency_verdicts"):
        assert again[table] == fresh[table] == first[table], table
    assert (json.loads((tmp_path / "again" / "toy_choices.json").read_text())
            == json.loads((tmp_path / "fresh" / "toy_choices.json").read_text()))
    other = EvalConfig(concepts=("toy",), **_tiny_config(
        stages=("equal-fluency",), fluency_methods=("caa", "svf"),
        train=dataclasses.replace(_tiny_config()["train"], seed=1)))
    with pytest.raises(AssertionError, match="in the cache"):
        evaluation.run_eval(model, tok, other, tmp_path / "other", field_cache=cache)
    monkeypatch.setattr(concept_fields, "train_field", real_train)
    for entry in cache.iterdir():
        (entry / "field.safetensors").write_bytes(b"damaged")
    evaluation.run_eval(model, tok, cfg, tmp_path / "repaired", field_cache=cache)
    assert len(list(cache.iterdir())) == 2
    with pytest.raises(SVFArgumentError, match="field_cache"):
        evaluation.run_eval(model, tok, cfg, tmp_path / "bad", field_cache=tmp_path / "first" / "README.md")


def test_choose_point_keeps_the_strongest_shift_within_the_budget():
    from svf.eval.evaluate_fluency import choose_point

    base = {"ppl_median": 5.0, "distinct2": 0.9}
    rows = [{"total_strength": 0.1, "delta": 0.1, "ppl_median": 5.0, "distinct2": 0.9},
            {"total_strength": 0.2, "delta": 0.3, "ppl_median": 6.0, "distinct2": 0.85},
            {"total_strength": 0.4, "delta": 0.5, "ppl_median": 9.0, "distinct2": 0.8},
            {"total_strength": 0.8, "delta": -0.2, "ppl_median": 5.0, "distinct2": 0.9}]
    assert choose_point(rows, base, 1.25, 0.1)["total_strength"] == 0.2
    assert choose_point(rows, base, 2.0, 0.1)["total_strength"] == 0.4
    assert choose_point(rows, {**base, "ppl_median": 3.0}, 1.25, 0.1) is None  # nothing within the budget
    assert choose_point(rows[3:], base, 2.0, 0.1) is None  # no shift the right way
    tie = [{"delta": 0.3, "ppl_median": 5.0, "distinct2": 0.9}, {"delta": 0.3, "ppl_median": 5.5, "distinct2": 0.9}]
    assert choose_point(tie, base, 2.0, 0.1) is tie[0]  # a tie keeps the milder (earlier) point


def test_choose_point_charges_for_repetition_that_perplexity_rewards():
    """A looping point (low perplexity, few distinct bigrams) is out at every perplexity budget;
    the limit is the fall from the unsteered distinct-2, inclusive."""
    from svf.eval.evaluate_fluency import choose_point

    base = {"ppl_median": 5.0, "distinct2": 0.9}
    rows = [{"total_strength": 0.45, "delta": 0.2, "ppl_median": 5.5, "distinct2": 0.85},
            {"total_strength": 1.35, "delta": 1.3, "ppl_median": 2.5, "distinct2": 0.1}]
    for budget in (1.25, 1.5, 100.0):
        assert choose_point(rows, base, budget, 0.1)["total_strength"] == 0.45
    assert choose_point(rows, base, 1.25, 0.8)["total_strength"] == 1.35  # a drop of exactly 0.8 passes
    assert choose_point(rows, base, 1.25, 0.0) is None  # no fall allowed: both repeat more than base
    assert choose_point(rows, {**base, "distinct2": 0.1}, 1.25, 0.0)["total_strength"] == 1.35


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
