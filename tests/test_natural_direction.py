"""The natural steering direction: the folded ``B = A @ M`` against an explicit float64 natural
gradient, the Fisher estimate against one context at a time, the choice of the damping, and a
field with the natural direction trained, saved (format 3), loaded, steered; older artifacts
load and corrupt natural matrices are refused."""

from __future__ import annotations

import copy
import json
import math

import pytest
import safetensors.torch as st
import torch
from helpers import random_field, tiny_model

import svf
from svf import artifacts
from svf.artifacts import ArtifactError
from svf.data import ContrastivePair
from svf.field_packing import field_table
from svf.fisher import (
    LAMBDAS,
    add_natural_direction,
    choose_lambda,
    direction_criterion,
    estimate_fisher,
    natural_matrix,
)
from svf.hf import decoder_layers, layer_output
from svf.scorer import ConceptScorer, ScorerConfig, rms_normalize
from svf.steering_field import SteeringField
from svf.training import TrainConfig, train_field
from svf_kernels import SVFArgumentError, available_backends, field_update_, gelu_tanh

PROMPTS = ["hello there", "how are you", "a b", "the sea is"]


def _scorer(d: int = 37, m: int = 11, seed: int = 0) -> ConceptScorer:
    """A scorer with random weights over training layers (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    scorer = ConceptScorer(ScorerConfig(d, (0, 1), r=8, de=3, m=m))
    with torch.no_grad():
        for p in scorer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return scorer.eval()


def _field(scorer: ConceptScorer) -> SteeringField:
    d, n = scorer.config.hidden_size, len(scorer.config.train_layers)
    return SteeringField(scorer=scorer, concept="c", model_name="tiny", num_layers=2, steer_layers=(0, 1),
                         mean_norms=torch.ones(n), caa=torch.randn(n, d))


def _fisher(d: int, n: int, seed: int) -> torch.Tensor:
    """A rank-deficient (``n < d``), strongly anisotropic PSD matrix in float64."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.logspace(-1.5, 1.5, d, dtype=torch.float64)
    return X.T @ X / n


