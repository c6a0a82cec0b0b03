"""Exact undo, isolation and load on tiny random HF models.

Exact undo: after ``detach`` -- also after an exception or a ``KeyboardInterrupt`` raised
inside ``generate`` while steering -- the model is bit-identical to before: every parameter
and buffer (bitwise, dtype, device, stride, object identity), the module tree (names,
classes, object ids, child order), every module's hook dicts and the global ``nn.Module``
hook dicts, each module's other attributes, ``requires_grad``, ``training``, the config and
the generation config. What the docs promise: the context manager detaches however its
block ends; after ``attach()`` the steering stays attached (and keeps working) until
``detach()``, so call that in a ``finally`` block. Attaching twice, detaching twice,
steerings of disjoint layers (detached in any order), and overlapping steerings are checked
against the docstrings of :class:`svf.steering.Steering`.

Isolation: two models steered in two threads at once give exactly the tokens each gives
alone (greedy decoding, many rounds, a tiny GIL switch interval to force interleaving).

Load: 1000 steer/attach/generate/detach cycles leave the hook count unchanged and do not
grow the gc-tracked objects, the traced Python memory or the RSS (figures printed with -s).

Module-level mutable state in ``python/svf`` and ``svf_kernels`` (all of it; found by
grepping for module-level dicts, lists, sets and caches):

- ``svf_kernels.ops.dispatch._BACKENDS``: written only by ``register_backend`` at import time;
  afterwards read-only.
- ``svf_kernels.ops.dispatch._CHOSEN``: a memo ``(device type, SVF_BACKEND) -> Backend``.
  ``select_backend`` does one ``dict.get`` and at most one ``dict.__setitem__`` (each atomic
  under the GIL); two threads racing on a miss both compute the same backend from the same
  inputs and store equal values, so the race is benign. It holds no per-model state.
- ``svf_kernels.ops.op._LIB`` (the ``torch.library`` registration) and the op handles: set once
  at import.
- ``svf.eval.judges._vader`` / ``_sentence_encoder`` (``lru_cache(maxsize=1)``): evaluation only,
  never touched by steering; ``functools.lru_cache`` is thread-safe for lookups (a racing
  first call may build the model twice, then one is kept).
- Constant tuples/sets/lists (``STEER_METHODS``, ``EVAL_METHODS``, ``POSITION_MODES``, ``NEUTRAL_PROMPTS``,
  ``_DEFAULT_ALIASES``, ``__all__``...): never mutated.

Everything a steering mutates per forward pass lives on its own objects: the
:class:`~svf.positions.PositionTracker` of one ``Steering``, the ``last_delta`` /
``last_scores`` of its own ``FusedSteeringField`` wrappers, and the strength cache of its
own row fields (``RowField._alpha_cache``: a tuple swapped in one assignment). Nothing is
shared between two steerings of two models, which is what the thread tests check.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import tracemalloc

import pytest
import torch
import torch.nn.modules.module as nn_module
from helpers import random_field, tiny_model
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

import svf
import svf.steering as steering_module
from svf import SVFArgumentError
from svf.batch_steering import BatchSteering
from svf.field_packing import row_field
from svf.hf import decoder_layers
from svf.steering import Steering
from svf_kernels import FusedSteeringField, RowField

PROMPTS = ["the weather today", "a movie", "my friend said that it was"]
GREEDY = {"max_new_tokens": 4, "do_sample": False}


@pytest.fixture(autouse=True)
def one_intra_op_thread():
    """Tiny models run fastest on one intra-op thread, and the thread tests run two Python
    threads on (in CI) two cores: two intra-op threads each would spin against each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the snapshot ------------------------------------------------------------------------

def _hook_dicts(obj_vars: dict) -> dict[str, object]:
    """A module's hook bookkeeping: every ``*hook*`` attribute (dicts as (key, id(value)))."""
    out = {}
    for k, v in obj_vars.items():
        if "hook" in k:
            out[k] = tuple((key, id(val)) for key, val in v.items()) if isinstance(v, dict) else v
    return out


