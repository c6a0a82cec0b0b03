"""A field's steering options end to end on a tiny HF model: the preconditioned direction, the
closed-loop target, the robust strength unit; trained, saved, loaded, steered, batch-steered."""

from __future__ import annotations

import copy
import math
import random

import pytest
import torch
from helpers import random_field, tiny_model

import svf
from svf.activations import last_token_activations
from svf.calibration import robust_norm, within_class_covariance
from svf.data import ContrastivePair
from svf.steering_field import SteeringField, target_score
from svf.training import TrainConfig, train_field
from svf_kernels import SVFArgumentError, field_update_

LAYERS = (1, 2)


@pytest.fixture(scope="module")
def trained(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    words = ["sun", "rain", "cake", "road", "song", "tree", "game", "lamp", "boat", "milk"]
    pairs = [ContrastivePair(f"a lovely {w} {i}", f"an awful {w} {i}") for i, w in enumerate(words * 5)]
    field, report = train_field(model, char_tok, pairs, concept="c", train_layers=list(LAYERS),
                                config=TrainConfig(r=8, de=3, m=12, max_epochs=2, seed=4), progress=False)
    return model, char_tok, field, pairs, report


def _ids(tok, texts=("the weather today", "a movie")):
    return tok(list(texts), return_tensors="pt", padding=True)


def test_training_stores_robust_norms_and_covariances(trained):
    model, tok, field, pairs, report = trained
    assert field.robust_norms.shape == (2,) and field.covariances.shape == (2, 8, 8)
    assert (field.robust_norms > 0).all()
    for j in range(2):
        S = field.covariances[j]
        assert torch.allclose(S, S.T, atol=1e-5) and abs(float(torch.trace(S)) / 8 - 1) < 1e-4
        assert float(torch.linalg.eigvalsh(S.double()).min()) > -1e-6  # a covariance: PSD
    # the robust norm is computed from the same activations as the mean norm (train + validation)
    order = list(range(len(pairs)))
    random.Random(4).shuffle(order)
    fit = [pairs[i] for i in order[: report.n_train + report.n_val]]
    acts = last_token_activations(model, tok, [p.positive for p in fit] + [p.negative for p in fit],
                                      list(LAYERS), progress=False)
    assert abs(field.robust_norm(2) - robust_norm(acts[:, 1])) < 1e-3 * field.robust_norm(2)
    hn = acts[:, 1] * torch.rsqrt(acts[:, 1].pow(2).mean(-1, keepdim=True) + 1e-6)
    u = hn @ field.scorer.R.detach().T
    n = len(fit)
    assert torch.allclose(field.covariances[1], within_class_covariance(u[:n], u[n:]), atol=1e-4)


def test_options_survive_save_and_load(trained, tmp_path):
    model, _, field, _, _ = trained
    field.default_direction, field.default_target = "preconditioned", 0.8
    try:
        loaded = SteeringField.load(field.save(tmp_path / "f"), model)
    finally:
        field.default_direction, field.default_target = "gradient", None
    assert loaded.default_direction == "preconditioned" and loaded.default_target == 0.8
    assert torch.equal(loaded.covariances, field.covariances)
    assert torch.equal(loaded.robust_norms, field.robust_norms)


def _moved(model, tok, steering):
    """Last-token residual displacement at the first steered layer, and the scores there."""
    layer = min(steering.layer_fields)
    captured = {}
    wrapper_input = {}

    def before(mod, args, out):
        wrapper_input["h"] = (out[0] if isinstance(out, tuple) else out)[:, -1].clone()

    def after(mod, args, out):
        captured["h"] = (out[0] if isinstance(out, tuple) else out)[:, -1].clone()

    with steering:
        from svf.hf import decoder_layers
        w = decoder_layers(model)[layer]
        handles = [w.layer.register_forward_hook(before), w.register_forward_hook(after)]
        with torch.no_grad():
            model(**_ids(tok))
        for hd in handles:
            hd.remove()
    return wrapper_input["h"], captured["h"] - wrapper_input["h"]


def test_preconditioned_direction_moves_along_B(trained):
    model, tok, field, _, _ = trained
    h, delta = _moved(model, tok, svf.steer(model, field, alpha=3.0, layers=[1], direction="preconditioned"))
    f = field.fold(1, "preconditioned")
    want = h.clone()
    field_update_(want, f.A[None], f.c[None], f.w2[None], f.b2.reshape(1), 3.0, B=f.B[None],
                  eps=field.scorer.config.eps)
    assert torch.allclose(h + delta, want, atol=1e-5)
    _, plain = _moved(model, tok, svf.steer(model, field, alpha=3.0, layers=[1]))
    cos = torch.nn.functional.cosine_similarity(delta, plain, dim=-1)
    assert (cos < 0.999).all()  # a different direction, the same length
    assert torch.allclose(delta.norm(dim=-1), torch.full((2,), 3.0), atol=1e-4)


@pytest.mark.parametrize("sign", [1, -1])
def test_closed_loop_stops_at_the_target_on_the_side_steered_toward(trained, sign):
    """A position whose score already gives the steered-toward side probability ``target`` is
    not moved; one far from it moves by the full alpha; between them the push fades (band 1)."""
    model, tok, trained_field, _, _ = trained
    field = copy.deepcopy(trained_field)
    h, _ = _moved(model, tok, svf.steer(model, field, alpha=0.0, layers=[1]))

    def scores() -> torch.Tensor:
        f = field.fold(1)
        return field_update_(h.clone(), f.A[None], f.c[None], f.w2[None], f.b2.reshape(1), 0.0,
                             eps=field.scorer.config.eps)[:, 0]

    # shift the score so that, on the steered side, the two rows sit at 1 and above it, then
    # put the target between them: one row has reached it, the other has not
    side = sign * scores()
    with torch.no_grad():
        field.scorer.b2 += sign * (1.0 - float(side.min()))
    side = sign * scores()
    lo, hi = side.min(), side.max()
    assert abs(float(lo) - 1.0) < 1e-4 and hi - lo > 1e-3
    t = float((lo + hi) / 2)
    p = 1 / (1 + math.exp(-t))
    _, delta = _moved(model, tok, svf.steer(model, field, strength=sign * 0.5, layers=[1], target=p))
    reached = side >= target_score(p)
    assert torch.equal(delta[reached], torch.zeros_like(delta[reached]))
    alpha = 0.5 * field.robust_norm(1)  # the default unit of a trained field
    gate = ((target_score(p) - side[~reached]).clamp(0, 1))
    assert torch.allclose(delta[~reached].norm(dim=-1), alpha * gate, rtol=1e-4)


def test_robust_unit_sets_alpha_from_the_robust_norm(trained):
    model, tok, field, _, _ = trained
    _, delta = _moved(model, tok, svf.steer(model, field, strength=0.2, layers=[2], unit="robust"))
    assert torch.allclose(delta.norm(dim=-1), torch.full((2,), 0.2 * field.robust_norm(2)), rtol=1e-4)
    _, delta = _moved(model, tok, svf.steer(model, field, strength=0.2, layers=[2], unit="mean_norm"))
    assert torch.allclose(delta.norm(dim=-1), torch.full((2,), 0.2 * field.mean_norm(2)), rtol=1e-4)


def test_field_defaults_are_what_steer_uses(trained):
    model, tok, field, _, _ = trained
    _, explicit = _moved(model, tok, svf.steer(model, field, alpha=2.0, layers=[1], direction="preconditioned",
                                               target=0.7))
    field.default_direction, field.default_target = "preconditioned", 0.7
    try:
        _, default = _moved(model, tok, svf.steer(model, field, alpha=2.0, layers=[1]))
    finally:
        field.default_direction, field.default_target = "gradient", None
    assert torch.equal(explicit, default)


def test_batch_rows_equal_steer_with_the_same_options(trained):
    model, tok, field, _, _ = trained
    other = random_field(model, layers=LAYERS, seed=3, r=8, de=3, m=12)
    other.covariances = torch.eye(8).repeat(2, 1, 1)
    other.robust_norms = other.mean_norms * 0.5
    enc = _ids(tok, ["the weather today", "a movie", "it was"])
    kw = {"layers": [1, 2], "direction": "preconditioned", "target": 0.75, "unit": "robust"}
    batch = svf.steer_requests(model, {"a": field, "b": other}, **kw)
    with torch.no_grad(), batch:
        batch.set_requests(["a", "b", None], [0.4, -0.3, 0.0])
        got = model(**enc).logits[:, -1]
    for row, (f, s) in enumerate([(field, 0.4), (other, -0.3)]):
        with torch.no_grad(), svf.steer(model, f, strength=s, **kw):
            want = model(**enc).logits[:, -1]
        assert torch.allclose(got[row], want[row], atol=1e-4), row
    with torch.no_grad():
        plain = model(**enc).logits[:, -1]
    assert torch.allclose(got[2], plain[2], atol=1e-5)


@pytest.mark.parametrize("kw, message", [
    ({"direction": "sideways"}, "direction must be one of"),
    ({"target": 1.0}, r"target must be None or a probability in \(0.5, 1\)"),
    ({"target": 0.3}, r"target must be None or a probability in \(0.5, 1\)"),
    ({"target": True}, "target must be None or a probability"),
    ({"unit": "median"}, "unit must be None or one of"),
])
def test_bad_options_name_the_problem(trained, kw, message):
    model, _, field, _, _ = trained
    with pytest.raises(SVFArgumentError, match=message):
        svf.steer(model, field, strength=0.1, **kw)
    with pytest.raises(SVFArgumentError, match=message):
        svf.steer_requests(model, {"a": field}, **kw)


def test_fields_without_the_statistics_say_what_is_missing(trained):
    model, _, _, _, _ = trained
    bare = random_field(model, layers=LAYERS)
    with pytest.raises(SVFArgumentError, match="has no covariances"):
        svf.steer(model, bare, strength=0.1, direction="preconditioned")
    with pytest.raises(SVFArgumentError, match="has no robust norms"):
        svf.steer(model, bare, strength=0.1, unit="robust")
    svf.steer(model, bare, strength=0.1)  # the gradient and the mean norm need neither
