"""Property tests of the argument checks of the evaluation, data and judge entry points.

For each public function: random valid argument sets must work (and a real property of the
result holds); the same sets with one argument broken (every break in the function's list, for
each random set) must raise ``SVFArgumentError`` whose message names that argument, before any
work, leaving the inputs unchanged and writing nothing.
Covers ``EvalConfig``, ``quick_config``, ``run_eval``, ``load_concept``, ``sentiment_pairs``,
``load_mwe``, ``mwe_pairs``, ``mwe_item_pairs``, ``render_mwe``, ``split``, the judges, the KNN
baseline and the metrics. The sentence encoder is replaced by a cheap deterministic stand-in (the
real one is exercised by ``tests/test_judges.py``); ``run_eval``'s valid calls stop at the first
piece of work (the checks are what is tested; ``tests/test_evaluation.py`` runs it end to end).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from svf import data as sdata
from svf.concepts import CONCEPTS, SENTIMENT_PAIRS, load_concept
from svf.data import ContrastivePair
from svf.eval import evaluate_mwe, evaluation, judges, metrics, stages
from svf.eval.base_field import eval_train_config
from svf.eval.config import EvalConfig, quick_config
from svf.eval.evaluate_fluency import FLUENCY_METHODS
from svf.eval.knn_field import KNNField, knn_fields
from svf.eval.stages import STAGE_NAMES, plan
from svf.training import TrainConfig
from svf_kernels import SVFArgumentError

EXAMPLES = int(os.environ.get("SVF_PROPERTY_EXAMPLES", "150"))

def _settings(divisor: int) -> settings:
    return settings(max_examples=max(1, EXAMPLES // divisor), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


#: Checks that fail fast (the bad argument is refused before any work).
SETTINGS = _settings(1)
#: Valid calls that compute a little (a fit, a data file) or draw large argument sets.
MEDIUM = _settings(5)
#: Valid calls that read the larger data files or run a model (still random, fewer of them).
FEW = _settings(15)
NAN, INF = float("nan"), float("inf")


# -- shared helpers -------------------------------------------------------------------------------


def _freeze(value):
    """A comparable deep snapshot (tensors as dtype, shape and raw bytes, so NaN equals NaN)."""
    if isinstance(value, torch.Tensor):
        raw = value.detach().cpu().flatten().contiguous().view(torch.uint8)
        return ("tensor", value.dtype, tuple(value.shape), raw.numpy().tobytes())
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_freeze(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (type(value).__name__, _freeze(dataclasses.asdict(value)))
    return copy.deepcopy(value)


def _raises_naming(name: str, fn, kwargs: dict, *inputs) -> SVFArgumentError:
    """``fn(**kwargs)`` raises SVFArgumentError naming ``name``; ``inputs`` are left unchanged."""
    before = [_freeze(x) for x in inputs]
    with pytest.raises(SVFArgumentError) as err:
        fn(**kwargs)
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"
    assert [_freeze(x) for x in inputs] == before, "a rejected call changed its input"
    return err.value


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24)
TEXTS = st.lists(TEXT, max_size=6)


# -- EvalConfig and quick_config ------------------------------------------------------------------

_COUNTS = ("knn_k", "gen_prompts", "gen_samples", "gen_tokens", "long_prompts", "long_tokens",
           "long_window", "multi_samples", "fluency_val_prompts", "fluency_val_samples", "fluency_samples",
           "fluency_tokens")
_SEQUENCES = ("concepts", "train_layers", "steer_layers", "sweep", "gen_total_strengths", "signs",
              "long_refresh", "mwe_behaviors", "stages", "fluency_strengths", "fluency_budgets",
              "fluency_methods")


def _eval_kwargs(data, max_layer: int = 40) -> dict:
    """A random valid set of EvalConfig fields (a random subset of them; the layers: both given,
    the training window only, or neither: None, derived from the model's depth)."""
    train = data.draw(st.lists(st.integers(0, max_layer - 1), min_size=1, max_size=6, unique=True), label="train")
    steer = data.draw(st.lists(st.sampled_from(train), min_size=1, max_size=len(train), unique=True), label="steer")
    strengths = st.lists(st.floats(1e-3, 10), min_size=1, max_size=3)
    kw = {
        "concepts": data.draw(st.lists(st.sampled_from(CONCEPTS), min_size=1, unique=True), label="concepts"),
        "sweep": data.draw(strengths, label="sweep"),
        "gen_total_strengths": data.draw(strengths, label="gen_total_strengths"),
        "signs": list(data.draw(st.sampled_from([(1,), (-1,), (1, -1), (-1, 1)]), label="signs")),
        "n_pairs": data.draw(st.none() | st.integers(1, 60), label="n_pairs"),
        "n_completions": data.draw(st.integers(1, 8), label="n_completions"),
        "n_prompts": data.draw(st.none() | st.integers(2, 60), label="n_prompts"),
        "chat": data.draw(st.none() | st.booleans(), label="chat"),
        "train": eval_train_config(max_epochs=data.draw(st.integers(1, 5), label="max_epochs"), patience=1),
        "long_refresh": data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=3, unique=True), label="refresh"),
        "mwe_behaviors": data.draw(st.lists(st.sampled_from(["wealth-seeking-inclination", "myopic-reward"]),
                                            unique=True), label="mwe_behaviors"),
        "mwe_items": data.draw(st.none() | st.integers(1, 100), label="mwe_items"),
        "seed": data.draw(st.integers(-(2**40), 2**40), label="seed"),
        "stages": data.draw(st.lists(st.sampled_from(STAGE_NAMES), min_size=1, unique=True), label="stages"),
        "fluency_strengths": data.draw(strengths, label="fluency_strengths"),
        "fluency_budgets": data.draw(st.lists(st.floats(1.0, 10), min_size=1, max_size=3), label="budgets"),
        "fluency_target": data.draw(st.floats(0.51, 0.999), label="fluency_target"),
        "fluency_distinct_drop": data.draw(st.floats(0.0, 1.0), label="fluency_distinct_drop"),
        "fluency_methods": data.draw(st.lists(st.sampled_from([m for m in FLUENCY_METHODS if "natural" not in m]),
                                              min_size=1, unique=True), label="fluency_methods"),
        "fluency_test_prompts": data.draw(st.integers(2, 50), label="fluency_test_prompts"),
        **{k: data.draw(st.integers(1, 50), label=k) for k in _COUNTS},
    }
    keep = data.draw(st.sets(st.sampled_from(sorted(kw))), label="fields given")
    out = {k: v for k, v in kw.items() if k in keep}
    given = data.draw(st.sampled_from(["both", "train", "neither"]), label="layers given")
    out["train_layers"] = train if given != "neither" else None
    out["steer_layers"] = steer if given == "both" else None
    for k in _SEQUENCES:  # lists and tuples are both accepted (and stored as tuples)
        if out.get(k) is not None and data.draw(st.booleans(), label=f"{k} as tuple"):
            out[k] = tuple(out[k])
    return out


