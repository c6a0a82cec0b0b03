"""Entries served from ``fields_dir`` while the engine runs, without vLLM: the front end's name
resolution, snapshots and checks, the engine's slots (an entry loaded into a slot steers as
the same artifact configured at start; least recently used idle entries are evicted), and the
scheduler's admission rule. The engine end to end is in ``tests_vllm/test_server.py``."""

from __future__ import annotations

import hashlib
import os
import types

import numpy as np
import pytest
import torch
from helpers import random_field

from svf import ArtifactError
from svf.hf import decoder_layers
from svf.vllm_plugin import vllm_hooks
from svf.vllm_plugin.config import FieldSpec, ServingConfig, serving_config
from svf.vllm_plugin.entry_slots import SlotCache
from svf.vllm_plugin.fields_dir import FieldsDir, load_snapshot, snapshot_path
from svf.vllm_plugin.request_params import MAX_STRENGTH, RESOLVED_KEY, SteerRequest, parse_request
from svf.vllm_plugin.served_fields import ServedFields, alpha_bounds
from svf_kernels import SVFArgumentError

L, D = 6, 40
SHAPE = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=L, hidden_size=D))
SPECS = {"a": (1, (1, 2, 3), (2, 3)), "b": (2, (1, 2, 3), (1, 3)), "c": (3, (0, 1, 2), (1,)),
         "d": (4, (3, 4, 5), (4, 5))}


@pytest.fixture
def folder(tmp_path):
    """A fields_dir with a.safetensors, b/field.safetensors, c.safetensors and d.safetensors,
    and an empty snapshot store beside it."""
    root = tmp_path / "fields"
    for name, (seed, layers, steer) in SPECS.items():
        target = root / name if name == "b" else root / f"{name}.safetensors"
        random_field(SHAPE, layers=list(layers), steer_layers=steer, seed=seed,
                     concept=name).save(target)
    return root


def _dir(folder, **kwargs) -> FieldsDir:
    return FieldsDir(str(folder), hidden_size=D, num_layers=L, max_units=kwargs.pop("max_units", 64),
                     store=folder.parent / "snapshots")


def _file(folder, name):
    return folder / name / "field.safetensors" if name == "b" else folder / f"{name}.safetensors"


# -- configuration -------------------------------------------------------------------------------

def test_config_with_fields_dir(folder):
    cfg = serving_config({"svf": {"fields_dir": str(folder), "max_entries": 3}}, environ={})
    assert cfg == ServingConfig({}, os.path.realpath(folder), 3, 64) and cfg
    both = serving_config({"svf": {"fields": {"x": "/x"}, "fields_dir": str(folder),
                                   "max_units": 16}}, environ={})
    assert both.fields == {"x": FieldSpec("x", ("/x",))}
    assert (both.max_entries, both.max_units) == (8, 16)


# -- the front end: names, snapshots, checks -----------------------------------------------------

def test_resolve_snapshots_the_bytes_and_names_the_entry(folder):
    fields = _dir(folder)
    for name in SPECS:
        entry = fields.resolve(name)
        data = _file(folder, name).read_bytes()
        assert entry.name == name and entry.sha256 == hashlib.sha256(data).hexdigest()
        assert snapshot_path(fields.store, entry.sha256).read_bytes() == data
        loaded = load_snapshot(fields.store, entry.sha256, hidden_size=D, num_layers=L,
                               max_units=64)
        spec = {name: FieldSpec(name, (str(_file(folder, name)),))}
        assert entry.alpha_bound == pytest.approx(alpha_bounds(spec, hidden_size=D,
                                                               num_layers=L)[name])
        assert loaded.layers == SPECS[name][2]


def test_a_replaced_file_is_a_new_entry(folder):
    fields = _dir(folder)
    old = fields.resolve("a")
    random_field(SHAPE, layers=[1, 2, 3], steer_layers=(2,), seed=9, concept="a").save(
        _file(folder, "a"))
    new = fields.resolve("a")
    assert new.sha256 != old.sha256
    assert snapshot_path(fields.store, old.sha256).exists()  # running requests keep theirs
    assert SteerRequest("a", 0.5, sha256=old.sha256).cache_salt() != \
        SteerRequest("a", 0.5, sha256=new.sha256).cache_salt()


@pytest.mark.parametrize("name", ["../a", "a/b", "/etc/passwd", ".a", "a..b", "", "x" * 129,
                                  "a\x00", "a b", "a\\b", "..", "."])
def test_names_that_are_not_plain_are_refused(folder, name):
    with pytest.raises(SVFArgumentError, match="is not a plain name"):
        _dir(folder).resolve(name)