def _global_hooks() -> dict[str, object]:
    return _hook_dicts({k: getattr(nn_module, k) for k in dir(nn_module) if k.startswith("_global_")})


_PLAIN = (bool, int, float, str, bytes, type(None), torch.dtype, torch.device)
_TREE_ATTRS = ("_parameters", "_buffers", "_modules")


def _fingerprint(v: object) -> object:
    """Plain values by value, containers by content, anything else by identity."""
    if isinstance(v, _PLAIN):
        return (type(v).__name__, v)
    if isinstance(v, (tuple, list, frozenset, set)):
        items = sorted(map(repr, v)) if isinstance(v, (set, frozenset)) else list(map(_fingerprint, v))
        return (type(v).__name__, tuple(items))
    if isinstance(v, dict):
        return ("dict", tuple((repr(k), _fingerprint(x)) for k, x in v.items()))
    return (type(v).__name__, id(v))


def _tensor_record(t: torch.Tensor) -> tuple:
    bits = t.detach().reshape(-1).contiguous().view(torch.uint8).cpu().clone()
    return (id(t), t.dtype, t.device, tuple(t.shape), t.stride(), t.requires_grad, t.data_ptr(), bits)


def count_hooks(model: torch.nn.Module) -> int:
    """Entries in all hook dicts of all modules of ``model``, plus the global hook dicts."""
    n = 0
    for m in model.modules():
        n += sum(len(v) for k, v in vars(m).items() if "hook" in k and isinstance(v, dict))
    n += sum(len(getattr(nn_module, k)) for k in dir(nn_module)
             if k.startswith("_global_") and isinstance(getattr(nn_module, k), dict))
    return n