def _eval_breaks(kw: dict) -> list[tuple[str, object]]:
    train = list(kw["train_layers"] or ())
    out = [
        ("concepts", ()), ("concepts", "sentiment"), ("concepts", ("sentiment", 3)), ("concepts", [""]),
        ("concepts", ("formality", "formality")), ("concepts", None),
        ("train_layers", ()), ("train_layers", (-1,)), ("train_layers", (1.0,)), ("train_layers", "12"),
        ("train_layers", (True,)), ("train_layers", 3), ("train_layers", [5, 5]),
        ("steer_layers", ()), ("steer_layers", ("1",)), ("steer_layers", [7, 7]), ("steer_layers", (-2,)),
        ("sweep", ()), ("sweep", (NAN,)), ("sweep", (0.1, INF)), ("sweep", (0.0,)), ("sweep", (-0.1,)),
        ("sweep", ("0.2",)), ("sweep", 0.2),
        ("gen_total_strengths", ()), ("gen_total_strengths", (NAN,)), ("gen_total_strengths", (-1.0,)),
        ("gen_total_strengths", (True,)),
        ("signs", (0,)), ("signs", (2,)), ("signs", (1, 1)), ("signs", ()),
        ("signs", (True,)), ("signs", (1.0,)), ("signs", 1), ("signs", "1"),
        ("n_pairs", 0), ("n_pairs", -1), ("n_pairs", 1.5), ("n_pairs", "10"), ("n_pairs", True),
        ("n_completions", 0), ("n_completions", None), ("n_completions", 2.0),
        ("n_prompts", 1), ("n_prompts", 0), ("n_prompts", "all"),
        ("chat", 1), ("chat", "yes"), ("chat", 0),
        ("train", None), ("train", {"max_epochs": 2}), ("train", dataclasses.asdict(TrainConfig())),
        ("long_refresh", (0,)), ("long_refresh", ()), ("long_refresh", (1.5,)), ("long_refresh", 2),
        ("mwe_behaviors", "wealth-seeking-inclination"), ("mwe_behaviors", (3,)), ("mwe_behaviors", ("",)),
        ("mwe_items", 0), ("mwe_items", 2.5),
        ("seed", 1.5), ("seed", "0"), ("seed", None), ("seed", False),
        ("stages", ()), ("stages", ("likelihood", "speed")), ("stages", "likelihood"),
        ("stages", ("mwe", "mwe")),
        ("fluency_strengths", ()), ("fluency_strengths", (NAN,)), ("fluency_strengths", (-0.2,)),
        ("fluency_budgets", (0.9,)), ("fluency_budgets", ()), ("fluency_budgets", (INF,)),
        ("fluency_target", 0.5), ("fluency_target", 1.0), ("fluency_target", None), ("fluency_target", "0.9"),
        ("fluency_distinct_drop", -0.1), ("fluency_distinct_drop", 1.5), ("fluency_distinct_drop", NAN),
        ("fluency_distinct_drop", None), ("fluency_distinct_drop", "0.1"),
        ("fluency_methods", ()), ("fluency_methods", ("svf", "steer-harder")), ("fluency_methods", "svf"),
        ("fluency_methods", ("svf", "svf")), ("fluency_test_prompts", 1), ("fluency_test_prompts", 0),
        ("fluency_methods", ("svf", "svf-natural")),  # the natural direction needs train.fisher_samples
    ]
    out += [(k, bad) for k in _COUNTS for bad in (0, -3, 1.5, None, "4", True)]
    if train:  # given: the steering layers must be among them
        out += [("train_layers", train + train[:1]), ("steer_layers", (max(train) + 1,)),
                ("steer_layers", [train[0], train[0]])]
    return out


@MEDIUM
@given(data=st.data())
def test_eval_config_valid_fields_are_kept(data):
    kw = _eval_kwargs(data)
    before = _freeze(kw)
    for build, defaults in ((EvalConfig, EvalConfig()), (quick_config, quick_config())):
        cfg = build(**kw)
        assert _freeze(kw) == before
        for f in dataclasses.fields(EvalConfig):
            want = kw.get(f.name, getattr(defaults, f.name))
            got = getattr(cfg, f.name)
            assert got == (tuple(want) if isinstance(want, list) else want), f.name
        if cfg.train_layers is not None and cfg.steer_layers is not None:
            assert set(cfg.steer_layers) <= set(cfg.train_layers)
        cfg.validate()  # idempotent


