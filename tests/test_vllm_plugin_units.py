"""The vLLM plugin's parts that need no vLLM: configuration, request parsing and its bounds,
the entry point's decision to patch or not, the per-token buffers the runner fills before each
forward, and the steering op on a decoder layer's ``(hidden_states, residual)``. End-to-end
engine tests live in ``tests_vllm/``."""

from __future__ import annotations

import logging
import math
import sys
import types

import numpy as np
import pytest
import torch
from helpers import random_field

from svf import ArtifactError
from svf.field_packing import layer_tables
from svf.hf import decoder_layers
from svf.vllm_plugin import register, vllm_hooks
from svf.vllm_plugin.config import ENV_VAR, FieldSpec, ServingConfig, serving_config
from svf.vllm_plugin.request_params import MAX_STRENGTH, SteerRequest, parse_request
from svf.vllm_plugin.served_fields import ServedFields, SteeredLayer, alpha_bounds
from svf_kernels import SVFArgumentError

L, D = 6, 40
SHAPE = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=L, hidden_size=D))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("fields")
    specs = {"a": (1, (1, 2, 3), (2, 3)), "b": (2, (1, 2, 3), (1, 3)), "c": (3, (0, 1, 2), (1,))}
    return {name: str(random_field(SHAPE, layers=list(lay), steer_layers=steer, seed=seed,
                                   concept=name).save(folder / name))
            for name, (seed, lay, steer) in specs.items()}


# -- configuration -------------------------------------------------------------------------

def test_config_forms():
    cfg = {"svf": {"fields": {"one": "/x.svf", "two": ["/a.svf", "/b.svf"],
                              "three": {"paths": "/c.svf", "layers": [5, 3, 3]},
                              "cv": {"vector": "/v.gguf"}, "both": {"paths": "/c.svf", "vector": "/v.gguf"},
                              "caa": {"paths": ["/c.svf"], "method": "caa"}}}}
    got = serving_config(cfg, environ={}).fields
    assert got == {"one": FieldSpec("one", ("/x.svf",)),
                   "two": FieldSpec("two", ("/a.svf", "/b.svf")),
                   "three": FieldSpec("three", ("/c.svf",), (3, 5)),
                   "cv": FieldSpec("cv", (), vector="/v.gguf"),
                   "both": FieldSpec("both", ("/c.svf",), vector="/v.gguf"),
                   "caa": FieldSpec("caa", ("/c.svf",), method="caa")}
    assert serving_config({}, environ={}) == ServingConfig() == serving_config(None, environ={})
    assert not ServingConfig()
    env = serving_config(None, environ={ENV_VAR: '{"x": "/x.svf"}'})
    assert env == ServingConfig({"x": FieldSpec("x", ("/x.svf",))})


