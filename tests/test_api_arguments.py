"""Property tests of the argument checks of ``train_field``, ``generate``, ``load_model``,
the configs and ``SteeringField``.

Random valid argument sets must work (and give results with the asked-for shapes); the same
sets with one argument broken must raise ``SVFArgumentError`` naming that argument, before any
work: the model (parameters, module tree, hooks), the inputs and the file system are unchanged.
"""

from __future__ import annotations

import math
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import random_field, tiny_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import svf
from svf import SteeringField, SVFArgumentError, TrainConfig
from svf.artifacts import ArtifactError
from svf.field_packing import row_field
from svf.generation import format_prompts
from svf.scorer import ScorerConfig
from svf.training import pair_features

EXAMPLES = int(os.environ.get("SVF_PROPERTY_EXAMPLES", "150"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                    HealthCheck.function_scoped_fixture])
# valid calls that train or generate cost ~0.1-0.5 s each: fewer examples
SLOW_SETTINGS = settings(SETTINGS, max_examples=max(EXAMPLES // 15, 3))
N_LAYERS = 4


@pytest.fixture(scope="module")
def setup(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok), layers=N_LAYERS)
    words = ["sun", "rain", "cake", "road", "song", "tree", "game", "lamp", "boat", "milk", "door", "bird"]
    pairs = [svf.ContrastivePair(f"a lovely {w}", f"an awful {w}") for w in words * 2]
    return model, char_tok, pairs


def snapshot(model) -> tuple:
    """Module tree (ids), parameters and buffers (bitwise), and every hook dict's size."""
    hooks = [len(getattr(m, name)) for m in model.modules()
             for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")]
    return [id(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}, hooks


def assert_same(before: tuple, after: tuple) -> None:
    assert after[0] == before[0] and after[2] == before[2]
    assert all(torch.equal(after[1][k], v) for k, v in before[1].items())


def assert_names(err: pytest.ExceptionInfo, name: str) -> None:
    assert name in str(err.value), f"message does not name {name!r}: {err.value}"


# ---------------------------------------------------------------------------- configs

fractions = st.tuples(st.floats(0.1, 0.45), st.floats(0.1, 0.45)).map(lambda ab: (*ab, 1.0 - sum(ab)))


@st.composite
def train_configs(draw) -> TrainConfig:
    return TrainConfig(
        r=draw(st.integers(1, 8)), de=draw(st.integers(1, 4)), m=draw(st.integers(1, 8)),
        lr=draw(st.floats(1e-4, 1e-2)), weight_decay=draw(st.floats(0, 0.1)),
        batch_size=draw(st.integers(1, 64)), max_epochs=draw(st.integers(1, 2)),
        patience=draw(st.integers(1, 3)), fractions=draw(fractions), seed=draw(st.integers(0, 2**31)),
        default_strength=draw(st.floats(-2, 2)),
    )


_CONFIG_BREAKS = [
    ("r", 0), ("r", 1.5), ("r", True), ("de", -1), ("m", None), ("lr", 0.0), ("lr", math.nan),
    ("lr", -1e-3), ("weight_decay", -0.1), ("weight_decay", math.inf), ("batch_size", 0),
    ("max_epochs", 0), ("patience", 0), ("fractions", (0.5, 0.5)), ("fractions", (0.5, 0.5, 0.0)),
    ("fractions", (0.4, 0.1, 0.6)), ("fractions", "abc"), ("fractions", (math.nan, 0.5, 0.5)),
    ("fractions", (True, 0.0, 0.0)), ("seed", "1"), ("default_strength", math.nan),
]


@SETTINGS
@given(config=train_configs(), brk=st.sampled_from(_CONFIG_BREAKS))
def test_train_config_names_the_bad_field(config, brk):
    name, bad = brk
    with pytest.raises(SVFArgumentError) as err:
        replace(config, **{name: bad})
    assert_names(err, f"TrainConfig.{name}")
    # edited after construction: caught when used
    config = replace(config)
    object.__setattr__(config, name, bad)
    with pytest.raises(SVFArgumentError) as err:
        config.validate()
    assert_names(err, f"TrainConfig.{name}")


_SCORER_BREAKS = [
    ("hidden_size", 0), ("hidden_size", 2.0), ("r", 0), ("de", False), ("m", -3), ("eps", 0.0),
    ("eps", math.inf), ("train_layers", ()), ("train_layers", [1, 2]), ("train_layers", (2, 1)),
    ("train_layers", (1, 1)), ("train_layers", (-1, 0)), ("train_layers", ("1",)),
]


@SETTINGS
@given(d=st.integers(1, 64), layers=st.sets(st.integers(0, 30), min_size=1),
       brk=st.sampled_from(_SCORER_BREAKS))
def test_scorer_config_names_the_bad_field(d, layers, brk):
    cfg = ScorerConfig(d, tuple(sorted(layers)), r=3, de=2, m=5)
    name, bad = brk
    with pytest.raises(SVFArgumentError) as err:
        replace(cfg, **{name: bad})
    assert_names(err, f"ScorerConfig.{name}")


# ---------------------------------------------------------------------------- train_field

@st.composite
def train_calls(draw) -> dict:
    layers = sorted(draw(st.sets(st.integers(0, N_LAYERS - 1), min_size=1)))
    steer = sorted(draw(st.sets(st.sampled_from(layers), min_size=1)))
    return {"concept": draw(st.text(min_size=1, max_size=8)), "train_layers": layers, "steer_layers": steer,
            "config": draw(train_configs()), "batch_size": draw(st.integers(1, 16)), "progress": False,
            "model_name": draw(st.sampled_from(["", "tiny"]))}


@SLOW_SETTINGS
@given(call=train_calls())
def test_train_field_valid_arguments_train_a_field(setup, call, tmp_path_factory):
    model, tok, pairs = setup
    before = snapshot(model)
    field, report = svf.train_field(model, tok, pairs, **call)
    cfg = call["config"]
    assert field.train_layers == tuple(call["train_layers"]) and field.steer_layers == tuple(call["steer_layers"])
    assert field.scorer.R.shape == (cfg.r, model.config.hidden_size) and field.scorer.W1.shape == (cfg.m, cfg.r)
    assert report.n_train + report.n_val + report.n_test == len(pairs)
    assert [r["layer"] for r in report.per_layer] == call["train_layers"]
    assert_same(before, snapshot(model))
    loaded = SteeringField.load(field.save(tmp_path_factory.mktemp("f")), model)
    assert torch.equal(loaded.scorer.R, field.scorer.R) and loaded.concept == call["concept"]


def _train_breaks(model) -> list[tuple[str, object]]:
    bad_config = TrainConfig()
    object.__setattr__(bad_config, "lr", -1.0)  # edited after construction
    return [
        ("model", None), ("model", torch.nn.Linear(2, 2)), ("tokenizer", None), ("tokenizer", "gpt2"),
        ("pairs", "a lovely day"), ("pairs", [("good", "bad", "ugly")] * 20), ("pairs", None), ("pairs", []),
        ("concept", ""), ("concept", 3), ("train_layers", [N_LAYERS]), ("train_layers", [2, 1]),
        ("train_layers", "0-3"), ("train_layers", []), ("train_layers", [0.0]), ("steer_layers", []),
        ("steer_layers", [1, 1]), ("steer_layers", 1), ("config", {"r": 4}), ("config", bad_config),
        ("model_name", 3), ("batch_size", 0), ("batch_size", 2.0), ("progress", "no"), ("features", "x"),
    ]


@SETTINGS
@given(call=train_calls(), data=st.data())
def test_train_field_one_bad_argument_is_named_and_nothing_changes(setup, call, data):
    model, tok, pairs = setup
    name, bad = data.draw(st.sampled_from(_train_breaks(model)), label="broken argument")
    args = {"model": model, "tokenizer": tok, "pairs": pairs, **call, name: bad}
    if name == "steer_layers" and bad == 1 and call["train_layers"] == [1]:
        args["train_layers"] = [0, 1]
    before, pairs_before = snapshot(model), list(pairs)
    with pytest.raises(SVFArgumentError) as err:
        svf.train_field(**args)
    assert_names(err, "TrainConfig.lr" if bad is not None and isinstance(bad, TrainConfig) else name)
    assert_same(before, snapshot(model))
    assert pairs == pairs_before


def test_steer_layers_outside_train_layers_and_foreign_features_are_named(setup):
    model, tok, pairs = setup
    with pytest.raises(SVFArgumentError, match=r"steer_layers \[3\] must be a subset"):
        svf.train_field(model, tok, pairs, concept="c", train_layers=[0, 1], steer_layers=[3], progress=False)
    other = tiny_model("llama", vocab_size=len(tok), layers=N_LAYERS, d=32)
    feats = pair_features(other, tok, pairs, [0, 1], progress=False)
    with pytest.raises(SVFArgumentError, match="features.train is .* hidden size 64"):
        svf.train_field(model, tok, pairs, concept="c", train_layers=[0, 1], features=feats, progress=False)
    with pytest.raises(SVFArgumentError, match=r"features lack layers \[2\]"):
        svf.train_field(other, tok, pairs, concept="c", train_layers=[0, 2], features=feats, progress=False)


@pytest.mark.parametrize("name,bad", [("layers", [7]), ("layers", []), ("batch_size", -1), ("progress", 1),
                                      ("config", "fast"), ("pairs", ["x"]), ("tokenizer", 3)])
def test_pair_features_names_the_bad_argument(setup, name, bad):
    model, tok, pairs = setup
    args = {"model": model, "tokenizer": tok, "pairs": pairs, "layers": [0, 1], "progress": False, name: bad}
    with pytest.raises(SVFArgumentError) as err:
        pair_features(**args)
    assert_names(err, name)


# ---------------------------------------------------------------------------- generate

prompts = st.lists(st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=6),
                   min_size=1, max_size=3)


@SLOW_SETTINGS
@given(texts=prompts, n=st.integers(1, 3), chat=st.booleans(), sample=st.booleans(), seed=st.integers(0, 2**32))
def test_generate_valid_arguments(setup, texts, n, chat, sample, seed):
    model, tok, _ = setup
    out = svf.generate(model, tok, texts, max_new_tokens=n, chat=chat, do_sample=sample, seed=seed)
    assert len(out) == len(texts) and all(isinstance(t, str) for t in out)
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) <= n for t in out)
    if sample:  # the seed makes sampling reproducible
        assert out == svf.generate(model, tok, texts, max_new_tokens=n, chat=chat, do_sample=True, seed=seed)