@MEDIUM
@given(data=st.data())
def test_eval_config_one_bad_field_is_named(data):
    kw = _eval_kwargs(data)
    before = _freeze(kw)
    for name, bad in _eval_breaks(kw):  # every break, for each random valid set
        broken = {**kw, name: bad}
        _raises_naming(name, EvalConfig, broken)
        _raises_naming(name, quick_config, broken)
    assert _freeze(kw) == before


@MEDIUM
@given(data=st.data(), key=st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12))
def test_quick_config_unknown_key_is_named_with_the_valid_ones(data, key):
    valid = {f.name for f in dataclasses.fields(EvalConfig)}
    if key in valid:
        return
    kw = {**_eval_kwargs(data), key: data.draw(st.integers() | TEXT, label="value")}
    err = _raises_naming(key, quick_config, kw, kw)
    assert all(f in str(err) for f in valid)


def test_svf_inner_needs_a_last_token_base_field():
    """The evaluation's base field trains at the last token, so that ``svf-inner`` differs from
    it; a base field at inner positions with ``svf-inner`` is refused."""
    assert EvalConfig().train.positions == quick_config().train.positions == "last"
    EvalConfig(fluency_methods=("svf", "svf-inner"))
    inner = TrainConfig(positions="inner")
    with pytest.raises(SVFArgumentError, match="svf-inner.*one field"):
        EvalConfig(fluency_methods=("svf", "svf-inner"), train=inner)
    EvalConfig(fluency_methods=("caa", "svf"), train=inner)  # an inner base field alone is fine


def test_eval_config_is_checked_again_after_edits():
    cfg = EvalConfig()
    cfg.sweep = (0.1, NAN)
    _raises_naming("sweep", cfg.validate, {})
    cfg = EvalConfig()
    cfg.train = TrainConfig()
    cfg.train.lr = -1.0
    _raises_naming("lr", cfg.validate, {})


# -- run_eval ------------------------------------------------------------------------------------


class _Reached(Exception):
    """Raised by the stand-ins for the first piece of work: the checks have all passed."""


@pytest.fixture(scope="module")
def tiny_llama(char_tok):
    from helpers import tiny_model

    return tiny_model("llama", vocab_size=len(char_tok)), char_tok


@contextmanager
def _stop_at_work(seen: list):
    def prepare(model, tokenizer, concept, cfg, model_name="", field_cache=None):
        seen.append(concept)
        raise _Reached

    def run_mwe(*args, **kwargs):
        seen.append("mwe")
        raise _Reached

    with mock.patch.object(stages, "prepare", prepare), mock.patch.object(evaluate_mwe, "run_mwe", run_mwe):
        yield


def _run_eval_args(data, model, tok, root: Path) -> dict:
    cfg = EvalConfig(**_eval_kwargs(data, max_layer=model.config.num_hidden_layers))
    out = root / data.draw(st.sampled_from(["report", "a/b/c", "existing"]), label="out")
    (root / "existing").mkdir(exist_ok=True)
    return {"model": model, "tokenizer": tok, "cfg": cfg,
            "out": data.draw(st.sampled_from([out, str(out)]), label="out type"),
            "model_name": data.draw(TEXT, label="model_name"), "command": data.draw(TEXT, label="command"),
            "field_cache": data.draw(st.sampled_from([None, root / "cache", str(root / "cache")]),
                                     label="field_cache")}


@FEW
@given(data=st.data())
def test_run_eval_valid_arguments_reach_the_work(tiny_llama, data):
    model, tok = tiny_llama
    with tempfile.TemporaryDirectory() as tmp:
        args = _run_eval_args(data, model, tok, Path(tmp))
        cfg, seen = args["cfg"], []
        steps = plan(cfg)  # the first step does the first piece of work (none: the run has none)
        with _stop_at_work(seen), pytest.raises(_Reached) if steps else contextlib.nullcontext():
            evaluation.run_eval(**args)
        assert Path(args["out"]).is_dir()
        if not steps:
            assert not seen
            return
        if steps[0].name == "mwe":
            assert seen == ["mwe"]
            return
        (concept,) = seen
        assert steps[0].name == f"{concept.name}: train + choose layers"
        assert concept.name == cfg.concepts[0]
        default = SENTIMENT_PAIRS if concept.name == "sentiment" else len(load_concept(concept.name).pairs)
        assert len(concept.pairs) == (cfg.n_pairs or default)
        assert len(concept.positive) == len(concept.negative) == cfg.n_completions
        if cfg.n_prompts is not None:
            assert len(concept.prompts) == min(cfg.n_prompts, len(load_concept(concept.name).prompts))


def _edited(cfg: EvalConfig, **changes) -> EvalConfig:
    out = copy.deepcopy(cfg)
    for k, v in changes.items():
        setattr(out, k, v)  # after construction: run_eval checks the config again
    return out