class Snapshot:
    """Everything observable about a model that steering could change (see module doc)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        mods = list(model.named_modules(remove_duplicate=False))
        self.tree = [(name, type(m), id(m), tuple(m._modules), tuple(map(id, m._modules.values())))
                     for name, m in mods]
        self.training = [(name, m.training) for name, m in mods]
        self.hooks = [(name, _hook_dicts(vars(m))) for name, m in mods]
        self.attrs = [(name, {k: _fingerprint(v) for k, v in vars(m).items()
                              if "hook" not in k and k not in _TREE_ATTRS}) for name, m in mods]
        self.tensors = {("param", n): _tensor_record(p) for n, p in model.named_parameters(remove_duplicate=False)}
        self.tensors |= {("buffer", n): _tensor_record(b) for n, b in model.named_buffers(remove_duplicate=False)}
        self.non_persistent = [(name, sorted(m._non_persistent_buffers_set)) for name, m in mods]
        self.global_hooks = _global_hooks()
        self.config = model.config.to_dict()
        self.generation_config = (id(model.generation_config), model.generation_config.to_dict())

    def diff(self, other: Snapshot) -> list[str]:
        """Human-readable differences (empty: identical)."""
        out = []
        for attr in ("tree", "training", "hooks", "attrs", "non_persistent", "global_hooks", "config",
                     "generation_config"):
            a, b = getattr(self, attr), getattr(other, attr)
            if a != b:
                if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
                    bad = [x[0] for x, y in zip(a, b) if x != y]
                    out.append(f"{attr} differs at {bad[:5]}")
                else:
                    out.append(f"{attr} differs")
        if self.tensors.keys() != other.tensors.keys():
            out.append(f"tensor names differ: {sorted(self.tensors.keys() ^ other.tensors.keys())[:5]}")
        for key in self.tensors.keys() & other.tensors.keys():
            a, b = self.tensors[key], other.tensors[key]
            if a[:-1] != b[:-1] or not torch.equal(a[-1], b[-1]):
                out.append(f"tensor {key} differs")
        return out

    def assert_same(self) -> None:
        """The model now is exactly the model at snapshot time."""
        diff = self.diff(Snapshot(self.model))
        assert not diff, diff


# -- models, fields, steerings ------------------------------------------------------------

@pytest.fixture(params=["llama", "gpt2"])
def family(request):
    return request.param


def _model(family, char_tok, seed=0):
    return tiny_model(family, vocab_size=len(char_tok), seed=seed)


def _enc(tok):
    return tok(PROMPTS, return_tensors="pt", padding=True)  # left padding, rows of 3 lengths


def _generate(model, enc, **kw):
    with torch.no_grad():
        out = model.generate(**enc, **{**GREEDY, **kw})
    return out[:, enc["input_ids"].shape[1]:]


CONFIGS = ["single", "several", "caa", "refresh2", "all", "last", "record", "requests"]


def _fields(model):
    return (random_field(model, steer_layers=(1, 2), seed=1, concept="a"),
            random_field(model, steer_layers=(1, 2), seed=2, concept="b", m=7))


def _steering(config: str, model, fields=None) -> Steering | BatchSteering:
    """A (not attached) steering of ``model`` of one of the kinds in ``CONFIGS``."""
    f1, f2 = fields if fields is not None else _fields(model)
    if config == "requests":
        bs = svf.steer_requests(model, {"a": f1, "ab": [f1, f2]})
        return bs.set_requests(["a", None, "ab"], [2.0, 0.0, 1.5])
    kw = {"single": {}, "several": {}, "caa": {"method": "caa"}, "refresh2": {"refresh": 2},
          "all": {"positions": "all"}, "last": {"positions": "last"}, "record": {"record_scores": True}}[config]
    return svf.steer(model, [f1, f2] if config == "several" else f1, strength=2.0, **kw)


class Boom(Exception):
    """The error raised inside generate (a class of its own, so nothing else is caught)."""


class RaiseInLogitsProcessor(LogitsProcessor):
    def __init__(self, at: int, exc: BaseException) -> None:
        self.at, self.exc, self.calls = at, exc, 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return scores


class RaiseInStoppingCriteria(StoppingCriteria):
    def __init__(self, at: int, exc: BaseException) -> None:
        self.at, self.exc, self.calls = at, exc, 0

    def __call__(self, input_ids, scores, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            raise self.exc
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class RaiseInForward:
    """A forward pre-hook on ``lm_head`` (after the steered layers ran), armed per generate.

    Registered before the reference snapshot and removed at the end, so it is part of the
    model both snapshots see.
    """

    def __init__(self, model) -> None:
        self.at, self.exc, self.calls = None, None, 0
        self.handle = model.lm_head.register_forward_pre_hook(self)

    def arm(self, at: int, exc: BaseException) -> None:
        self.at, self.exc, self.calls = at, exc, 0

    def __call__(self, module, args):
        if self.at is None:
            return
        self.calls += 1
        if self.calls == self.at:
            self.at = None
            raise self.exc


INJECTIONS = ["logits_processor", "forward_hook", "keyboard_interrupt"]


def _interrupting_kwargs(injection: str, forward: RaiseInForward, at: int = 3):
    """generate kwargs that raise at decoding step ``at``, and the exception type raised."""
    if injection == "logits_processor":
        return {"logits_processor": LogitsProcessorList([RaiseInLogitsProcessor(at, Boom("step"))])}, Boom
    if injection == "forward_hook":
        forward.arm(at, Boom("forward"))
        return {}, Boom
    # KeyboardInterrupt (Ctrl-C) arriving while generate runs, here from a stopping criterion
    return {"stopping_criteria": StoppingCriteriaList([RaiseInStoppingCriteria(at, KeyboardInterrupt())])}, \
        KeyboardInterrupt


# -- the snapshot can fail ------------------------------------------------------------------

def test_snapshot_detects_every_kind_of_change(char_tok):
    """Each change steering could leave behind makes the snapshot differ (and undoing it not)."""
    model = _model("llama", char_tok)
    layer = decoder_layers(model)[1]

    def changed(mutate, undo=None) -> list[str]:
        snap = Snapshot(model)
        mutate()
        diff = snap.diff(Snapshot(model))
        if undo is not None:
            undo()
            snap.assert_same()
        return diff

    p = next(model.parameters())
    bits = p.data.view(torch.int32)
    assert changed(lambda: bits.view(-1)[0].__ixor__(1), lambda: bits.view(-1)[0].__ixor__(1))  # one bit
    h = []
    hooks = count_hooks(model)
    assert changed(lambda: h.append(layer.register_forward_hook(lambda *a: None)), lambda: h.pop().remove())
    h.append(layer.register_forward_pre_hook(lambda *a, **k: None, with_kwargs=True))
    assert count_hooks(model) == hooks + 2  # the hook and its with_kwargs flag
    h.pop().remove()
    assert count_hooks(model) == hooks
    assert changed(lambda: h.append(model.model.register_forward_pre_hook(lambda *a, **k: None, with_kwargs=True)),
                   lambda: h.pop().remove())
    assert changed(lambda: h.append(torch.nn.modules.module.register_module_forward_hook(lambda *a: None)),
                   lambda: h.pop().remove())
    original = decoder_layers(model)[0]
    wrapper = FusedSteeringField(original, row_field([random_field(model)], 0), 1.0)

    def put(m):
        decoder_layers(model)[0] = m
    assert changed(lambda: put(wrapper), lambda: put(original))
    copy = type(original)(model.config, 0) if hasattr(original, "self_attn") else None
    if copy is not None:
        copy.load_state_dict(original.state_dict())
        copy.eval()
        assert changed(lambda: put(copy), lambda: put(original))  # same weights, other object
    assert changed(lambda: p.requires_grad_(False), lambda: p.requires_grad_(True))
    assert changed(lambda: layer.train(), lambda: layer.eval())
    top_k = model.generation_config.top_k
    assert changed(lambda: setattr(model.generation_config, "top_k", 7),
                   lambda: setattr(model.generation_config, "top_k", top_k))
    assert changed(lambda: setattr(layer, "extra", 1), lambda: delattr(layer, "extra"))


# -- exact undo ---------------------------------------------------------------------------

def _prepared(family, char_tok):
    """(model, enc, unsteered tokens): generate has run once, so lazy HF state exists."""
    model = _model(family, char_tok)
    enc = _enc(char_tok)
    return model, enc, _generate(model, enc)


@pytest.mark.parametrize("config", CONFIGS)
def test_detach_restores_the_model_exactly(family, char_tok, config):
    model, enc, plain = _prepared(family, char_tok)
    snap = Snapshot(model)
    s = _steering(config, model)
    snap.assert_same()  # building a steering changes nothing
    with s:
        steered = _generate(model, enc)
        assert snap.diff(Snapshot(model))  # attached: the layers are wrapped
    assert not torch.equal(steered, plain), "the steering must change the tokens for this test to mean anything"
    snap.assert_same()
    assert torch.equal(_generate(model, enc), plain)
    s.attach()  # the same object attaches again and steers the same way
    assert torch.equal(_generate(model, enc), steered)
    s.detach()
    snap.assert_same()


@pytest.mark.parametrize("injection", INJECTIONS)
@pytest.mark.parametrize("config", CONFIGS)
def test_exception_inside_generate(family, char_tok, config, injection):
    """Context manager: detached when the exception leaves the block. ``attach()``: the model
    stays steered (and steers correctly) until ``detach()``, which the user calls in ``finally``."""
    model, enc, plain = _prepared(family, char_tok)
    forward = RaiseInForward(model)
    snap = Snapshot(model)
    s = _steering(config, model)
    with s:
        steered = _generate(model, enc)

    # 1. context manager
    kw, exc = _interrupting_kwargs(injection, forward)
    with pytest.raises(exc), s:
        _generate(model, enc, **kw)
    assert not s.attached
    snap.assert_same()

    # 2. attach() ... finally: detach()
    kw, exc = _interrupting_kwargs(injection, forward)
    with pytest.raises(exc):
        s.attach()
        try:
            _generate(model, enc, **kw)
        finally:
            s.detach()
    snap.assert_same()

    # 3. attach() without finally: still attached after the exception, and the next
    #    generate steers exactly as a fresh one (no state left over from the aborted one)
    kw, exc = _interrupting_kwargs(injection, forward)
    s.attach()
    with pytest.raises(exc):
        _generate(model, enc, **kw)
    assert s.attached and isinstance(decoder_layers(model)[1], FusedSteeringField)
    assert torch.equal(_generate(model, enc), steered)
    s.detach()
    snap.assert_same()
    assert torch.equal(_generate(model, enc), plain)
    forward.handle.remove()


@pytest.mark.parametrize("at", [0, 1])
@pytest.mark.parametrize("exc", [KeyboardInterrupt, Boom])
def test_interrupt_inside_attach_leaves_the_model_unsteered(family, char_tok, monkeypatch, at, exc):
    """An interrupt while ``attach()`` is wrapping layers undoes the layers already wrapped
    (otherwise ``attached`` would be False and ``detach()`` a no-op on a half-steered model)."""
    model, enc, plain = _prepared(family, char_tok)
    snap = Snapshot(model)
    s = svf.steer(model, random_field(model, steer_layers=(1, 2)), strength=2.0)
    built = []

    class Failing(FusedSteeringField):
        def __init__(self, *args, **kwargs):
            if len(built) == at:
                raise exc()
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(steering_module, "FusedSteeringField", Failing)
    with pytest.raises(exc):
        s.attach()
    monkeypatch.undo()
    assert not s.attached
    snap.assert_same()
    with s:  # and it attaches fine afterwards
        assert not torch.equal(_generate(model, enc), plain)
    snap.assert_same()


# -- attach twice, detach twice, several steerings -----------------------------------------

def test_attach_twice_and_detach_twice(family, char_tok):
    model, enc, plain = _prepared(family, char_tok)
    snap = Snapshot(model)
    f = random_field(model, steer_layers=(1, 2))
    s = svf.steer(model, f, strength=2.0)
    s.detach()  # before any attach: a no-op
    snap.assert_same()
    s.attach()
    attached = Snapshot(model)
    with pytest.raises(SVFArgumentError, match="already attached"):
        s.attach()
    with pytest.raises(SVFArgumentError, match="already attached"), s:  # with-block on an attached one
        pass
    assert s.attached
    attached.assert_same()  # the refused attaches changed nothing
    for other in (svf.steer(model, f, strength=1.0),  # the same layers
                  svf.steer(model, random_field(model, steer_layers=(2, 3)), strength=1.0),  # overlapping
                  svf.steer_requests(model, {"x": random_field(model, steer_layers=(0, 1))})):
        with pytest.raises(SVFArgumentError, match="already steered"):
            other.attach()
        assert not other.attached
        attached.assert_same()
    steered = _generate(model, enc)
    s.detach()
    snap.assert_same()
    s.detach()  # twice: a no-op
    snap.assert_same()
    assert torch.equal(_generate(model, enc), plain)
    assert not torch.equal(steered, plain)
    bs = svf.steer_requests(model, {"x": f}).attach()  # the same for a batch steering
    with pytest.raises(SVFArgumentError, match="already attached"):
        bs.attach()
    bs.detach()
    bs.detach()
    snap.assert_same()


@pytest.mark.parametrize("order", ["AB", "BA"])
@pytest.mark.parametrize("kinds", ["steer+steer", "steer+requests"])
def test_disjoint_steerings_stack_and_detach_in_any_order(family, char_tok, order, kinds):
    """As documented in ``Steering.attach``: steerings of disjoint layers attach together,
    each steers as it does alone, and they detach in any order."""
    model, enc, plain = _prepared(family, char_tok)
    snap = Snapshot(model)
    fa = random_field(model, steer_layers=(0, 1), seed=1)
    fb = random_field(model, steer_layers=(2, 3), seed=2)
    a = svf.steer(model, fa, strength=2.0, refresh=2)
    if kinds == "steer+steer":
        b = svf.steer(model, fb, strength=2.0)
    else:
        b = svf.steer_requests(model, {"b": fb}).set_requests(["b", None, "b"], [2.0, 0.0, 1.0])
    alone = {}
    for name, s in (("A", a), ("B", b)):
        with s:
            alone[name] = _generate(model, enc)
        snap.assert_same()
    a.attach()
    b.attach()
    both = _generate(model, enc)
    for x in (plain, alone["A"], alone["B"]):
        assert not torch.equal(both, x)
    first, second = (a, b) if order == "AB" else (b, a)
    first.detach()
    assert torch.equal(_generate(model, enc), alone["B" if order == "AB" else "A"])  # the other alone
    second.detach()
    snap.assert_same()
    assert torch.equal(_generate(model, enc), plain)


# -- isolation: two models in two threads -------------------------------------------------

ROUNDS = 20


def _run_threads(jobs) -> list[str]:
    """Run each job(round) ``ROUNDS`` times, all jobs concurrently; the errors found."""
    errors: list[str] = []
    barrier = threading.Barrier(len(jobs))

    def loop(k, job):
        try:
            barrier.wait()
            for r in range(ROUNDS):
                job(r)
        except BaseException as e:  # noqa: BLE001 - report anything, in the main thread
            errors.append(f"job {k}: {type(e).__name__}: {e}")

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=loop, args=(k, job)) for k, job in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return errors


def _check(model, enc, make, expected):
    """A job: each round builds and attaches a steering, generates, compares, detaches."""
    def job(r):
        s = make(model)
        with s:
            out = _generate(model, enc)
        if not torch.equal(out, expected):
            raise AssertionError(f"round {r}: tokens differ from the single-threaded run")
    return job


def test_two_models_steered_in_two_threads(family, char_tok):
    enc = _enc(char_tok)
    models = [_model(family, char_tok, seed=0), _model(family, char_tok, seed=1)]
    makers = [
        lambda m: svf.steer(m, random_field(m, steer_layers=(1, 2), seed=11), strength=2.0, refresh=2),
        lambda m: svf.steer(m, [random_field(m, steer_layers=(0, 3), seed=12),
                                random_field(m, steer_layers=(0, 3), seed=13, m=5)], strength=2.0),
    ]
    snaps = [Snapshot(m) for m in models]
    expected = []
    for m, make in zip(models, makers):  # each alone, single-threaded, beforehand
        with make(m):
            expected.append(_generate(m, enc))
    assert not torch.equal(expected[0], expected[1])
    errors = _run_threads([_check(m, enc, make, e) for m, make, e in zip(models, makers, expected)])
    assert not errors, errors
    for s in snaps:
        s.assert_same()


def test_two_batch_steerings_in_two_threads(family, char_tok):
    enc = _enc(char_tok)
    models = [_model(family, char_tok, seed=2), _model(family, char_tok, seed=3)]

    def batch_maker(seed, rows, strengths):
        def make(m):
            fields = {"p": random_field(m, steer_layers=(1, 2), seed=seed),
                      "q": [random_field(m, steer_layers=(2, 3), seed=seed + 1),
                            random_field(m, steer_layers=(2, 3), seed=seed + 2, m=5)]}
            return svf.steer_requests(m, fields).set_requests(rows, strengths)
        return make
    makers = [batch_maker(20, ["p", "q", None], [2.0, 1.5, 0.0]),
              batch_maker(30, ["q", "p", "p"], [1.0, -2.0, 2.5])]
    snaps = [Snapshot(m) for m in models]
    expected = []
    for m, make in zip(models, makers):
        with make(m):
            expected.append(_generate(m, enc))
    # also: long-lived batch steerings attached once, generating concurrently round after round
    long_lived = [make(m).attach() for m, make in zip(models, makers)]

    def reuse(k):
        def job(r):
            out = _generate(models[k], enc)
            if not torch.equal(out, expected[k]):
                raise AssertionError(f"round {r}: long-lived steering {k} differs")
        return job
    errors = _run_threads([reuse(0), reuse(1)])
    assert not errors, errors
    for s in long_lived:
        s.detach()
    errors = _run_threads([_check(m, enc, make, e) for m, make, e in zip(models, makers, expected)])
    assert not errors, errors
    for s in snaps:
        s.assert_same()


# -- load: 1000 cycles ----------------------------------------------------------------------

CYCLES = int(os.environ.get("SVF_UNDO_CYCLES", "1000"))
WARMUP = 50


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _live(cls) -> int:
    return sum(issubclass(type(o), cls) for o in gc.get_objects())


def test_thousand_attach_generate_detach_cycles_do_not_grow(char_tok):
    """Each cycle builds a steering (rotating through the kinds in ``CONFIGS``; the fields,
    like loaded artifacts, are built once), attaches it, generates 2 tokens (the prompt pass
    and one decoding step), detaches. After a warm-up of 50 cycles the hook count, the
    gc-tracked objects, the traced Python memory and the RSS stay put."""
    model = _model("llama", char_tok)
    enc = _enc(char_tok)
    fields = _fields(model)
    snap = Snapshot(model)
    hooks0 = count_hooks(model)

    def cycle(i):
        with _steering(CONFIGS[i % len(CONFIGS)], model, fields):
            _generate(model, enc, max_new_tokens=2)

    def measure():
        gc.collect()
        return len(gc.get_objects()), tracemalloc.get_traced_memory()[0], _rss_kib()

    rss0 = _rss_kib()
    t0 = time.perf_counter()
    tracemalloc.start()
    try:
        for i in range(WARMUP):
            cycle(i)
        objects_warm, traced_warm, rss_warm = measure()
        for i in range(WARMUP, CYCLES // 2):
            cycle(i)
        objects_mid, traced_mid, rss_mid = measure()
        for i in range(CYCLES // 2, CYCLES):
            cycle(i)
        objects_end, traced_end, rss_end = measure()
        traced_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    wall = time.perf_counter() - t0
    hooks_end = count_hooks(model)
    alive = {c.__name__: _live(c) for c in (Steering, BatchSteering, FusedSteeringField, RowField)}
    print(f"\n{CYCLES} cycles in {wall:.1f} s (tracemalloc on) | hooks {hooks0} -> {hooks_end} | "
          f"gc objects after warm-up / mid / end {objects_warm} / {objects_mid} / {objects_end} "
          f"({objects_end - objects_warm:+d}) | traced memory {traced_warm} / {traced_mid} / {traced_end} B "
          f"({traced_end - traced_warm:+d}, peak {traced_peak}) | RSS KiB start {rss0}, "
          f"{rss_warm} / {rss_mid} / {rss_end} ({rss_end - rss_warm:+d}) | alive {alive}")
    assert hooks_end == hooks0
    assert alive == {k: 0 for k in alive}
    snap.assert_same()
    # a leak of one object per cycle would add 950 objects
    assert objects_end - objects_warm < 100
    # a leak of 128 bytes per cycle would add 64 KiB over the second half alone
    assert traced_end - traced_mid < 64 * 1024
    assert traced_end - traced_warm < 256 * 1024
    assert rss_end - rss_warm < 32 * 1024  # KiB: allocator noise, not leaked activations