_GENERATE_BREAKS = [
    ("prompts", "hello"), ("prompts", []), ("prompts", [1]), ("prompts", None), ("prompts", ["a", b"b"]),
    ("max_new_tokens", 0), ("max_new_tokens", -1), ("max_new_tokens", 2.5), ("max_new_tokens", True),
    ("chat", "yes"), ("do_sample", 1), ("seed", -1), ("seed", 1.5), ("seed", 2**64),
    ("model", None), ("model", "gpt2"), ("tokenizer", None), ("tokenizer", str),
]


@SETTINGS
@given(texts=prompts, brk=st.sampled_from(_GENERATE_BREAKS))
def test_generate_one_bad_argument_is_named(setup, texts, brk):
    model, tok, _ = setup
    name, bad = brk
    args = {"model": model, "tokenizer": tok, "prompts": texts, "max_new_tokens": 2, name: bad}
    before = snapshot(model)
    with pytest.raises(SVFArgumentError) as err:
        svf.generate(**args)
    assert_names(err, name)
    assert_same(before, snapshot(model))


def test_format_prompts_refuses_a_lone_string(setup):
    _, tok, _ = setup
    with pytest.raises(SVFArgumentError, match="prompts must be a sequence of strings, not a single string"):
        format_prompts(tok, "hello")
    assert format_prompts(tok, ["hi"], chat=False) == ["hi"]