@FEW
@given(data=st.data())
def test_run_eval_one_bad_argument_is_named_and_nothing_is_written(tiny_llama, data):
    model, tok = tiny_llama
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        args = _run_eval_args(data, model, tok, root)
        cfg = args["cfg"]
        (root / "a_file").write_text("not a directory")
        breaks = [
            ("model", None), ("model", torch.nn.Linear(2, 2)), ("model", "gpt2"),
            ("tokenizer", None), ("tokenizer", "gpt2"), ("tokenizer", object()),
            ("cfg", None), ("cfg", dataclasses.asdict(cfg)), ("cfg", TrainConfig()),
            ("train_layers", _edited(cfg, train_layers=(*(cfg.train_layers or ()), 4))),
            ("train_layers", _edited(cfg, train_layers=(*(cfg.train_layers or ()), 9))),
            ("sweep", _edited(cfg, sweep=(0.1, NAN))),
            ("steer_layers", _edited(cfg, steer_layers=(*(cfg.steer_layers or ()), 7))),
            ("steer_layers", _edited(cfg, train_layers=None, steer_layers=(0,))),  # outside the derived window
            ("concepts", _edited(cfg, concepts=("colour",), mwe_behaviors=())),
            ("n_pairs", _edited(cfg, concepts=("sentiment",), n_pairs=10**7, mwe_behaviors=())),
            ("n_completions", _edited(cfg, n_completions=0)),
            ("mwe_behaviors", _edited(cfg, mwe_behaviors=("no-such-behaviour",))),
            ("out", root / "a_file"), ("out", str(root / "a_file")), ("out", 3), ("out", ""), ("out", "x\0y"),
            ("out", None),
            ("model_name", 3), ("model_name", None), ("command", None), ("command", ["svf", "eval"]),
            ("field_cache", root / "a_file"), ("field_cache", 3), ("field_cache", "x\0y"),
        ]
        before, seen = _files(root), []
        for name, bad in breaks:
            key = name if name in args else "cfg"
            broken = {**args, key: bad}
            with _stop_at_work(seen):
                _raises_naming(name, evaluation.run_eval, broken, broken["cfg"])
            assert not seen, "work started before the arguments were checked"
            assert _files(root) == before, "a rejected call wrote files"


# -- concepts and data ----------------------------------------------------------------------------


@MEDIUM
@given(name=st.sampled_from(CONCEPTS), n_pairs=st.none() | st.integers(1, 200), n_completions=st.integers(1, 8))
def test_load_concept_valid(name, n_pairs, n_completions):
    c = load_concept(name, n_pairs, n_completions)
    want = n_pairs or (SENTIMENT_PAIRS if name == "sentiment" else len(c.pairs))
    assert c.name == name and len(c.pairs) == want
    assert len(c.positive) == len(c.negative) == n_completions


@MEDIUM
@given(data=st.data())
def test_load_concept_one_bad_argument_is_named(data):
    args = {"name": data.draw(st.sampled_from(CONCEPTS), label="name"),
            "n_pairs": data.draw(st.none() | st.integers(1, 200), label="n_pairs"),
            "n_completions": data.draw(st.integers(1, 8), label="n_completions")}
    breaks = [("name", "colour"), ("name", ""), ("name", 3), ("name", None), ("name", ["sentiment"]),
              ("n_pairs", 0), ("n_pairs", -1), ("n_pairs", 1.5), ("n_pairs", "10"), ("n_pairs", True),
              ("n_completions", 0), ("n_completions", None), ("n_completions", 2.0), ("n_completions", "8")]
    if args["name"] == "sentiment":
        breaks += [("n_pairs", 10**7)]
    for name, bad in breaks:
        _raises_naming(name, load_concept, {**args, name: bad})


@FEW
@given(n=st.none() | st.integers(0, 60), seed=st.integers(-(2**40), 2**40))
def test_sentiment_pairs_valid(n, seed):
    pairs = sdata.sentiment_pairs(n, seed)
    assert len(pairs) == (5331 if n is None else n)
    assert all(isinstance(p, ContrastivePair) and p.positive and p.negative for p in pairs)


@SETTINGS
@given(data=st.data())
def test_sentiment_pairs_one_bad_argument_is_named(data):
    args = {"n": data.draw(st.none() | st.integers(0, 60), label="n"), "seed": data.draw(st.integers(), label="seed")}
    for name, bad in [("n", -1), ("n", 1.5), ("n", "3"), ("n", True), ("seed", 1.5), ("seed", "0"),
                      ("seed", None), ("seed", [0])]:
        _raises_naming(name, sdata.sentiment_pairs, {**args, name: bad})


def _fractions(data) -> tuple:
    a = data.draw(st.integers(0, 100), label="a")
    b = data.draw(st.integers(0, 100 - a), label="b")
    fr = (a / 100, b / 100, (100 - a - b) / 100)
    return data.draw(st.sampled_from([fr, list(fr)]), label="fractions type")


@MEDIUM
@given(data=st.data())
def test_split_valid(data):
    items = data.draw(st.lists(st.integers(), max_size=40) | st.lists(TEXT, max_size=40).map(tuple), label="items")
    fr, seed = _fractions(data), data.draw(st.integers(), label="seed")
    before = _freeze(items)
    tr, va, te = sdata.split(items, fr, seed)
    assert _freeze(items) == before
    assert len(tr) + len(va) + len(te) == len(items)
    assert sorted(map(repr, tr + va + te)) == sorted(map(repr, items))
    assert len(tr) == int(fr[0] * len(items) + 1e-9)


@SETTINGS
@given(data=st.data())
def test_split_one_bad_argument_is_named(data):
    args = {"items": data.draw(st.lists(st.integers(), max_size=40), label="items"), "fractions": _fractions(data),
            "seed": data.draw(st.integers(), label="seed")}
    breaks = [("items", "abcdef"), ("items", 5), ("items", None), ("items", {1, 2, 3}),
              ("fractions", (0.5, 0.5)), ("fractions", (0.5, 0.5, 0.5)), ("fractions", (NAN, 0.0, 1.0)),
              ("fractions", (-0.1, 0.6, 0.5)), ("fractions", (INF, 0.0, 0.0)), ("fractions", ("0.4", 0.1, 0.5)),
              ("fractions", (True, False, False)), ("fractions", "abc"), ("fractions", None), ("fractions", 1.0),
              ("seed", 1.5), ("seed", "s"), ("seed", None)]
    for name, bad in breaks:
        broken = {**args, name: bad}
        _raises_naming(name, sdata.split, broken, broken["items"])