@pytest.mark.parametrize("cfg, env, needle", [
    ({"svf": {"fields": {"a": "/a"}}}, '{"b": "/b"}', "give them one way"),
    (None, "{not json", "is not JSON"),
    (None, "[1, 2]", "non-empty mapping"),
    ({"svf": {"fields": {}}}, None, "non-empty mapping"),
    ({"svf": {"field": {"a": "/a"}}}, None, "must be a mapping with the keys 'fields'"),
    ({"svf": {}}, None, "must be a mapping with the keys 'fields'"),
    ({"svf": {"max_entries": 3}}, None, "needs 'fields', 'fields_dir' or both"),
    ({"svf": {"fields": {"a": "/a"}, "max_entries": 3}}, None, "gives ['max_entries'] without 'fields_dir'"),
    ({"svf": {"fields_dir": 3}}, None, "['fields_dir'] must be a directory path"),
    ({"svf": {"fields_dir": "/no/such/dir"}}, None, "'/no/such/dir' is not a directory"),
    ({"svf": {"fields_dir": "/", "max_entries": 0}}, None, "['max_entries'] must be an integer from 1"),
    ({"svf": {"fields_dir": "/", "max_units": True}}, None, "['max_units'] must be an integer from 1"),
    ({"svf": {"fields": {"a": 3}}}, None, "field 'a' needs an artifact path"),
    ({"svf": {"fields": {"a": []}}}, None, "field 'a' needs an artifact path"),
    ({"svf": {"fields": {"a": {"path": "/a"}}}}, None, "unknown keys ['path']"),
    ({"svf": {"fields": {"a": {"layers": [1]}}}}, None, "needs 'paths' (its field), 'vector'"),
    ({"svf": {"fields": {"a": {"vector": ""}}}}, None, "vector must be a file path"),
    ({"svf": {"fields": {"a": {"paths": "/a", "method": "knn"}}}}, None, "method must be one of"),
    ({"svf": {"fields": {"a": {"paths": ["/a", "/b"], "method": "caa"}}}}, None, "one path and no vector"),
    ({"svf": {"fields": {"a": {"paths": "/a", "vector": "/v.gguf", "method": "caa"}}}}, None,
     "one path and no vector"),
    ({"svf": {"fields": {"a": {"paths": "/a", "layers": [-1]}}}}, None, "layers must be"),
    ({"svf": {"fields": {"a": {"paths": "/a", "layers": [True]}}}}, None, "layers must be"),
    ({"svf": {"fields": {"": "/a"}}}, None, "non-empty strings"),
])
def test_config_errors_name_the_problem(cfg, env, needle):
    with pytest.raises(SVFArgumentError, match="svf plugin configuration") as info:
        serving_config(cfg, environ={ENV_VAR: env} if env else {})
    assert needle in str(info.value)


# -- requests --------------------------------------------------------------------------------

NAMES = ("pos", "formal")


@pytest.mark.parametrize("extra, want", [
    (None, None), ({}, None), ({"other": 1}, None),
    ({"svf": {"field": "pos", "strength": 0.2}}, SteerRequest("pos", 0.2)),
    ({"svf": '{"field": "pos", "alpha": 3}'}, SteerRequest("pos", alpha=3.0)),
    ({"svf": {"field": "formal"}}, SteerRequest("formal")),
    ({"svf_field": "pos", "svf_strength": -1}, SteerRequest("pos", -1.0)),
    ({"svf_field": "pos", "svf_strength": MAX_STRENGTH}, SteerRequest("pos", MAX_STRENGTH)),
    ({"svf": {"field": "pos", "strength": -MAX_STRENGTH}}, SteerRequest("pos", -MAX_STRENGTH)),
    ({"svf_field": "pos", "svf_alpha": 1e30}, SteerRequest("pos", alpha=1e30)),  # no bound given
])
def test_request_forms(extra, want):
    assert parse_request(extra, NAMES) == want


@pytest.mark.parametrize("extra, needle", [
    ({"svf": {"field": "zz"}}, "unknown field 'zz' in extra_args['svf']['field']; served fields: ['formal', 'pos']"),
    ({"svf_field": "zz"}, "unknown field 'zz' in extra_args['svf_field']"),
    ({"svf": {"field": "pos", "strength": math.nan}}, "extra_args['svf']['strength'] must be finite"),
    ({"svf": {"field": "pos", "strength": math.inf}}, "must be finite"),
    ({"svf": {"field": "pos", "strength": "0.2"}}, "extra_args['svf']['strength'] must be a number"),
    ({"svf_field": "pos", "svf_strength": 1e30}, "extra_args['svf_strength'] must be between -10 and 10"),
    ({"svf": {"field": "pos", "strength": -10.5}}, "must be between -10 and 10 (a relative "
                                                   + "strength; a field's default is about 0.25), got -10.5"),
    ({"svf_field": "pos", "svf_alpha": -math.inf}, "extra_args['svf_alpha'] must be finite"),
    ({"svf_field": "pos", "svf_alpha": True}, "extra_args['svf_alpha'] must be a number"),
    ({"svf": {"field": "pos", "strength": 1, "alpha": 1}}, "give one"),
    ({"svf": {"strength": 1}}, "extra_args['svf']['field'] is missing"),
    ({"svf": {"field": 3}}, "must be a field name"),
    ({"svf": {"field": "pos", "strenght": 1}}, "unknown steering keys [\"extra_args['svf']['strenght']\"]"),
    ({"svf": "{nope"}, "is text but not JSON"),
    ({"svf": [1]}, "must be an object"),
    ({"svf": {"field": "pos"}, "svf_strength": 1}, "give the steering one way"),
])
def test_request_errors_name_the_problem(extra, needle):
    with pytest.raises(SVFArgumentError) as info:
        parse_request(extra, NAMES)
    assert needle in str(info.value)