def _hidden(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + 0.5


def _kernel_direction(folded, h: torch.Tensor, eps: float, dtype: torch.dtype, B: torch.Tensor | None):
    """The kernel's unit direction at the rows of ``h``: ``field_update_`` with alpha 1."""
    moved = h.to(dtype).clone()
    field_update_(moved, folded.A[None].to(dtype), folded.c[None].to(dtype), folded.w2[None].to(dtype),
                  folded.b2.reshape(1).to(dtype), 1.0, eps=eps, B=None if B is None else B[None].to(dtype))
    return (moved.double() - h.to(dtype).double())


def _grad_wrt_hn(scorer: ConceptScorer, layer: int, hn: torch.Tensor) -> torch.Tensor:
    """``∇_hn f`` by autograd through the scorer's formula (DESIGN.md §2) in float64."""
    s = copy.deepcopy(scorer).double()
    hn = hn.detach().clone().requires_grad_(True)
    gain, shift = s.film(torch.tensor([s.layer_position(layer)]))
    score = gelu_tanh((gain * (hn @ s.R.T) + shift) @ s.W1.T + s.b1) @ s.w2 + s.b2
    (grad,) = torch.autograd.grad(score.sum(), hn)
    return grad


# ---------------------------------------------------------------- the fold, through the kernels


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_folded_natural_B_is_the_damped_natural_gradient(backend, dtype, monkeypatch):
    """``B = A @ M`` run through the op moves along ``normalise(J_rms.T (F + lam mu I)^-1 ∇_hn f)``."""
    monkeypatch.setenv("SVF_BACKEND", backend)
    d, layer, lam = 37, 1, 0.05
    scorer = _scorer(d)
    if dtype == torch.float64:
        scorer = copy.deepcopy(scorer).double()
    F = _fisher(d, 20, seed=1)
    folded = scorer.fold(layer, natural=natural_matrix(F, lam))
    assert folded.B.dtype == scorer.R.dtype and folded.B.shape == (11, d)
    h = _hidden(16, d, seed=2)
    eps = scorer.config.eps

    # explicit: autograd for ∇_hn f, solve with the damped Fisher, the RMS norm's Jacobian
    # transpose by autograd (a vector-Jacobian product), then normalise
    hq = h.clone().requires_grad_(True)
    hn = rms_normalize(hq, eps)
    grad_hn = _grad_wrt_hn(scorer, layer, hn)
    mean_eig = torch.trace(F) / d
    nat = torch.linalg.solve(F + lam * mean_eig * torch.eye(d, dtype=torch.float64), grad_hn.T).T
    (v,) = torch.autograd.grad(hn, hq, grad_outputs=nat)
    want = v / v.norm(dim=-1, keepdim=True)

    got = _kernel_direction(folded, h, eps, dtype, folded.B)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert (got - want).abs().max() < tol, float((got - want).abs().max())
    plain = _kernel_direction(folded, h, eps, torch.float64, None)
    assert (plain - want).abs().max() > 0.1  # not the gradient's direction


def test_fold_refuses_a_matrix_of_the_wrong_size():
    with pytest.raises(SVFArgumentError, match=r"natural matrix must be \[37, 37\]"):
        _scorer(37).fold(0, natural=torch.eye(36))


# ------------------------------------------------------------------------- the Fisher estimate


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_fisher_estimate_equals_one_context_at_a_time(kind, char_tok):
    """The batched, left-padded estimate equals the mean of ``g gᵀ`` computed one context at a
    time on the unpadded sequence (same contexts, same drawn ``y``), with plain autograd."""
    model = tiny_model(kind, vocab_size=len(char_tok)).double()
    layers, d = [1, 3], model.config.hidden_size
    grads_before = [p.requires_grad for p in model.parameters()]
    rng_before = torch.get_rng_state()
    est = estimate_fisher(model, char_tok, PROMPTS, layers, samples=7, max_new_tokens=5, batch_size=3,
                          progress=False)
    assert [p.requires_grad for p in model.parameters()] == grads_before
    assert all(not block._forward_hooks for block in decoder_layers(model))  # no hook left
    assert torch.equal(torch.get_rng_state(), rng_before)  # the global RNG is left as it was
    assert est.fisher.shape == (2, d, d) and est.fisher.dtype == torch.float32
    assert est.hidden.shape == (7, 2, d) and est.samples == 7 and est.targets.shape == (7,)
    assert len({len(c) for c in est.contexts}) > 1  # rows of several lengths: padding in batches
    F = est.fisher.double()
    assert torch.equal(F, F.transpose(1, 2))
    eig = torch.linalg.eigvalsh(F)
    assert eig.min() >= -1e-6 * eig.max() and eig.max() > 0

    brute = torch.zeros(2, d, d, dtype=torch.float64)
    for i, (context, y) in enumerate(zip(est.contexts, est.targets.tolist())):
        ids = torch.tensor([context])
        for k, layer in enumerate(layers):
            delta = torch.zeros(d, dtype=torch.float64, requires_grad=True)
            seen = {}

            def perturb(module, args, out, delta=delta, seen=seen):
                hs = layer_output(out)
                seen["h"] = hs[0, -1].detach()
                last = torch.zeros(hs.shape[1], 1, dtype=hs.dtype)
                last[-1] = 1.0
                moved = hs + last * delta  # the last position only
                return (moved, *out[1:]) if isinstance(out, tuple) else moved

            handle = decoder_layers(model)[layer].register_forward_hook(perturb)
            try:
                logp = torch.log_softmax(model(input_ids=ids).logits[0, -1], -1)
                (g,) = torch.autograd.grad(logp[y], delta)
            finally:
                handle.remove()
            brute[k] += torch.outer(g, g)
            assert torch.allclose(est.hidden[i, k].double(), seen["h"], atol=1e-5)
    brute /= len(est.contexts)
    assert torch.allclose(F, brute, rtol=1e-5, atol=1e-6 * float(brute.abs().max()))


def test_fisher_is_reproducible_and_refuses_a_steered_model(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    a = estimate_fisher(model, char_tok, PROMPTS, [2], samples=5, max_new_tokens=4, seed=3, progress=False)
    b = estimate_fisher(model, char_tok, PROMPTS, [2], samples=5, max_new_tokens=4, seed=3, progress=False)
    assert a.contexts == b.contexts and torch.equal(a.fisher, b.fisher)
    field = random_field(model, layers=(1, 2))
    with svf.steer(model, field, alpha=1.0), pytest.raises(SVFArgumentError, match="detach the steering"):
        estimate_fisher(model, char_tok, PROMPTS, [2], samples=2, max_new_tokens=2, progress=False)
    with pytest.raises(SVFArgumentError, match="samples must be >= 1"):
        estimate_fisher(model, char_tok, PROMPTS, [2], samples=0)


# ---------------------------------------------------------------------------- the damping


def _criterion(scorer, layer, B, h, F) -> float:
    """The criterion written out: the kernel's unit directions ``u``, the score's gradient with
    respect to ``h`` by autograd, ``mean(∇f·u) / sqrt(mean(uᵀ F u))``."""
    s64 = copy.deepcopy(scorer).double()
    hq = h.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(s64.score_layer(hq, layer).sum(), hq)
    u = _kernel_direction(s64.fold(layer), h, scorer.config.eps, torch.float64,
                          None if B is None else B.double())
    return float((grad * u).sum(-1).mean() / ((u @ F) * u).sum(-1).mean().sqrt())


def test_choose_lambda_picks_the_best_of_the_grid_and_reports_every_criterion():
    d, layer = 37, 0
    field = _field(_scorer(d, seed=5))
    F, F_val, h = _fisher(d, 30, seed=6), _fisher(d, 30, seed=7), _hidden(40, d, seed=8)
    lam, table = choose_lambda(field, layer, F, F_val, h)
    assert table["lambdas"] == list(LAMBDAS) and len(table["natural"]) == len(LAMBDAS)
    for x, crit in zip(LAMBDAS, table["natural"]):
        B = field.scorer.fold(layer, natural=natural_matrix(F, x)).B
        assert math.isclose(crit, _criterion(field.scorer, layer, B, h, F_val), rel_tol=1e-6)
    assert math.isclose(table["gradient"], _criterion(field.scorer, layer, None, h, F_val), rel_tol=1e-6)
    assert lam in LAMBDAS and table["natural"][LAMBDAS.index(lam)] == max(table["natural"])
    assert len(set(table["natural"])) == len(LAMBDAS)  # a real choice, not a tie
    # measured on the Fisher it was estimated from, the strongest natural direction beats the
    # gradient per unit of KL
    _, same = choose_lambda(field, layer, F, F, h)
    assert max(same["natural"]) > same["gradient"]
    assert direction_criterion(field, layer, None, h, F) == pytest.approx(same["gradient"], rel=1e-12)


def test_choose_lambda_breaks_ties_toward_the_larger_lambda():
    d = 37
    field = _field(_scorer(d, seed=5))
    isotropic = torch.eye(d, dtype=torch.float64) * 3.0  # every lambda gives the gradient's direction
    lam, table = choose_lambda(field, 1, isotropic, isotropic, _hidden(10, d, seed=1), (0.5, 0.01, 2.0))
    assert lam == 2.0 and table["lambdas"] == [0.01, 0.5, 2.0]
    with pytest.raises(SVFArgumentError, match="lambdas must be"):
        choose_lambda(field, 1, isotropic, isotropic, _hidden(10, d, seed=1), (0.1, -1.0))


def test_huge_lambda_gives_the_gradient_direction():
    d, layer = 37, 1
    scorer = _scorer(d)
    F, h = _fisher(d, 20, seed=3), _hidden(12, d, seed=4)
    plain = _kernel_direction(scorer.fold(layer), h, scorer.config.eps, torch.float64, None)
    far = _kernel_direction(scorer.fold(layer), h, scorer.config.eps, torch.float64,
                            scorer.fold(layer, natural=natural_matrix(F, 1e12)).B.double())
    near = _kernel_direction(scorer.fold(layer), h, scorer.config.eps, torch.float64,
                             scorer.fold(layer, natural=natural_matrix(F, 1e-3)).B.double())
    assert (far - plain).abs().max() < 1e-6
    assert (near - plain).abs().max() > 0.1
    M = natural_matrix(F, 0.1)
    assert torch.allclose(M, M.T) and torch.linalg.eigvalsh(M).min() > 0
    assert torch.allclose(natural_matrix(torch.zeros(d, d), 4.0), torch.eye(d, dtype=torch.float64) / 4)


# ------------------------------------------------------------------- a field, end to end


@pytest.fixture(scope="module")
def trained(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    words = ["sun", "rain", "cake", "road", "song", "tree", "game", "lamp", "boat", "milk"]
    pairs = [ContrastivePair(f"a lovely {w} {i}", f"an awful {w} {i}") for i, w in enumerate(words * 5)]
    field, _ = train_field(model, char_tok, pairs, concept="c", train_layers=[1, 2],
                           config=TrainConfig(r=8, de=3, m=12, max_epochs=2, seed=4, fisher_samples=8),
                           progress=False)
    return model, char_tok, field


def test_training_adds_the_natural_direction(trained):
    model, _, field = trained
    nat = field.natural
    assert nat["layers"] == [1, 2] and field.natural_B.shape == (2, 12, model.config.hidden_size)
    assert nat["samples"] == 6 and nat["validation_samples"] == 2
    assert all(lam in LAMBDAS for lam in nat["lambdas"])
    table = nat["criterion"]
    assert table["lambdas"] == list(LAMBDAS) and len(table["natural"]) == 2 and len(table["gradient"]) == 2
    for k, lam in enumerate(nat["lambdas"]):  # the chosen lambda has the largest criterion
        assert table["natural"][k][LAMBDAS.index(lam)] == max(table["natural"][k])
    with pytest.raises(SVFArgumentError, match="fisher_samples must be 0"):
        TrainConfig(fisher_samples=1)
    with pytest.raises(SVFArgumentError, match="fisher_samples must be >= 0"):
        TrainConfig(fisher_samples=-2)


def _generate(model, tok, steering=None):
    prompts = ["the weather", "a movie"]
    if steering is None:
        return svf.generate(model, tok, prompts, max_new_tokens=8)
    with steering:
        return svf.generate(model, tok, prompts, max_new_tokens=8)


def test_saved_natural_field_loads_and_steers(trained, tmp_path):
    model, tok, field = trained
    file = field.save(tmp_path / "f")
    with st.safe_open(str(file), framework="pt") as f:
        assert json.loads(f.metadata()["svf"])["format_version"] == 3
        assert "natural_B" in set(f.keys())
    loaded = SteeringField.load(file, model)
    assert torch.equal(loaded.natural_B, field.natural_B) and loaded.natural == field.natural
    base = _generate(model, tok)
    natural = _generate(model, tok, svf.steer(model, loaded, alpha=8.0, direction="natural"))
    gradient = _generate(model, tok, svf.steer(model, loaded, alpha=8.0, direction="gradient"))
    assert natural != base and natural != gradient
    loaded.default_direction = "natural"
    again = SteeringField.load(loaded.save(tmp_path / "g"), model)
    assert again.default_direction == "natural"
    assert _generate(model, tok, svf.steer(model, again, alpha=8.0)) == natural
    # the folded matrix reaches the kernels: B = natural_B, A the scorer's own
    f = again.fold(2, "natural")
    assert torch.equal(f.B, field.natural_B[1]) and torch.equal(f.A, field.scorer.fold(2).A)
    table = field_table([[again], [again]], 2, directions=["natural", "gradient"])
    assert torch.equal(table.B[0, 0], field.natural_B[1]) and torch.equal(table.B[1, 0], f.A)


def _format_2(field: SteeringField, path):
    """``field`` written as a format-2 artifact (no natural matrices, no ``natural`` field)."""
    meta = field.metadata()
    del meta["natural"]
    meta["format_version"] = 2
    tensors = {k: v for k, v in field.tensors().items() if k != "natural_B"}
    path.mkdir(parents=True)
    st.save_file(tensors, str(path / "field.safetensors"), metadata={"svf": json.dumps(meta)})
    return path


def test_format_2_artifact_loads_without_the_natural_direction(trained, tmp_path):
    model, _, field = trained
    old = SteeringField.load(_format_2(field, tmp_path / "v2"), model)
    assert old.natural is None and old.natural_B is None
    assert old.covariances is not None and old.metadata()["format_version"] == 3
    with pytest.raises(SVFArgumentError, match=r"layer 1: field 'c' has no natural-direction matrices.*"
                                               r"fisher_samples"):
        svf.steer(model, old, alpha=1.0, direction="natural")
    svf.steer(model, old, alpha=1.0, direction="gradient")
    meta = field.metadata()
    meta["format_version"] = 2  # version 2 has no natural field
    raw = tmp_path / "raw2" / "field.safetensors"
    raw.parent.mkdir()
    st.save_file(field.tensors(), str(raw), metadata={"svf": json.dumps(meta)})
    with pytest.raises(ArtifactError, match="unexpected metadata field 'natural'"):
        SteeringField.load(raw)


def test_a_layer_without_a_natural_matrix_is_named(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    field = random_field(model, layers=(1, 2), r=8, de=3, m=12)
    info = add_natural_direction(field, model, char_tok, prompts=PROMPTS, layers=[1], samples=4,
                                 max_new_tokens=4, progress=False)
    assert info["layers"] == [1] and info["samples"] == 3 and info["validation_samples"] == 1
    assert field.natural_B.shape == (1, 12, model.config.hidden_size)
    svf.steer(model, field, alpha=1.0, layers=[1], direction="natural")
    with pytest.raises(SVFArgumentError, match=r"layer 2: field 'test' has them only at layers \[1\]"):
        svf.steer(model, field, alpha=1.0, layers=[1, 2], direction="natural")
    with pytest.raises(SVFArgumentError, match="natural_B must be a tensor of shape"):
        SteeringField(**{**field.__dict__, "natural_B": field.natural_B[:, :5]})


def _changed(field, change):
    """Copies of the field's tensors and metadata, changed."""
    tensors, meta = copy.deepcopy((field.tensors(), field.metadata()))
    change(tensors, meta)
    return tensors, meta


def _corrupt(field, path, change):
    tensors, meta = _changed(field, change)
    path.parent.mkdir(parents=True, exist_ok=True)
    st.save_file({k: v.contiguous() for k, v in tensors.items()}, str(path),
                 metadata={"svf": json.dumps(meta)})
    return path


def _nan(t, m):
    t["natural_B"][0, 3, 5] = math.nan


@pytest.mark.parametrize("change, problem", [
    (lambda t, m: t.update(natural_B=t["natural_B"][:, :-1]),
     "tensor 'natural_B' has shape (2, 11, 64), expected (2, 12, 64)"),
    (_nan, "tensor 'natural_B' contains NaN or Inf (1 of"),
    (lambda t, m: t.update(natural_B=t["natural_B"].double()), "tensor 'natural_B' has dtype F64"),
    (lambda t, m: m["natural"].update(layers=[1], lambdas=[0.1]),
     "tensor 'natural_B' has shape (2, 12, 64), expected (1, 12, 64)"),
    (lambda t, m: m["natural"].update(layers=[1, 3]), "'natural.layers' must be a subset of train_layers"),
    (lambda t, m: m["natural"].update(lambdas=[0.1]), "'natural.lambdas' must be a list of one number"),
    (lambda t, m: m["natural"].update(lambdas=[0.1, -1.0]), "'natural.lambdas[1]' must be a finite number > 0"),
    (lambda t, m: m["natural"].pop("samples"), "missing metadata field 'natural.samples'"),
    (lambda t, m: m.update(natural=None), "tensor 'natural_B' is there but metadata field 'natural' is missing"),
    (lambda t, m: t.pop("natural_B"), "metadata field 'natural' is there but the tensor 'natural_B' is missing"),
    (lambda t, m: (t.pop("natural_B"), m.update(natural=None, default_direction="natural")),
     "'default_direction' is 'natural' but the natural direction has no matrices at steering layers [1, 2]"),
])
def test_corrupt_natural_matrices_are_refused(trained, tmp_path, change, problem):
    _, _, field = trained
    path = _corrupt(field, tmp_path / "bad" / "field.safetensors", change)
    with pytest.raises(ArtifactError) as info:
        SteeringField.load(path)
    assert str(path) in str(info.value) and problem in str(info.value), str(info.value)
    tensors, meta = _changed(field, change)
    with pytest.raises(ArtifactError):  # saving refuses it too
        artifacts.save_field(tmp_path / "save", tensors, meta)
    assert not (tmp_path / "save").exists()
