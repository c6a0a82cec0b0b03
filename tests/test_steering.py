"""Steering a real (tiny random) HF model: exact undo, positions, cache equivalence, refresh."""

import pytest
import torch
from helpers import random_field, tiny_model

import svf
from svf.field_packing import row_field
from svf.hf import decoder_layers
from svf.steering import Steering, steer
from svf_kernels import FusedSteeringField, SVFArgumentError

PROMPTS = ["the weather today", "a movie", "my friend said that it was"]


def _batch(tok):
    return tok(PROMPTS, return_tensors="pt", padding=True)  # left padding


def _generate(model, enc, n=6, use_cache=True):
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=n, do_sample=False, use_cache=use_cache)
    return out[:, enc["input_ids"].shape[1]:]


class Recorder:
    """Record which (row, absolute position) a steered layer changed in each forward pass."""

    def __init__(self, steering, layer):
        self.steering = steering
        wrapper = decoder_layers(steering.model)[layer]
        assert isinstance(wrapper, FusedSteeringField)
        self.calls = []
        self._raw = None
        wrapper.layer.register_forward_hook(self._before)
        wrapper.register_forward_hook(self._after)

    def _before(self, mod, args, out):
        self._raw = (out[0] if isinstance(out, tuple) else out).clone()

    def _after(self, mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        diff = (h != self._raw).any(-1)  # [B, T]
        s0 = self.steering.tracker.past_length
        self.calls.append({(int(b), s0 + int(t)) for b, t in diff.nonzero()})
        self.deltas = getattr(self, "deltas", []) + [(h - self._raw).clone()]


def test_attach_detach_leaves_model_bit_identical(tiny):
    model, tok = tiny
    enc = _batch(tok)
    layers_before = list(decoder_layers(model))
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits_before = model(**enc).logits
    field = random_field(model)
    with steer(model, field, strength=2.0), torch.no_grad():
        steered = model(**enc).logits
    assert not torch.equal(steered, logits_before)  # steering did something
    with torch.no_grad():
        logits_after = model(**enc).logits
    assert torch.equal(logits_after, logits_before)
    assert all(a is b for a, b in zip(decoder_layers(model), layers_before))
    state_after = model.state_dict()
    assert state_after.keys() == state_before.keys()
    assert all(torch.equal(state_after[k], v) for k, v in state_before.items())
    assert not model._forward_pre_hooks and not decoder_layers(model)[0]._forward_hooks


def test_explicit_attach_detach_and_errors(tiny):
    model, _ = tiny
    field = random_field(model)
    s = steer(model, field, strength=1.0).attach()
    assert s.attached and isinstance(decoder_layers(model)[0], FusedSteeringField)
    with pytest.raises(SVFArgumentError, match="already attached"):
        s.attach()
    with pytest.raises(SVFArgumentError, match="already steered"):
        steer(model, field, strength=1.0).attach()
    s.detach()
    s.detach()  # idempotent
    assert not isinstance(decoder_layers(model)[0], FusedSteeringField)
    with pytest.raises(SVFArgumentError, match="outside the training layers"):
        steer(model, random_field(model, layers=(1, 2)), layers=[0])
    with pytest.raises(SVFArgumentError, match="either strength"):
        steer(model, field, strength=1.0, alpha=1.0)


def test_detach_after_exception_inside_generate(tiny):
    model, tok = tiny
    enc = _batch(tok)
    with torch.no_grad():
        before = model(**enc).logits
    field = random_field(model)
    with pytest.raises(RuntimeError, match="boom"), steer(model, field, strength=1.0):
        raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, before)


@pytest.mark.parametrize("use_cache", [True, False])
def test_default_positions_with_left_padding(tiny, use_cache):
    model, tok = tiny
    enc = _batch(tok)
    P = enc["input_ids"].shape[1]
    assert (enc["attention_mask"][:, 0] == 0).any()  # the batch really is left-padded
    field = random_field(model, steer_layers=(1,))
    n = 4
    with steer(model, field, strength=1.0) as s:
        rec = Recorder(s, 1)
        _generate(model, enc, n=n, use_cache=use_cache)
    B = len(PROMPTS)
    assert rec.calls[0] == {(b, P - 1) for b in range(B)}  # prompt pass: last real token only
    for step, changed in enumerate(rec.calls[1:], start=1):
        if use_cache:
            assert changed == {(b, P - 1 + step) for b in range(B)}
        else:  # the whole sequence is re-run: last prompt token and every generated token
            assert changed == {(b, t) for b in range(B) for t in range(P - 1, P + step)}
    assert len(rec.calls) == n