def test_alpha_is_bounded_per_field():
    bounds = {"pos": 5.0, "formal": 50.0}
    assert parse_request({"svf_field": "pos", "svf_alpha": -5}, NAMES, bounds.__getitem__) == \
        SteerRequest("pos", alpha=-5.0)
    assert parse_request({"svf_field": "formal", "svf_alpha": 6}, NAMES, bounds.__getitem__) == \
        SteerRequest("formal", alpha=6.0)
    with pytest.raises(SVFArgumentError) as info:
        parse_request({"svf_field": "pos", "svf_alpha": 6}, NAMES, bounds.__getitem__)
    assert str(info.value) == ("extra_args['svf_alpha'] must be between -5 and 5 for field 'pos' "
                               "(10 times its largest strength scale), got 6")

    def unused(name):
        raise AssertionError("the bound is read only for a request that gives an alpha")

    assert parse_request({"svf_field": "pos", "svf_strength": 2}, NAMES, unused) == SteerRequest("pos", 2.0)


def test_request_to_engine_without_fields():
    with pytest.raises(SVFArgumentError, match="serves no SVF fields"):
        parse_request({"svf": {"field": "pos"}}, ())


def test_cache_salt_separates_steering():
    salts = {SteerRequest("pos", 0.2).cache_salt(), SteerRequest("pos", 0.3).cache_salt(),
             SteerRequest("pos", alpha=0.2).cache_salt(), SteerRequest("formal", 0.2).cache_salt(),
             SteerRequest("pos").cache_salt()}
    assert len(salts) == 5
    assert SteerRequest("pos", 0.2).cache_salt() == SteerRequest("pos", 0.2).cache_salt()


# -- the entry point: patch a tested vLLM, leave any other alone --------------------------------

OUT_OF_RANGE = "0.31.0"
_VLLM_VERSION = vllm_hooks.vllm_version


@pytest.fixture
def plugin(monkeypatch, caplog):
    """A process in which the plugin has not run yet, told vLLM's version (outside the tested
    range unless a test says otherwise), without $SVF_VLLM_FIELDS; returns the svf log lines."""
    monkeypatch.setattr(vllm_hooks, "_DONE", False)
    monkeypatch.setattr(vllm_hooks, "vllm_version", lambda: OUT_OF_RANGE)
    monkeypatch.delenv(ENV_VAR, raising=False)
    caplog.set_level(logging.WARNING)
    return lambda: [r.getMessage() for r in caplog.records if r.name.startswith("svf")]


def test_tested_range():
    assert vllm_hooks.TESTED_VLLM == ">=0.32.0,<0.33"
    assert all(map(vllm_hooks.in_tested_range, ["0.32.0", "0.32.3", "0.32.1rc1", "0.32.0+cpu"]))
    assert not any(map(vllm_hooks.in_tested_range, ["0.31.2", "0.33.0", "0.33.0rc1", "1.0", "dev"]))