def test_nothing_outside_the_folder_is_opened(folder, tmp_path, monkeypatch):
    outside = tmp_path / "outside.safetensors"
    random_field(SHAPE, layers=[1, 2, 3], seed=5).save(outside)
    (folder / "link.safetensors").symlink_to(outside)
    (folder / "sub").mkdir()
    (folder / "sub" / "field.safetensors").symlink_to(outside)
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        opened.append(os.path.realpath(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    for name in ("link", "sub"):
        with pytest.raises(SVFArgumentError, match=f"field '{name}' leads outside fields_dir"):
            _dir(folder).resolve(name)
    assert str(outside) not in opened


@pytest.mark.parametrize("problem, error, needle", [
    ("missing", SVFArgumentError, "no field named 'zz': neither zz.safetensors nor zz/field.safetensors"),
    ("garbage", ArtifactError, "field 'junk': not a safetensors file"),
    ("hidden", ArtifactError, "field 'wide': "),
    ("units", SVFArgumentError, "field 'big' has 80 hidden units; the engine's slots hold 64"),
    ("directory", SVFArgumentError, "no field named 'empty'"),
])
def test_bad_entries_fail_the_request_with_the_problem(folder, problem, error, needle):
    name = {"missing": "zz", "garbage": "junk", "hidden": "wide", "units": "big",
            "directory": "empty"}[problem]
    if problem == "garbage":
        (folder / "junk.safetensors").write_bytes(b"not a field at all")
    elif problem == "hidden":
        other = types.SimpleNamespace(config=types.SimpleNamespace(num_hidden_layers=L, hidden_size=D + 2))
        random_field(other, layers=[1, 2]).save(folder / "wide.safetensors")
    elif problem == "units":
        random_field(SHAPE, layers=[1, 2], m=80).save(folder / "big.safetensors")
    elif problem == "directory":
        (folder / "empty").mkdir()
    with pytest.raises(error) as info:
        _dir(folder).resolve(name)
    assert needle in str(info.value)


def test_a_snapshot_that_does_not_match_its_hash_is_refused(folder):
    fields = _dir(folder)
    entry = fields.resolve("a")
    path = snapshot_path(fields.store, entry.sha256)
    path.write_bytes(_file(folder, "c").read_bytes())
    with pytest.raises(ArtifactError, match="does not match its hash"):
        load_snapshot(fields.store, entry.sha256, hidden_size=D, num_layers=L, max_units=64)
    with pytest.raises(SVFArgumentError, match="not a SHA-256"):
        snapshot_path(fields.store, "../" + entry.sha256[3:])


def test_requests_name_entries_of_the_folder(folder):
    fields = _dir(folder)

    def lookup(name):
        entry = fields.resolve(name)
        return entry.sha256, entry.alpha_bound

    a = fields.resolve("a")
    assert parse_request({"svf_field": "a", "svf_strength": 0.5}, ("x",), None, lookup) == \
        SteerRequest("a", 0.5, sha256=a.sha256)
    bound = a.alpha_bound
    assert parse_request({"svf_field": "a", "svf_alpha": bound}, (), None, lookup).alpha == bound
    with pytest.raises(SVFArgumentError, match="must be between"):
        parse_request({"svf_field": "a", "svf_alpha": bound * 1.01}, (), None, lookup)
    with pytest.raises(SVFArgumentError, match="not a plain name"):
        parse_request({"svf_field": "../a"}, (), None, lookup)
    with pytest.raises(SVFArgumentError, match="set by the svf plugin, not by a request"):
        parse_request({RESOLVED_KEY: {"field": "a", "sha256": "0" * 64}}, (), None, lookup)
    q = SteerRequest("a", None, 1.5, a.sha256)
    assert SteerRequest.from_resolved(q.resolved()) == q
    assert MAX_STRENGTH == 10.0


# -- the engine: slots ---------------------------------------------------------------------------

class _Layer(torch.nn.Module):
    """A stand-in for a vLLM decoder layer returning (block output, stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(D, D)

    def forward(self, positions, hidden, residual):
        stream = hidden + residual
        return self.lin(torch.tanh(stream)), stream


def _model(served, seed=0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(_Layer() for _ in range(L))
    served.attach(decoder_layers(model, L))
    return model


def _run(model, served, x, requests):
    """Every row of ``x`` a one-token decode step of its own request."""
    n = x.shape[0]
    served.set_batch(np.ones(n, dtype=np.int64), np.full(n, 5), np.full(n, 3), requests)
    h, r = x.clone(), torch.zeros_like(x)
    with torch.no_grad():
        for layer in model.layers:
            h, r = layer(None, h, r)
    return h + r


def _slotted(folder, slots):
    return ServedFields({}, hidden_size=D, num_layers=L, max_tokens=16, slots=slots,
                        store=folder.parent / "snapshots")


def test_an_entry_in_a_slot_steers_as_the_same_field_configured_at_start(folder):
    fields = _dir(folder)
    names = ["a", "b", "c", "d", "a"]
    shas = {n: fields.resolve(n).sha256 for n in names}
    pinned = ServedFields({n: FieldSpec(n, (str(_file(folder, n)),)) for n in SPECS},
                          hidden_size=D, num_layers=L, max_tokens=16)
    slotted = _slotted(folder, 4)
    x = torch.randn(len(names) + 1, D, generator=torch.Generator().manual_seed(1)) * 3
    strengths = [0.4, -0.3, 0.7, None, 1.2]
    want = _run(_model(pinned), pinned, x, [SteerRequest(n, s) for n, s in zip(names, strengths)]
                + [None])
    got = _run(_model(slotted), slotted, x,
               [SteerRequest(n, s, sha256=shas[n]) for n, s in zip(names, strengths)] + [None])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    plain = _run(_model(pinned), pinned, x, [None] * len(x))
    assert (got - plain)[:-1].norm(dim=-1).min() > 1e-2 and torch.equal(got[-1], plain[-1])
    assert slotted.layers == list(range(L)) and len(slotted.slots) == 4


def test_pinned_entries_and_slots_share_the_tables(folder):
    fields = _dir(folder)
    a = FieldSpec("a", (str(_file(folder, "a")),))
    mixed = ServedFields({"a": a}, hidden_size=D, num_layers=L, max_tokens=16, slots=2,
                         store=folder.parent / "snapshots")
    pinned = ServedFields({"a": a, "c": FieldSpec("c", (str(_file(folder, "c")),))},
                          hidden_size=D, num_layers=L, max_tokens=16)
    x = torch.randn(3, D, generator=torch.Generator().manual_seed(2)) * 3
    got = _run(_model(mixed), mixed, x, [SteerRequest("a", 0.5), None,
                                         SteerRequest("c", -0.5, sha256=fields.resolve("c").sha256)])
    want = _run(_model(pinned), pinned, x, [SteerRequest("a", 0.5), None, SteerRequest("c", -0.5)])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_least_recently_used_idle_entry_is_evicted(folder):
    fields = _dir(folder)
    sha = {n: fields.resolve(n).sha256 for n in SPECS}
    slotted = _slotted(folder, 2)
    pinned = ServedFields({n: FieldSpec(n, (str(_file(folder, n)),)) for n in SPECS},
                          hidden_size=D, num_layers=L, max_tokens=16)
    x = torch.randn(2, D, generator=torch.Generator().manual_seed(3)) * 3
    model, reference = _model(slotted), _model(pinned)
    steps = [("a", "b"), ("b", "c"), ("c", "a"), ("d", "a"), ("a", "d")]
    resident = [["a", "b"], ["b", "c"], ["c", "a"], ["d", "a"], ["a", "d"]]  # least recent first
    for names, now in zip(steps, resident):
        got = _run(model, slotted, x, [SteerRequest(n, 0.6, sha256=sha[n]) for n in names])
        want = _run(reference, pinned, x, [SteerRequest(n, 0.6) for n in names])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert slotted.slots.keys() == [sha[n] for n in now]
    with pytest.raises(SVFArgumentError, match="all 2 entry slots hold entries that running"):
        _run(model, slotted, torch.randn(3, D),
             [SteerRequest(n, 0.6, sha256=sha[n]) for n in ("a", "b", "c")])


def test_slot_cache_order():
    cache = SlotCache(2)
    assert cache.place("x", {"x"}) == (0, None) and cache.place("y", {"y"}) == (1, None)
    assert cache.get("x") == 0
    assert cache.place("z", {"z", "x"}) == (1, "y")
    assert cache.keys() == ["x", "z"]


# -- the scheduler's admission rule --------------------------------------------------------------

def _request(sha=None):
    extra = None if sha is None else {RESOLVED_KEY: SteerRequest("n", sha256=sha).resolved()}
    return types.SimpleNamespace(sampling_params=types.SimpleNamespace(extra_args=extra))


def test_the_scheduler_admits_at_most_max_entries_entries(folder):
    config = types.SimpleNamespace(additional_config={"svf": {"fields_dir": str(folder),
                                                             "max_entries": 2}})
    handle = vllm_hooks._handle_blocked_waiting_request(lambda self, request: True)
    scheduler = types.SimpleNamespace(vllm_config=config, running=[_request("1" * 64), _request()])
    assert handle(scheduler, _request("2" * 64))                # a second entry: a free slot
    scheduler.running.append(_request("2" * 64))
    assert not handle(scheduler, _request("3" * 64))            # a third: held back
    assert handle(scheduler, _request("2" * 64))                # one already running: admitted
    assert handle(scheduler, _request())                        # unsteered: admitted
    blocked = vllm_hooks._handle_blocked_waiting_request(lambda self, request: False)
    assert not blocked(scheduler, _request())                   # vLLM's own reasons stand
    plain = types.SimpleNamespace(vllm_config=types.SimpleNamespace(additional_config={}),
                                  running=[])
    assert handle(plain, _request())