_BEHAVIORS = ["corrigible-neutral-HHH", "myopic-reward", "narcissism"]


@FEW
@given(data=st.data())
def test_mwe_pairs_valid(char_tok, data):
    behavior = data.draw(st.sampled_from(_BEHAVIORS), label="behavior")
    source = "all" if behavior == "narcissism" else data.draw(st.sampled_from(["all", "generate", "test"]))
    n = data.draw(st.none() | st.integers(0, 8), label="n")
    tokenizer = data.draw(st.sampled_from([None, char_tok]), label="tokenizer")
    pairs = sdata.mwe_pairs(behavior, tokenizer, n, data.draw(st.integers(), label="seed"), source=source)
    items = sdata.load_mwe(behavior, source)
    assert len(pairs) == (len(items) if n is None else min(n, len(items)))
    for p in pairs:
        common = os.path.commonprefix([p.positive, p.negative])
        assert p.positive != p.negative and len(common) >= len(p.positive) - 3


@MEDIUM
@given(data=st.data())
def test_mwe_loaders_one_bad_argument_is_named(char_tok, data):
    args = {"behavior": data.draw(st.sampled_from(_BEHAVIORS[:2]), label="behavior"),
            "tokenizer": data.draw(st.sampled_from([None, char_tok]), label="tokenizer"),
            "n": data.draw(st.none() | st.integers(0, 8), label="n"),
            "seed": data.draw(st.integers(), label="seed"),
            "source": data.draw(st.sampled_from(["all", "generate", "test"]), label="source")}
    breaks = [("behavior", "no-such-behaviour"), ("behavior", ""), ("behavior", 3), ("behavior", None),
              ("source", "train"), ("source", 3), ("source", None),
              ("tokenizer", "gpt2"), ("tokenizer", 3), ("n", -1), ("n", 1.5), ("n", "2"), ("seed", "x"),
              ("seed", 1.5)]
    for name, bad in breaks:
        broken = {**args, name: bad}
        _raises_naming(name, sdata.mwe_pairs, broken)
        if name in ("behavior", "source"):
            _raises_naming(name, sdata.load_mwe, {"behavior": broken["behavior"], "source": broken["source"]})
    if args["source"] != "all":  # a behaviour with one Anthropic file has no generate/test split
        _raises_naming("source", sdata.mwe_pairs, {**args, "behavior": "narcissism"})


def _items(data) -> list[dict]:
    labels = data.draw(st.lists(st.sampled_from([("(A)", "(B)"), ("(B)", "(A)"), ("Yes", "No")]),
                                min_size=0, max_size=5), label="labels")
    return [{"question": data.draw(TEXT, label="question") + "\n (A) x\n (B) y", "answer_matching_behavior": m,
             "answer_not_matching_behavior": o} for m, o in labels]


@MEDIUM
@given(data=st.data())
def test_mwe_item_pairs_and_render_mwe_valid(char_tok, data):
    items = _items(data)
    tokenizer = data.draw(st.sampled_from([None, char_tok]), label="tokenizer")
    before = _freeze(items)
    pairs = sdata.mwe_item_pairs(items, tokenizer)
    assert _freeze(items) == before and len(pairs) == len(items)
    for p, it in zip(pairs, items):
        stub = it["answer_matching_behavior"].rstrip(")")
        assert p.positive.endswith(stub) and p.positive != p.negative
    question, answer = data.draw(TEXT, label="question"), data.draw(TEXT.filter(bool), label="answer")
    text = sdata.render_mwe(question, answer, tokenizer)
    assert text.endswith(answer) and question in text


@MEDIUM
@given(data=st.data())
def test_mwe_item_pairs_and_render_mwe_one_bad_argument_is_named(char_tok, data):
    items = _items(data)
    tokenizer = data.draw(st.sampled_from([None, char_tok]), label="tokenizer")
    ok = {"question": "q?", "answer_matching_behavior": "(A)", "answer_not_matching_behavior": "(B)"}
    breaks = [("items", "abc"), ("items", 5), ("items", None), ("items", ok), ("items", [*items, {"question": "q"}]),
              ("items", [*items, {**ok, "question": 3}]), ("items", [*items, "q"]),
              ("tokenizer", "gpt2"), ("tokenizer", 3)]
    for name, bad in breaks:
        broken = {"items": items, "tokenizer": tokenizer, name: bad}
        _raises_naming(name, sdata.mwe_item_pairs, broken, broken["items"])
    render = {"question": data.draw(TEXT, label="question"), "answer": "(A", "tokenizer": tokenizer}
    for name, bad in [("question", None), ("question", 3), ("answer", ""), ("answer", None), ("answer", 1),
                      ("tokenizer", "gpt2"), ("tokenizer", 0)]:
        _raises_naming(name, sdata.render_mwe, {**render, name: bad})


# -- judges ---------------------------------------------------------------------------------------


class _FakeEncoder:
    """Deterministic unit vectors from each text's hash: the shape and contract of the encoder."""

    def encode(self, texts, batch_size, convert_to_tensor, normalize_embeddings, show_progress_bar):
        assert isinstance(batch_size, int) and batch_size >= 1
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:6], "little")
            v = torch.randn(384, generator=torch.Generator().manual_seed(seed))
            rows.append(v / v.norm())
        return torch.stack(rows)


@pytest.fixture(scope="module")
def fake_encoder():
    with mock.patch.object(judges, "_sentence_encoder", _FakeEncoder, {}):
        yield


@MEDIUM
@given(texts=TEXTS, as_tuple=st.booleans())
def test_vader_compound_valid(texts, as_tuple):
    texts = tuple(texts) if as_tuple else texts
    before = _freeze(texts)
    scores = judges.vader_compound(texts)
    assert _freeze(texts) == before and len(scores) == len(texts)
    assert all(-1.0 <= s <= 1.0 for s in scores)