def test_out_of_range_without_fields_logs_one_line_and_installs_nothing(plugin):
    register()
    register()  # vLLM may call it again: nothing more happens
    assert plugin() == [(f"svf: vLLM {OUT_OF_RANGE} is outside the versions the svf plugin is "
                         "tested with (>=0.32.0,<0.33); the svf plugin installs nothing (vLLM runs "
                         "as without it)")]
    assert vllm_hooks.installed_hooks() == [] and "vllm" not in sys.modules


def test_out_of_range_with_fields_stops_naming_both_versions(plugin, monkeypatch):
    monkeypatch.setenv(ENV_VAR, '{"a": "/a.svf"}')
    with pytest.raises(vllm_hooks.UnsupportedVLLMError) as info:
        register()
    text = str(info.value)
    assert f"vLLM {OUT_OF_RANGE} is outside" in text and "(>=0.32.0,<0.33)" in text, text
    assert plugin() == []


def test_out_of_range_with_fields_in_the_engine_configuration(plugin):
    """vLLM loads its plugins while it builds the engine from arguments that hold
    ``additional_config`` (here: this test's local variable, a caller of ``register``)."""
    engine_args = types.SimpleNamespace(additional_config={"svf": {"fields": {"a": "/a.svf"}}})
    with pytest.raises(vllm_hooks.UnsupportedVLLMError, match="0.31.0 is outside"):
        register()
    assert engine_args.additional_config


class _Runner:
    def step(self, x):
        return x

    def stop(self):
        return "stopped"


def _targets(step_params=("self", "x"), stop_patch=None):
    def wrap(f):
        return lambda self, *args: f(self, *args) * 2

    return (vllm_hooks.Target(__name__, "_Runner", "step", step_params, wrap),
            vllm_hooks.Target(__name__, "_Runner", "stop", ("self",), stop_patch or wrap),
            vllm_hooks.Target("svf_absent_module", "X", "y", ("self",), wrap, optional=True))


def test_in_range_patches_every_target(plugin, monkeypatch):
    monkeypatch.setattr(vllm_hooks, "vllm_version", lambda: "0.32.0")
    monkeypatch.setattr(vllm_hooks, "PATCHES", _targets())
    step, stop = _Runner.__dict__["step"], _Runner.__dict__["stop"]
    try:
        register()
        assert _Runner().step(1) == 2 and _Runner().stop() == "stoppedstopped"
        assert vllm_hooks.installed_hooks() == [f"{__name__}._Runner.step", f"{__name__}._Runner.stop"]
        assert plugin() == []
    finally:
        _Runner.step, _Runner.stop = step, stop


def test_a_signature_mismatch_counts_as_outside_the_range(plugin, monkeypatch):
    monkeypatch.setattr(vllm_hooks, "vllm_version", lambda: "0.32.1")
    monkeypatch.setattr(vllm_hooks, "PATCHES", _targets(step_params=("self", "x", "y")))
    register()
    assert plugin() == [("svf: vLLM 0.32.1 differs from the vLLM the svf plugin is tested with "
                         "where the plugin patches it: _Runner.step takes (self, x), the plugin "
                         "expects (self, x, y) (>=0.32.0,<0.33); the svf plugin installs nothing "
                         "(vLLM runs as without it)")]
    assert vllm_hooks.installed_hooks() == [] and _Runner().step(1) == 1
    monkeypatch.setattr(vllm_hooks, "_DONE", False)
    monkeypatch.setenv(ENV_VAR, '{"a": "/a.svf"}')
    with pytest.raises(vllm_hooks.UnsupportedVLLMError, match=r"_Runner.step takes \(self, x\)"):
        register()


def test_other_failures_are_logged_and_leave_vllm_alone(plugin, monkeypatch):
    def boom(f):
        raise RuntimeError("no such thing")

    monkeypatch.setattr(vllm_hooks, "vllm_version", lambda: "0.32.0")
    monkeypatch.setattr(vllm_hooks, "PATCHES", _targets(stop_patch=boom))
    register()
    assert plugin() == [("svf: the vLLM plugin could not install its hooks (RuntimeError: no "
                         "such thing); it installs nothing")]
    assert vllm_hooks.installed_hooks() == [] and _Runner().step(1) == 1