# ---------------------------------------------------------------------------- load_model

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, setup):
    model, tok, _ = setup
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_load_model_valid(tiny_dir, setup, dtype):
    model, tok = svf.load_model(tiny_dir, dtype=dtype, device=torch.device("cpu"))
    assert model.dtype == dtype and not model.training and tok.padding_side == "left"
    ref = setup[0].state_dict()
    assert all(torch.equal(v, ref[k].to(dtype)) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name,bad,message", [
    ("name_or_path", 3, "name_or_path must be a path"),
    ("name_or_path", "", "name_or_path must be a non-empty path"),
    ("name_or_path", "/no/such/dir/anywhere", "name_or_path '/no/such/dir/anywhere' .*could not be loaded"),
    ("dtype", torch.int32, "dtype must be one of"),
    ("dtype", "float32", "dtype must be one of"),
    ("device", "cuda:99", "device 'cuda:99' is not available"),
    ("device", "gpu", "device 'gpu' is not a device"),
    ("device", 0.5, "device must be a str or torch.device"),
])
def test_load_model_names_the_bad_argument(tiny_dir, name, bad, message):
    args = {"name_or_path": tiny_dir, name: bad}
    with pytest.raises(SVFArgumentError, match=message):
        svf.load_model(**args)


def test_load_model_refuses_non_model_paths(tmp_path):
    with pytest.raises(SVFArgumentError, match="is a directory without config.json"):
        svf.load_model(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SVFArgumentError, match="a file, not a model directory"):
        svf.load_model(tmp_path / "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


# ---------------------------------------------------------------------------- SteeringField

def test_field_save_and_load_name_bad_paths(setup, tmp_path):
    model, _, _ = setup
    field = random_field(model)
    for bad in (3, None, b"field"):
        with pytest.raises(SVFArgumentError, match="path must be a str or os.PathLike"):
            field.save(bad)
        with pytest.raises(SVFArgumentError, match="path must be a str or os.PathLike"):
            SteeringField.load(bad)
    with pytest.raises(SVFArgumentError, match="model must be a Hugging Face decoder model"):
        SteeringField.load(field.save(tmp_path / "ok"), model="llama")


def test_saving_a_broken_field_writes_nothing(setup, tmp_path):
    model, _, _ = setup
    field = random_field(model)
    with torch.no_grad():
        field.scorer.W1[0, 0] = math.nan
    with pytest.raises(ArtifactError, match="W1"):
        field.save(tmp_path / "new" / "field")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(ArtifactError, match="cannot save"):
        random_field(model).save(tmp_path / "blocker" / "sub")
    assert (tmp_path / "blocker").read_text() == "x"


@pytest.mark.parametrize("call,message", [
    (lambda f: row_field([f], 9), "layer 9 is not in the scorer's training layers"),
    (lambda f: row_field([f], "1"), "layer '1' is not in the scorer's training layers"),
    (lambda f: row_field([f], 1, method="knn"), r"method must be one of \('svf', 'caa'\), got 'knn'"),
    (lambda f: f.mean_norm(-1), "layer -1 is not"),
    (lambda f: f.caa_vector(4), "layer 4 is not"),
])
def test_field_layer_lookups_name_the_layer(setup, call, message):
    field = random_field(setup[0], layers=(1, 2, 3))
    with pytest.raises(SVFArgumentError, match=message):
        call(field)


def test_every_public_callable_is_covered():
    """A new public function of ``svf`` must get argument tests (here or in the files named)."""
    covered = {"train_field", "generate", "load_model", "SteeringField", "TrainConfig", "ScorerConfig",
               "steer", "steer_requests", "Steering", "BatchSteering",  # test_argument_properties.py
               "ConceptScorer", "ContrastivePair", "TrainReport",  # built from checked configs / plain data
               "sentiment_pairs", "mwe_pairs", "load_concept",  # test_eval_arguments.py
               "Concept",  # plain data, returned by load_concept
               "load_pairs",  # test_own_data.py
               "ControlVector", "control_vector_from_field", "load_control_vector",
               "write_control_vector",  # test_control_vectors.py
               "ArtifactError", "SVFArgumentError"}
    public = {n for n in svf.__all__ if callable(getattr(svf, n))}
    assert public <= covered, f"public callables without argument tests: {sorted(public - covered)}"
    assert Path(__file__).with_name("test_eval_arguments.py").is_file()