_TEXTS_BREAKS = ["a lone string", None, 3, [1], ["ok", None], [b"bytes"], {"a": 1}]


@MEDIUM
@given(data=st.data())
def test_judge_text_functions_one_bad_argument_is_named(fake_encoder, data):
    judge = judges.EmbeddingJudge(torch.zeros(384), torch.tensor(0.0), 0.5, 1, 1)
    calls = {"vader_compound": judges.vader_compound, "embed": judges.embed,
             "prob_positive": judge.prob_positive, "score": judge.score}
    texts = data.draw(TEXTS, label="texts")
    for fn, call in calls.items():
        valid = {"texts": texts, **({"batch_size": data.draw(st.integers(1, 64))} if fn == "embed" else {})}
        breaks = [("texts", b) for b in _TEXTS_BREAKS]
        if fn == "embed":
            breaks += [("batch_size", b) for b in (0, -1, 1.5, "8", None, True)]
        for name, bad in breaks:
            args = {**valid, name: bad}
            _raises_naming(name, call, args, args["texts"])


@MEDIUM
@given(texts=TEXTS, batch_size=st.integers(1, 8), w=st.floats(-2, 2), b=st.floats(-2, 2))
def test_embed_and_embedding_judge_valid(fake_encoder, texts, batch_size, w, b):
    x = judges.embed(texts, batch_size)
    assert x.shape == (len(texts), 384) and x.dtype == torch.float32
    judge = judges.EmbeddingJudge(torch.full((384,), w), torch.tensor(b), 0.5, 1, 1)
    p, s = judge.prob_positive(texts), judge.score(texts)
    assert len(p) == len(s) == len(texts) and all(0 <= q <= 1 for q in p) and all(-1 <= v <= 1 for v in s)


def _logistic_args(data) -> dict:
    n = data.draw(st.integers(1, 12), label="N")
    d = data.draw(st.integers(1, 4), label="D")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    y = torch.randint(0, 2, (n,), generator=g)
    return {"x": torch.randn(n, d, generator=g), "y": data.draw(st.sampled_from([y, y.float(), y.bool()]), label="y"),
            "l2": data.draw(st.floats(0, 1), label="l2"), "steps": data.draw(st.integers(1, 5), label="steps")}


@MEDIUM
@given(data=st.data())
def test_fit_logistic_valid(data):
    args = _logistic_args(data)
    before = _freeze(args)
    w, b = judges.fit_logistic(**args)
    assert _freeze(args) == before
    assert w.shape == (args["x"].shape[1],) and b.shape == () and torch.isfinite(w).all() and torch.isfinite(b)


@MEDIUM
@given(data=st.data())
def test_fit_logistic_one_bad_argument_is_named(data):
    args = _logistic_args(data)
    x, y = args["x"], args["y"]
    n, d = x.shape
    nan_x = x.clone()
    nan_x[0, 0] = NAN
    breaks = [("x", x.tolist()), ("x", x.reshape(-1)), ("x", torch.zeros(0, d)), ("x", nan_x),
              ("x", x.to(torch.complex64)), ("x", None),
              ("y", y[:-1] if n > 1 else torch.zeros(2)), ("y", y.tolist()), ("y", torch.full((n,), 2.0)),
              ("y", y.reshape(n, 1)), ("l2", -1.0), ("l2", NAN), ("l2", "0.1"), ("l2", None),
              ("steps", 0), ("steps", 1.5), ("steps", None)]
    for name, bad in breaks:
        broken = {**args, name: bad}
        _raises_naming(name, judges.fit_logistic, broken, broken)


def _pairs(data, min_size: int = 2) -> list[ContrastivePair]:
    n = data.draw(st.integers(min_size, 8), label="pairs")
    return [ContrastivePair(f"good {i} great", f"bad {i} awful") for i in range(n)]


@FEW
@given(data=st.data())
def test_train_pair_judge_valid(fake_encoder, data):
    pairs = _pairs(data, min_size=3)
    fraction = data.draw(st.floats(0.05, 0.6), label="heldout_fraction")
    before = _freeze(pairs)
    with mock.patch.object(judges, "fit_logistic", _quick_fit):
        judge = judges.train_pair_judge(pairs, fraction, data.draw(st.integers(), label="seed"))
    assert _freeze(pairs) == before
    assert judge.n_heldout == 2 * max(1, round(fraction * len(pairs)))
    assert judge.n_train + judge.n_heldout == 2 * len(pairs) and 0 <= judge.heldout_accuracy <= 1


_real_fit = judges.fit_logistic


def _quick_fit(x, y, l2=1e-3, steps=200):
    return _real_fit(x, y, l2, steps=5)  # the fit's quality is tests/test_judges.py's business


@MEDIUM
@given(data=st.data())
def test_train_pair_judge_one_bad_argument_is_named(fake_encoder, data):
    pairs = _pairs(data)
    args = {"pairs": pairs, "heldout_fraction": data.draw(st.floats(0.05, 0.4), label="fraction"),
            "seed": data.draw(st.integers(), label="seed")}
    breaks = [("pairs", []), ("pairs", pairs[:1]), ("pairs", "ab"), ("pairs", [("a", "b")] * 3), ("pairs", None),
              ("pairs", [*pairs, ContrastivePair("a", None)]),
              ("heldout_fraction", 0.0), ("heldout_fraction", 1.0), ("heldout_fraction", -0.1),
              ("heldout_fraction", NAN), ("heldout_fraction", "0.2"), ("heldout_fraction", None),
              ("heldout_fraction", (len(pairs) - 0.4) / len(pairs)),  # rounds to every pair held out
              ("seed", "0"), ("seed", 1.5), ("seed", None)]
    with mock.patch.object(judges, "fit_logistic", side_effect=AssertionError("fitted despite bad input")):
        for name, bad in breaks:
            broken = {**args, name: bad}
            _raises_naming(name, judges.train_pair_judge, broken, broken)