def test_a_failed_install_with_fields_in_the_environment_stops_the_engine(plugin, monkeypatch):
    """Fields configured in SVF_VLLM_FIELDS would go unserved: the engine must not start."""
    def boom(f):
        raise RuntimeError("no such thing")

    monkeypatch.setattr(vllm_hooks, "vllm_version", lambda: "0.32.0")
    monkeypatch.setattr(vllm_hooks, "PATCHES", _targets(stop_patch=boom))
    monkeypatch.setenv(ENV_VAR, '{"a": "/a.svf"}')
    with pytest.raises(RuntimeError, match=r"fields are configured \(SVF_VLLM_FIELDS\) but the "
                       r"vLLM plugin could not install its hooks: RuntimeError: no such thing"):
        register()
    assert vllm_hooks.installed_hooks() == [] and _Runner().step(1) == 1


def test_without_vllm_the_plugin_logs_and_returns(plugin, monkeypatch):
    monkeypatch.setattr(vllm_hooks, "vllm_version", _VLLM_VERSION)  # reads vllm, absent here
    register()
    assert len(plugin()) == 1 and "No module named 'vllm'" in plugin()[0]


# -- loading at start --------------------------------------------------------------------------

def _served(artifacts, max_tokens=64, **layers) -> ServedFields:
    specs = {"a": FieldSpec("a", (artifacts["a"],)), "ab": FieldSpec("ab", (artifacts["a"], artifacts["b"])),
             "c": FieldSpec("c", (artifacts["c"],), layers.get("c"))}
    return ServedFields(specs, hidden_size=D, num_layers=L, max_tokens=max_tokens)


def test_layers_and_tables_match_batch_steering(artifacts):
    served = _served(artifacts)
    assert served.layers == [1, 2, 3]  # a: 2, 3; ab: a's steering layers; c: 1
    from svf import SteeringField
    from svf.table_entries import table_entry
    entries = [table_entry(SteeringField.load(artifacts["a"])),
               table_entry([SteeringField.load(artifacts["a"]), SteeringField.load(artifacts["b"])]),
               table_entry(SteeringField.load(artifacts["c"]))]
    assert [e.layers for e in entries] == [(2, 3), (2, 3), (1,)]
    want = layer_tables(entries, directions=["gradient"] * 3, targets=[None] * 3)
    for row, i in enumerate(served.layers):
        assert torch.equal(torch.from_numpy(served.id_maps[row]), want[i].id_map)
        assert torch.allclose(torch.from_numpy(served.scales[row]), want[i].scales)


def test_alpha_bounds_are_the_largest_strength_the_engine_steers_with(artifacts):
    served = _served(artifacts)
    specs = {"a": FieldSpec("a", (artifacts["a"],)), "ab": FieldSpec("ab", (artifacts["a"], artifacts["b"])),
             "c": FieldSpec("c", (artifacts["c"],))}
    bounds = alpha_bounds(specs, hidden_size=D, num_layers=L)
    for g, name in enumerate(served.names):
        on = served.id_maps[:, g + 1] >= 0
        assert bounds[name] == pytest.approx(MAX_STRENGTH * served.scales[on, g + 1].max(), rel=1e-6)