def test_all_positions_option_skips_padding(tiny):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(2,))
    with steer(model, field, strength=1.0, positions="all") as s:
        rec = Recorder(s, 2)
        with torch.no_grad():
            model(**enc)
    mask = enc["attention_mask"]
    assert rec.calls[0] == {(int(b), int(t)) for b, t in mask.nonzero()}


@pytest.mark.parametrize("refresh", [1, 3])
@pytest.mark.parametrize("method", ["svf", "caa"])
def test_greedy_tokens_same_with_and_without_cache(tiny, refresh, method):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(1, 2))
    with torch.no_grad():
        base = _generate(model, enc, n=8)
    with steer(model, field, strength=4.0, refresh=refresh, method=method):
        cached = _generate(model, enc, n=8, use_cache=True)
        uncached = _generate(model, enc, n=8, use_cache=False)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, base)  # the steering is strong enough to matter


def test_refresh_reuses_the_anchor_displacement(tiny):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(1,))
    K = 3
    with steer(model, field, strength=1.0, refresh=K) as s:
        rec = Recorder(s, 1)
        _generate(model, enc, n=7)
    # step 0 = prompt end (last column of the prompt pass), then one column per decode step
    deltas = [rec.deltas[0][:, -1]] + [d[:, -1] for d in rec.deltas[1:]]
    assert len(deltas) == 7  # the prompt pass and six decode steps
    for k, d in enumerate(deltas):
        anchor = deltas[k - k % K]
        if k % K:
            assert torch.allclose(d, anchor, atol=1e-5), k
        elif k:
            assert not torch.allclose(d, deltas[k - K], atol=1e-4), k  # recomputed, so different


def test_strength_is_relative_to_mean_norm_and_alpha_absolute(tiny):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(1,))
    for kwargs, expect in (({"strength": 0.5}, 0.5 * field.mean_norm(1)), ({"alpha": 0.8}, 0.8)):
        with steer(model, field, **kwargs) as s:
            rec = Recorder(s, 1)
            with torch.no_grad():
                model(**enc)
        norms = rec.deltas[0][:, -1].norm(dim=-1)
        assert torch.allclose(norms, torch.full_like(norms, expect), rtol=1e-4)


def test_caa_moves_along_the_caa_vector(tiny):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(2,))
    with steer(model, field, alpha=0.7, method="caa") as s:
        rec = Recorder(s, 2)
        with torch.no_grad():
            model(**enc)
    unit = field.caa_vector(2) / field.caa_vector(2).norm()
    assert torch.allclose(rec.deltas[0][:, -1], 0.7 * unit.expand(len(PROMPTS), -1), atol=1e-5)


def test_several_concepts_combine_by_softmin(tiny):
    model, tok = tiny
    enc = _batch(tok)
    f1, f2 = random_field(model, seed=1, concept="a"), random_field(model, seed=2, concept="b")
    s = steer(model, [f1, f2], alpha=1.0, layers=[1])
    assert s.layer_fields[1].A.shape[0] == 2
    with s:
        rec = Recorder(s, 1)
        with torch.no_grad():
            model(**enc)
    # the displacement equals the op applied with both concepts at that layer
    from svf_kernels import field_direction

    a, b = f1.scorer.fold(1), f2.scorer.fold(1)
    raw = rec._raw[:, -1]
    _, v = field_direction(raw, torch.stack([a.A, b.A]), torch.stack([a.c, b.c]),
                           torch.stack([a.w2, b.w2]), torch.cat([a.b2, b.b2]))
    expect = v / v.norm(dim=-1, keepdim=True)
    assert torch.allclose(rec.deltas[0][:, -1], expect, atol=1e-5)


def test_scores_are_recorded_per_position(tiny):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(1,))
    with steer(model, field, strength=1.0, record_scores=True) as s:
        _generate(model, enc, n=3)
    got = s.scores_by_position()
    P = enc["input_ids"].shape[1]
    want = [(b, P - 1 + k) for k in range(3) for b in range(len(PROMPTS))]
    assert [(b, t) for b, t, _ in got] == want
    assert all(sc.shape == (1,) and torch.isfinite(sc).all() for _, _, sc in got)