@FEW
@given(n_train=st.none() | st.integers(2, 6), n_heldout=st.integers(1, 6), seed=st.integers())
def test_train_embedding_judge_valid(fake_encoder, n_train, n_heldout, seed):
    with mock.patch.object(judges, "fit_logistic", _quick_fit), \
            mock.patch.object(judges, "_split_rt_polarity", _small_split):
        judge = judges.train_embedding_judge(n_train, n_heldout, seed)
    assert judge.n_heldout == n_heldout and judge.n_train == (n_train or 10)


_real_split = judges._split_rt_polarity


def _small_split(n_train, n_heldout, seed):
    train, heldout = _real_split(n_train, n_heldout, seed)
    return train[:10], heldout  # n_train=None would embed every sentence


@MEDIUM
@given(data=st.data())
def test_train_embedding_judge_one_bad_argument_is_named(data):
    args = {"n_train": data.draw(st.none() | st.integers(1, 50), label="n_train"),
            "n_heldout": data.draw(st.integers(1, 50), label="n_heldout"), "seed": data.draw(st.integers())}
    breaks = [("n_train", 0), ("n_train", -1), ("n_train", 1.5), ("n_train", "5"), ("n_heldout", 0),
              ("n_heldout", 10**6), ("n_heldout", "5"), ("n_heldout", None), ("seed", 1.5), ("seed", None)]
    with mock.patch.object(judges, "embed", side_effect=AssertionError("embedded despite bad input")):
        for name, bad in breaks:
            _raises_naming(name, judges.train_embedding_judge, {**args, name: bad})


def _fake_judge():
    return judges.EmbeddingJudge(torch.arange(384.0) / 384, torch.tensor(0.25), 0.8, 10, 5)


@SETTINGS
@given(sub=st.sampled_from(["", "judges", "a/b"]), as_str=st.booleans(), bad=st.sampled_from(
    ["file", 3, "", "x\0y", b"bytes"]))
def test_load_embedding_judge_cache(sub, as_str, bad):
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(judges, "train_embedding_judge", _fake_judge):
        root = Path(tmp)
        cache = root / sub if sub else root
        judge = judges.load_embedding_judge(str(cache) if as_str else cache)
        assert cache.is_dir() and judge.heldout_accuracy == 0.8
        again = judges.load_embedding_judge(cache)  # from the cache
        assert torch.equal(again.weight, judge.weight)
        (root / "file").write_text("x")
        before = _files(root)
        _raises_naming("cache", judges.load_embedding_judge, {"cache": root / "file" if bad == "file" else bad})
        assert _files(root) == before


# -- KNN baseline ---------------------------------------------------------------------------------