def test_static_entries_pack_as_on_the_hf_path(artifacts, tmp_path):
    """A GGUF control vector, a field's CAA vector (method "caa") and a field with a vector: the
    engine's tables, scales and default strengths are those :func:`svf.steer_requests` builds
    from the same entries, and a static entry's alpha bound is MAX_STRENGTH times its largest
    vector norm."""
    from helpers import tiny_model

    from svf import ControlVector, SteeringField, control_vector_from_field, steer_requests
    from svf.hf import num_layers
    from svf.table_entries import table_entry

    g = torch.Generator().manual_seed(0)
    cv = ControlVector({1: torch.randn(D, generator=g), 3: 2 * torch.randn(D, generator=g)},
                       model_hint="llama")
    cv.save(tmp_path / "cv.gguf")
    specs = {"cv": FieldSpec("cv", vector=str(tmp_path / "cv.gguf")),
             "caa": FieldSpec("caa", (artifacts["a"],), method="caa"),
             "both": FieldSpec("both", (artifacts["a"],), vector=str(tmp_path / "cv.gguf")),
             "a": FieldSpec("a", (artifacts["a"],))}
    served = ServedFields(specs, hidden_size=D, num_layers=L, max_tokens=8)
    field = SteeringField.load(artifacts["a"])
    caa = control_vector_from_field(field, method="caa", strength=1.0)
    assert served.layers == [1, 2, 3]
    assert served.default_strengths.tolist() == pytest.approx([1.0, field.default_strength,
                                                               field.default_strength,
                                                               field.default_strength])
    model = tiny_model("llama", layers=L, d=D)
    assert num_layers(model) == L
    hf = steer_requests(model, {"cv": cv, "caa": caa, "both": [field, cv], "a": field})
    for row, i in enumerate(served.layers):
        mine, theirs = served.steered.tables[i], hf.steering.layer_fields[i]
        assert torch.equal(torch.from_numpy(served.id_maps[row]), hf._id_map[i])
        torch.testing.assert_close(torch.from_numpy(served.scales[row]), hf._scales[i])
        for name in ("A", "c", "w2", "b2", "vectors"):
            torch.testing.assert_close(getattr(mine, name), getattr(theirs, name))
    bounds = alpha_bounds(specs, hidden_size=D, num_layers=L)
    assert bounds["cv"] == pytest.approx(MAX_STRENGTH * max(cv.norm(1), cv.norm(3)))
    assert table_entry(cv).layers == (1, 3)


@pytest.mark.parametrize("problem", ["missing", "hidden", "layers", "garbage"])
def test_bad_artifacts_fail_at_start(artifacts, tmp_path, problem):
    path, size, kwargs = artifacts["a"], D, {}
    if problem == "missing":
        path = str(tmp_path / "nope.svf")
    elif problem == "garbage":
        path = tmp_path / "bad.svf"
        path.write_bytes(b"not a field")
        path = str(path)
    elif problem == "hidden":
        size = D + 1
    spec = FieldSpec("a", (path,), (L + 2,) if problem == "layers" else None)
    error = SVFArgumentError if problem == "layers" else ArtifactError
    with pytest.raises(error) as info:
        ServedFields({"a": spec}, hidden_size=size, num_layers=L, max_tokens=8, **kwargs)
    text = str(info.value)
    assert {"missing": "nope.svf", "hidden": "hidden", "layers": "outside the model",
            "garbage": "bad.svf"}[problem] in text


# -- the per-token buffers ---------------------------------------------------------------------

def _expected(served, scheduled, computed, prompt, requests):
    """Per-token ids and alphas from first principles, one token at a time."""
    n = int(sum(scheduled))
    ids = np.full((len(served.layers), n), -1)
    alphas = np.zeros((len(served.layers), n), dtype=np.float32)
    t = 0
    for r, q in enumerate(requests):
        for k in range(scheduled[r]):
            pos = computed[r] + k
            if q is not None and pos >= prompt[r] - 1:
                g = served.index[q.field]
                for row in range(len(served.layers)):
                    local = served.id_maps[row, g + 1]
                    if local < 0:
                        continue
                    ids[row, t] = local
                    if q.alpha is not None:
                        alphas[row, t] = q.alpha
                    else:
                        s = served.default_strengths[g] if q.strength is None else q.strength
                        alphas[row, t] = s * served.scales[row, g + 1]
            t += 1
    return ids, alphas