def _snapshot(model):
    """Everything attach could change: layer objects, hooks, parameters and buffers."""
    return ([id(m) for m in model.modules()],
            [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()],
            {k: v.clone() for k, v in model.state_dict().items()})


def _unchanged(model, before) -> bool:
    ids, hooks, state = _snapshot(model)
    return (ids == before[0] and hooks == before[1] and state.keys() == before[2].keys()
            and all(torch.equal(state[k], v) for k, v in before[2].items()))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_field_for_another_model_size_is_refused_before_anything_changes(kind):
    """A field trained for another hidden size or layer count is refused by steer() and
    steer_requests(), with the wording of load_field(..., model=...), and the model is left
    untouched; a field for this model still steers it."""
    model = tiny_model(kind, layers=4, d=64)
    narrow = random_field(tiny_model(kind, layers=4, d=32), concept="narrow")
    deep = random_field(tiny_model(kind, layers=6, d=64), layers=(0, 1, 2, 3), concept="deep")
    before = _snapshot(model)
    cases = ((narrow, "field 'narrow' is for hidden_size 32 but the model has 64"),
             (deep, "field 'deep' is for a model with 6 layers but the model has 4"))
    for field, message in cases:
        with pytest.raises(SVFArgumentError, match=message):
            steer(model, field, strength=1.0)
        with pytest.raises(SVFArgumentError, match=message):
            steer(model, [random_field(model), field], strength=1.0, layers=[1])
        with pytest.raises(SVFArgumentError, match=message):
            svf.steer_requests(model, {"mine": random_field(model), "foreign": field})
        assert _unchanged(model, before)
    with steer(model, random_field(model), strength=1.0):
        pass
    assert _unchanged(model, before)


def test_attach_refuses_a_model_of_another_size(tiny):
    """A Steering built for one model refuses, at attach(), a model of another hidden size or
    layer count, leaving it untouched; so does a Steering built from a row field of another
    width."""
    model, _ = tiny
    kind = "llama" if hasattr(model, "model") else "gpt2"
    s = steer(model, random_field(model), strength=1.0)
    for other, message in ((tiny_model(kind, vocab_size=model.config.vocab_size, d=32),
                            "this steering is for hidden_size 64 but the model has 32"),
                           (tiny_model(kind, vocab_size=model.config.vocab_size, layers=6),
                            "this steering is for a model with 4 layers but the model has 6")):
        before = _snapshot(other)
        s.model = other
        with pytest.raises(SVFArgumentError, match=message):
            s.attach()
        assert not s.attached and _unchanged(other, before)
    small = tiny_model(kind, vocab_size=model.config.vocab_size, d=32)
    with pytest.raises(SVFArgumentError,
                       match="the field at layer 1 is for hidden_size 64 but the model has 32"):
        Steering(small, {1: row_field([random_field(model)], 1)}, {1: 1.0})


def test_set_row_inputs_updates_the_attached_wrapper(tiny):
    model, tok = tiny
    enc = _batch(tok)
    field = random_field(model, steer_layers=(1,))
    with steer(model, field, alpha=1.0) as s:
        s.set_row_inputs(1, 2.5)
        assert decoder_layers(model)[1].alpha == 2.5 and s.alphas[1] == 2.5
        rec = Recorder(s, 1)
        with torch.no_grad():
            model(**enc)
        norms = rec.deltas[0][:, -1].norm(dim=-1)
        assert torch.allclose(norms, torch.full_like(norms, 2.5), rtol=1e-4)
        per_row = torch.tensor([0.5, 1.0, 1.5])
        s.set_row_inputs(1, per_row)
        held = decoder_layers(model)[1].alpha
        assert held is s.alphas[1] and held.tolist() == [0.5, 1.0, 1.5]
        s.set_row_inputs(1, torch.tensor([3.0, 2.0, 1.0]))  # same shape: copied in place
        assert decoder_layers(model)[1].alpha is held and held.tolist() == [3.0, 2.0, 1.0]
        assert per_row.tolist() == [0.5, 1.0, 1.5]  # the caller's tensor is never written
        with pytest.raises(SVFArgumentError, match="layer 0 is not steered"):
            s.set_row_inputs(0, 1.0)
        with pytest.raises(SVFArgumentError, match="field_ids must be given exactly"):
            s.set_row_inputs(1, 1.0, torch.zeros(3, dtype=torch.long))
        with pytest.raises(SVFArgumentError, match="alpha must be"):
            s.set_row_inputs(1, float("nan"))