def _snapshot(model):
    return [id(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


def _knn_args(data, model, tok) -> dict:
    n_layers = model.config.num_hidden_layers
    return {"model": model, "tokenizer": tok,
            "positive_texts": data.draw(st.lists(TEXT.filter(bool), min_size=1, max_size=4), label="texts"),
            "layers": data.draw(st.lists(st.integers(0, n_layers - 1), min_size=1, max_size=3, unique=True)),
            "k": data.draw(st.integers(1, 6), label="k"), "batch_size": data.draw(st.integers(1, 4), label="bs"),
            "max_length": data.draw(st.integers(1, 64), label="max_length"),
            "progress": False}


@FEW
@given(data=st.data())
def test_knn_fields_valid(tiny_llama, data):
    model, tok = tiny_llama
    args = _knn_args(data, model, tok)
    before = _freeze(args["positive_texts"])
    fields = knn_fields(**args)
    assert _freeze(args["positive_texts"]) == before
    assert list(fields) == args["layers"]
    n = len(args["positive_texts"])
    for f in fields.values():
        assert f.bank_size == n and f.hidden_size == model.config.hidden_size and f.neighbours == min(args["k"], n)


@MEDIUM
@given(data=st.data())
def test_knn_fields_one_bad_argument_is_named(tiny_llama, data):
    model, tok = tiny_llama
    args = _knn_args(data, model, tok)
    layers = args["layers"]
    breaks = [("model", None), ("model", torch.nn.Linear(2, 2)), ("tokenizer", None), ("tokenizer", "gpt2"),
              ("positive_texts", "abc"), ("positive_texts", []), ("positive_texts", [1]), ("positive_texts", None),
              ("positive_texts", [*args["positive_texts"], None]),
              ("layers", 1), ("layers", "1"), ("layers", [*layers, 9]), ("layers", [-1]), ("layers", layers * 2),
              ("layers", []), ("layers", [1.0]), ("layers", [True]),
              ("k", 0), ("k", 1.5), ("k", True), ("k", None), ("batch_size", 0), ("batch_size", "2"),
              ("max_length", 0), ("max_length", 2.0), ("progress", "yes"), ("progress", None)]
    before = _snapshot(model)
    for name, bad in breaks:
        broken = {**args, name: bad}
        _raises_naming(name, knn_fields, broken, broken["positive_texts"], broken["layers"])
    after = _snapshot(model)
    assert after[0] == before[0] and all(torch.equal(after[1][k], v) for k, v in before[1].items())


@MEDIUM
@given(data=st.data())
def test_knn_field_constructor(data):
    m, d = data.draw(st.integers(1, 20), label="M"), data.draw(st.integers(1, 16), label="d")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    bank = torch.randn(m, d, generator=g).to(data.draw(st.sampled_from([torch.float32, torch.float64,
                                                                        torch.bfloat16]), label="dtype"))
    args = {"bank": bank, "k": data.draw(st.integers(1, 30), label="k"),
            "chunk_rows": data.draw(st.none() | st.integers(1, 9), label="chunk_rows")}
    before = _freeze(bank)
    f = KNNField(**args)
    assert _freeze(bank) == before and (f.bank_size, f.hidden_size, f.neighbours) == (m, d, min(args["k"], m))
    nan_bank = bank.clone()
    nan_bank[0, 0] = NAN
    breaks = [("bank", bank.tolist()), ("bank", bank.reshape(-1)), ("bank", torch.zeros(0, d)), ("bank", nan_bank),
              ("bank", bank.to(torch.complex64) if bank.dtype != torch.bfloat16 else bank > 0), ("bank", bank > 0),
              ("k", 0), ("k", 1.5), ("k", True), ("k", None), ("chunk_rows", 0), ("chunk_rows", 2.5),
              ("chunk_rows", False)]
    for name, bad in breaks:
        broken = {**args, name: bad}
        _raises_naming(name, KNNField, broken, broken["bank"])


# -- metrics --------------------------------------------------------------------------------------


def _metric_calls(data) -> dict:
    """Random valid arguments for each public metric: name -> (function, kwargs)."""
    p = data.draw(st.integers(1, 5), label="P")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    top = data.draw(st.floats(0.1, 4), label="top")
    alphas = [0.0, top / 2, top]
    v = data.draw(st.integers(2, 9), label="V")
    tokens = data.draw(st.lists(st.lists(st.integers(0, 9), max_size=12), max_size=4), label="tokens")
    return {
        "likelihood_gap": (metrics.likelihood_gap, {"pos": torch.randn(p, 2, generator=g),
                                                    "neg": torch.randn(p, 3, generator=g)}),
        "steerability": (metrics.steerability, {"alphas": alphas, "gaps": torch.randn(3, p, generator=g),
                                                "sign": data.draw(st.sampled_from([1, -1]))}),
        "mcq_gap": (metrics.mcq_gap, {"logits": torch.randn(p, v, generator=g),
                                      "match_ids": torch.randint(0, v, (p,), generator=g),
                                      "other_ids": torch.randint(0, v, (p,), generator=g)}),
        "mcq_accuracy": (metrics.mcq_accuracy, {"gaps": torch.randn(p, generator=g)}),
        "distinct_n": (metrics.distinct_n, {"token_lists": tokens, "n": data.draw(st.integers(1, 3))}),
        "distinct_n_per_text": (metrics.distinct_n_per_text, {"token_lists": tokens, "n": 2}),
        "window_scores": (metrics.window_scores, {"token_ids": tokens[0] if tokens else [],
                                                  "window": data.draw(st.integers(1, 8))}),
        "moved_shares": (metrics.moved_shares, {"base": torch.randn(p, 2, generator=g),
                                                "steered": torch.randn(p, 3, generator=g),
                                                "sign": data.draw(st.sampled_from([1, -1])),
                                                "eps": data.draw(st.floats(0, 0.5))}),
    }


_METRIC_BREAKS = {
    "likelihood_gap": [("pos", [[0.0, 1.0]]), ("neg", None), ("pos", torch.zeros(1, 0))],
    "steerability": [("alphas", "abc"), ("alphas", [0.0, "x", 1.0]), ("alphas", None), ("alphas", 3.0),
                     ("gaps", [[0.0], [1.0], [2.0]]), ("gaps", None), ("sign", 0), ("sign", True)],
    "mcq_gap": [("logits", [[0.0, 1.0]]), ("match_ids", [0]), ("other_ids", None),
                ("match_ids", "float ids")],
    "mcq_accuracy": [("gaps", [1.0, -1.0]), ("gaps", None), ("gaps", torch.zeros(0))],
    "distinct_n": [("token_lists", "abc"), ("token_lists", 5), ("token_lists", [[1, "a"]]),
                   ("token_lists", [None]), ("n", 0), ("n", 1.5)],
    "distinct_n_per_text": [("token_lists", None), ("token_lists", [["x"]]), ("n", True)],
    "window_scores": [("token_ids", None), ("token_ids", "abc"), ("token_ids", 7), ("window", 0),
                      ("window", 2.0)],
    "moved_shares": [("base", [[0.0]]), ("steered", None), ("sign", 2), ("eps", "0.1"), ("eps", NAN),
                     ("eps", -1.0), ("eps", None)],
}


@MEDIUM
@given(data=st.data())
def test_metrics_valid_and_one_bad_argument_is_named(data):
    calls = _metric_calls(data)
    fname = data.draw(st.sampled_from(sorted(calls)), label="function")
    fn, args = calls[fname]
    before = _freeze(args)
    result = fn(**args)
    assert _freeze(args) == before
    if fname in ("mcq_accuracy", "distinct_n"):
        assert 0.0 <= result <= 1.0
    elif fname == "moved_shares":
        assert 0.0 <= result["right"] + result["wrong"] <= 1.0 + 1e-9
    elif fname == "steerability":
        assert 0.0 <= result["steerable_rate"] <= 1.0 and math.isfinite(result["mean_slope"])
    elif fname == "window_scores":
        assert all(0 <= a < b <= len(args["token_ids"]) for a, b in result)
    elif fname in ("likelihood_gap", "mcq_gap"):
        assert result.shape == (next(iter(args.values())).shape[0],)
    for name, bad in _METRIC_BREAKS[fname]:
        if isinstance(bad, str) and bad == "float ids":
            bad = args["match_ids"].float()
        broken = {**args, name: bad}
        _raises_naming(name, fn, broken, broken)