def test_set_batch_positions_and_strengths(artifacts):
    served = _served(artifacts)
    requests = [SteerRequest("a", 0.3),          # prefill chunk ending before the last prompt token
                SteerRequest("ab", alpha=2.5),   # chunk holding the last prompt token
                None,                            # unsteered decode
                SteerRequest("c"),               # decode at the field's default strength
                SteerRequest("a", -0.2),         # recomputed after preemption: prompt + outputs
                SteerRequest("c", 0.1)]          # whole prompt in one step
    scheduled = np.array([5, 4, 1, 1, 9, 3])
    computed = np.array([0, 6, 20, 14, 0, 0])
    prompt = np.array([12, 9, 7, 10, 6, 3])
    served.set_batch(scheduled, computed, prompt, requests)
    ids, alphas = _expected(served, scheduled, computed, prompt, requests)
    n = scheduled.sum()
    assert torch.equal(served.field_ids[:, :n], torch.from_numpy(ids))
    assert torch.allclose(served.alphas[:, :n], torch.from_numpy(alphas))
    assert served.steered.active
    assert served.steered.live == {i for row, i in enumerate(served.layers) if (ids[row] >= 0).any()}
    # The second request's steered tokens are its last two (positions 8, 9 of a 9-token prompt).
    assert (served.field_ids[:, 5:7] == -1).all() and (served.field_ids[:, 7:9] >= 0).any()
    assert (served.field_ids[:, :5] == -1).all()  # chunk before the last prompt token


def test_set_batch_resets_stale_entries(artifacts):
    served = _served(artifacts)
    served.set_batch(np.array([6, 1]), np.array([0, 8]), np.array([6, 3]),
                     [SteerRequest("a", 0.5), SteerRequest("c", 0.5)])
    assert (served.field_ids[:, :7] >= 0).any()
    served.set_batch(np.array([2]), np.array([4]), np.array([3]), [SteerRequest("c", 0.5)])
    assert (served.field_ids[:, 2:] == -1).all() and (served.alphas[:, 2:] == 0).all()
    served.set_batch(np.array([3]), np.array([9]), np.array([3]), [None])
    assert (served.field_ids == -1).all() and (served.alphas == 0).all()
    assert not served.steered.active


def test_set_batch_refuses_more_tokens_than_buffers(artifacts):
    served = _served(artifacts, max_tokens=4)
    with pytest.raises(SVFArgumentError, match="buffers hold 4"):
        served.set_batch(np.array([5]), np.array([0]), np.array([5]), [SteerRequest("a")])


# -- the op on a decoder layer ------------------------------------------------------------------

class _Layer(torch.nn.Module):
    """A stand-in for a vLLM decoder layer: adds its input pair into the residual stream
    (vLLM's fused add-and-norm), returns (block output, stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(D)
        self.lin = torch.nn.Linear(D, D)

    def forward(self, positions, hidden, residual):
        stream = hidden + residual
        return self.lin(self.norm(stream)), stream


def _model(served) -> torch.nn.Module:
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(_Layer() for _ in range(L))
    served.attach(decoder_layers(model, L))
    return model


def _run(model, x):
    h, r = x.clone(), torch.zeros_like(x)
    for layer in model.layers:
        h, r = layer(None, h, r)
    return h + r


def _run_reference(model, served, x, steer: bool = True):
    """The same stack with each steered layer's stream moved by its table directly
    (``steer`` False: the plain stack)."""
    h, r = x.clone(), torch.zeros_like(x)
    n = x.shape[0]
    for i, layer in enumerate(model.layers):
        h, r = (layer.layer if isinstance(layer, SteeredLayer) else layer)(None, h, r)
        if steer and i in served.layers:
            stream = (h + r).double()
            row = served.layers.index(i)
            table = served.steered.tables[i].to(torch.float64)
            table.apply_(stream, served.alphas[row, :n].double(), served.field_ids[row, :n])
            h, r = stream.float(), torch.zeros_like(r)
    return h + r


def test_steered_layers_move_the_residual_sum(artifacts):
    served = _served(artifacts)
    torch.manual_seed(0)
    model = _model(served)
    x = torch.randn(7, D)
    served.set_batch(np.array([4, 3]), np.array([0, 10]), np.array([4, 5]),
                     [SteerRequest("ab", 2.0), SteerRequest("c", -1.5)])
    with torch.no_grad():
        steered = _run(model, x)
        want = _run_reference(model, served, x)
        assert torch.allclose(steered, want, atol=1e-4, rtol=1e-4)
        plain = _run_reference(model, served, x, steer=False)
        assert (steered - plain)[3:].norm(dim=-1).min() > 1e-2  # last prompt token on: moved
        assert torch.allclose(steered[:3], plain[:3], atol=1e-5)  # before it: untouched
        served.set_batch(np.array([7]), np.array([0]), np.array([9]), [None])
        assert torch.equal(_run(model, x), plain)


def test_layers_no_token_is_steered_at_are_left_alone(artifacts):
    """A step whose requests are all steered by ``c`` (layer 1) runs the op's work at layer 1
    only: at layers 2 and 3 the decoder layer's own (hidden, residual) pair goes on as is."""
    served = _served(artifacts)
    torch.manual_seed(2)
    model = _model(served)
    served.set_batch(np.array([2, 1]), np.array([3, 9]), np.array([4, 5]),
                     [SteerRequest("c", 1.0), SteerRequest("c", -1.0)])
    assert served.steered.live == {1}
    x, r = torch.randn(3, D), torch.randn(3, D)
    with torch.no_grad():
        for i in (2, 3):
            want = model.layers[i].layer(None, x, r)
            got = model.layers[i](None, x, r)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        moved = model.layers[1](None, x, r)
        assert (moved[1] == 0).all()  # the op ran: the stream is in hidden, residual zeroed
    served.set_batch(np.array([1]), np.array([9]), np.array([5]), [SteerRequest("ab", 1.0)])
    assert served.steered.live == {2, 3}


def test_steered_model_compiles_without_graph_breaks(artifacts):
    served = _served(artifacts)
    torch.manual_seed(1)
    model = _model(served)
    x = torch.randn(5, D)
    served.set_batch(np.array([5]), np.array([3]), np.array([4]), [SteerRequest("a", 1.0)])
    compiled = torch.compile(lambda t: _run(model, t), fullgraph=True, backend="eager")
    with torch.no_grad():
        assert torch.allclose(compiled(x), _run(model, x), atol=1e-5)
        # New buffer contents, same graph: the compiled model reads the persistent buffers.
        served.set_batch(np.array([5]), np.array([3]), np.array([4]), [SteerRequest("c", -2.0)])
        assert torch.allclose(compiled(x), _run(model, x), atol=1e-5)


def test_the_plugin_spells_the_fields_variable_as_its_config_does():
    from svf import vllm_plugin

    assert vllm_plugin.FIELDS_ENV_VAR == ENV_VAR


def test_the_makefile_installs_a_vllm_the_plugin_was_tested_with():
    """``make vllm`` installs ``VLLM_VERSION``; the plugin patches only ``TESTED_VLLM``: the two
    move together, or every plugin test would run against stock vLLM."""
    import re
    from pathlib import Path

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    pinned = re.search(r"^VLLM_VERSION\s*:=\s*(\S+)", makefile, re.MULTILINE)
    assert pinned, "the Makefile names no VLLM_VERSION"
    assert vllm_hooks.in_tested_range(pinned.group(1)), (pinned.group(1), vllm_hooks.TESTED_VLLM)
    assert not vllm_hooks.in_tested_range("0.31.9") and not vllm_hooks.in_tested_range("0.33.0")
