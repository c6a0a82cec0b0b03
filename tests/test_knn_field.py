"""KNN steering baseline: the update against a plain per-row computation, scores, chunking,
construction errors, and steering a tiny random Llama end to end."""

import pytest
import torch
from helpers import tiny_model

import svf.eval.knn_field as knn_module
from svf.activations import last_token_activations
from svf.eval.knn_field import KNNField, knn_fields
from svf.hf import decoder_layers
from svf.steering import Steering
from svf_kernels import FusedSteeringField, RowField, SVFArgumentError

D = 37  # odd on purpose


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits (so NaN rows compare equal to themselves)."""
    as_int = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
    return t.contiguous().view(as_int[t.dtype])


def _reference(rows: torch.Tensor, bank: torch.Tensor, k: int, alpha):
    """Plain per-row KNN steering: (new rows in the rows' dtype, scores [n])."""
    bank = bank.float()
    K = min(k, bank.shape[0])
    out = rows.clone()
    scores = torch.full((rows.shape[0],), float("nan"))
    for i in range(rows.shape[0]):
        h = rows[i].float()
        if not torch.isfinite(h).all():
            continue
        dist = torch.cdist(h[None], bank, compute_mode="donot_use_mm_for_euclid_dist")[0]
        near, order = dist.sort()
        scores[i] = -near[:K].mean()
        direction = bank[order[:K]].mean(0) - h
        norm = direction.norm()
        a = float(alpha[i]) if isinstance(alpha, torch.Tensor) else float(alpha)
        if norm == 0 or a == 0:
            continue
        out[i] = (h + a * direction / norm).to(rows.dtype)
    return out, scores


def _check_rows(got: torch.Tensor, want: torch.Tensor) -> None:
    if got.dtype == torch.float32:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, equal_nan=True)
    else:  # both round the same float32 value: at most one bf16 ulp apart, nearly all equal
        torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=1e-6, equal_nan=True)
        assert (_bits(got) == _bits(want)).float().mean() > 0.95


def _data(n=9, m=50, d=D, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(m, d, generator=g) + 3.0  # off the origin: the target class
    rows = torch.randn(n, d, generator=g) * 2.0
    return bank, rows


# ---- (a) the update against the plain computation -----------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("k", [1, 5, 64])  # 64 > M = 50: all of the bank
def test_update_matches_plain_computation(dtype, k):
    bank, rows = _data()
    rows = rows.to(dtype)
    field = KNNField(bank, k=k)
    assert isinstance(field, RowField) and field.hidden_size == D and field.neighbours == min(k, 50)
    want, want_scores = _reference(rows, bank, k, 1.5)
    got = rows.clone()
    scores = field.apply_(got, 1.5)
    _check_rows(got, want)
    assert scores.shape == (9, 1) and scores.dtype == torch.float32
    torch.testing.assert_close(scores[:, 0], want_scores, rtol=1e-5, atol=1e-5)


def test_displacement_is_alpha_towards_the_centroid():
    bank, rows = _data()
    field = KNNField(bank, k=5)
    got = rows.clone()
    field.apply_(got, 0.8)
    delta = got - rows
    torch.testing.assert_close(delta.norm(dim=-1), torch.full((9,), 0.8), rtol=1e-5, atol=1e-5)
    for i in range(9):  # towards, not away from, the neighbours' centroid
        near = torch.cdist(rows[i : i + 1], bank)[0].argsort()[:5]
        to_centroid = bank[near].mean(0) - rows[i]
        cos = torch.nn.functional.cosine_similarity(delta[i], to_centroid, dim=0)
        assert cos > 1 - 1e-5


def test_single_bank_entry_moves_straight_to_it():
    target = torch.randn(1, D)
    rows = torch.randn(4, D)
    got = rows.clone()
    KNNField(target, k=3).apply_(got, 0.5)
    before = (rows - target).norm(dim=-1)
    after = (got - target).norm(dim=-1)
    torch.testing.assert_close(after, before - 0.5, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_per_row_alpha_zero_alpha_and_non_finite_rows(dtype):
    bank, rows = _data(n=7)
    rows = rows.to(dtype)
    rows[2, 5] = float("nan")
    rows[4, 0] = float("inf")
    rows[6, 3] = -0.0  # a negative zero survives a zero strength
    alpha = torch.tensor([0.5, 0.0, 2.0, -1.0, 1.0, 3.0, 0.0])
    field = KNNField(bank, k=4)
    want, want_scores = _reference(rows, bank, 4, alpha)
    got = rows.clone()
    scores = field.apply_(got, alpha)
    _check_rows(got, want)
    for i in (1, 2, 4, 6):  # zero strength or non-finite: bit-identical
        assert torch.equal(_bits(got[i]), _bits(rows[i])), i
    for i in (0, 3, 5):
        assert not torch.equal(got[i], rows[i])
    assert torch.isnan(scores[[2, 4], 0]).all() and torch.isfinite(scores[[0, 1, 3, 5, 6], 0]).all()
    torch.testing.assert_close(scores[:, 0], want_scores, rtol=1e-5, atol=1e-5, equal_nan=True)
    # a float strength of zero also leaves everything bit-identical, scores still come back
    again = rows.clone()
    torch.testing.assert_close(field.apply_(again, 0.0), scores, equal_nan=True)
    assert torch.equal(_bits(again), _bits(rows))


def test_row_at_its_centroid_is_left_bit_identical():
    p, q = torch.randn(D), torch.randn(D) + 10
    bank = torch.stack([p, p, p, q])
    rows = torch.stack([p, torch.randn(D)])
    got = rows.clone()
    scores = KNNField(bank, k=3).apply_(got, 1.0)
    assert torch.equal(_bits(got[0]), _bits(rows[0])) and scores[0, 0] == 0
    assert not torch.equal(got[1], rows[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_row_view(dtype):
    bank, _ = _data()
    # seeded, not the global RNG: the rows must not depend on the tests run before (a draw with a
    # near tie between two neighbours' distances can pick different neighbours in bf16)
    x = torch.randn(3, 5, D, generator=torch.Generator().manual_seed(7)).to(dtype)
    original = x.clone()
    view = x[:, -1]
    assert not view.is_contiguous()
    want, want_scores = _reference(view.clone(), bank, 6, 1.2)
    scores = KNNField(bank, k=6).apply_(view, 1.2)
    _check_rows(x[:, -1], want)
    assert torch.equal(x[:, :-1], original[:, :-1])
    torch.testing.assert_close(scores[:, 0], want_scores, rtol=1e-5, atol=1e-5)


def test_bank_far_from_the_origin_keeps_neighbours_exact():
    """A large common component (as in real residual streams) must not reorder neighbours."""
    bank, rows = _data(n=6, m=40)
    offset = torch.zeros(D)
    offset[:3] = 3e4  # |h|^2 ~ 3e9: an uncentred |x|^2 - 2 x.b + |b|^2 is off by ~100s
    bank, rows = bank + offset, rows + offset
    want, want_scores = _reference(rows, bank, 3, 0.7)
    got = rows.clone()
    scores = KNNField(bank, k=3).apply_(got, 0.7)
    torch.testing.assert_close(got, want, rtol=0, atol=5e-3)  # float32 ulp at 3e4: 2e-3
    torch.testing.assert_close(scores[:, 0], want_scores, rtol=1e-4, atol=1e-4)


# ---- (b) scores -----------------------------------------------------------------------


def test_scores_are_minus_mean_neighbour_distance():
    bank = torch.randn(30, D) + 5.0
    near = bank[:3].mean(0, keepdim=True) + 0.01 * torch.randn(1, D)
    far = -5.0 + torch.randn(1, D)
    rows = torch.cat([near, far])
    field = KNNField(bank, k=3)
    scores = field.apply_(rows.clone(), 0.0)[:, 0]
    for i in range(2):
        dist = ((bank - rows[i]) ** 2).sum(-1).sqrt().sort().values[:3]
        torch.testing.assert_close(scores[i], -dist.mean(), rtol=1e-5, atol=1e-5)
    assert scores[0] > scores[1]  # closer to the target class scores higher
    assert field.apply_(torch.empty(0, D), 1.0).shape == (0, 1)


# ---- (c) chunking ---------------------------------------------------------------------


def test_chunking_gives_the_same_result(monkeypatch):
    bank, rows = _data(n=11, m=60)
    rows[3, 1] = float("nan")
    alpha = torch.linspace(-1, 2, 11)
    ref = rows.clone()
    ref_scores = KNNField(bank, k=7).apply_(ref, alpha)
    assert KNNField(bank, k=7)._chunk() >= 11  # the default is one chunk here
    for chunk in (1, 2, 4):
        got = rows.clone()
        scores = KNNField(bank, k=7, chunk_rows=chunk).apply_(got, alpha)
        assert torch.equal(_bits(got), _bits(ref)), chunk
        assert torch.equal(_bits(scores), _bits(ref_scores)), chunk
    monkeypatch.setattr(knn_module, "CHUNK_BYTES", 1)  # the byte budget: one row at a time
    small = KNNField(bank, k=7)
    assert small._chunk() == 1
    got = rows.clone()
    assert torch.equal(_bits(small.apply_(got, alpha)), _bits(ref_scores))
    assert torch.equal(_bits(got), _bits(ref))


def test_default_chunk_stays_within_the_budget():
    field = KNNField(torch.randn(2000, 512), k=64)
    c = field._chunk()
    assert 1 <= c and c * 4 * (2000 + 2 * 64 * 512) <= knn_module.CHUNK_BYTES


# ---- (d) errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bank, k, match",
    [
        (torch.randn(D), 4, "2-D"),
        (torch.randn(2, 3, D), 4, "2-D"),
        (torch.empty(0, D), 4, "M >= 1"),
        (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), 4, "non-finite.*rows \\[0\\]"),
        (torch.tensor([[1.0, 2.0], [float("inf"), 1.0]]), 4, "non-finite.*rows \\[1\\]"),
        (torch.randn(5, D), 0, "k must be"),
        (torch.randn(5, D), -3, "k must be"),
        (torch.randn(5, D), 2.5, "k must be"),
        (torch.randn(5, D), True, "k must be"),
        ([[1.0, 2.0]], 4, "bank must be a tensor"),
    ],
)
def test_construction_errors(bank, k, match):
    with pytest.raises(SVFArgumentError, match=match):
        KNNField(bank, k=k)


def test_call_errors():
    field = KNNField(torch.randn(5, D), k=2)
    with pytest.raises(SVFArgumentError, match="chunk_rows"):
        KNNField(torch.randn(5, D), chunk_rows=0)
    with pytest.raises(SVFArgumentError, match=f"rows must be \\[n, {D}\\]"):
        field.apply_(torch.randn(3, D + 1), 1.0)
    with pytest.raises(SVFArgumentError, match="one strength per row"):
        field.apply_(torch.randn(3, D), torch.ones(2))


def test_bank_is_a_float32_buffer_and_reloads():
    bank = torch.randn(6, D, dtype=torch.float64)
    field = KNNField(bank, k=2)
    assert field.bank.dtype == torch.float32 and torch.equal(field.bank, bank.float())
    assert list(field.state_dict()) == ["bank"]
    other = KNNField(torch.randn(6, D) + 100.0, k=2)
    other.load_state_dict(field.state_dict())  # the derived (centred) bank follows the load
    rows = torch.randn(4, D)
    a, b = rows.clone(), rows.clone()
    torch.testing.assert_close(other.apply_(a, 1.0), field.apply_(b, 1.0))
    assert torch.equal(a, b)


# ---- (e) end to end on a tiny random Llama ----------------------------------------------

TEXTS = ["I love this, it is great", "what a wonderful day", "so happy for you",
         "this is lovely", "a delightful surprise", "thank you, great work"]
PROMPTS = ["the weather today", "a movie", "my friend said that it was"]


class _Moves:
    """Per forward pass: how each steered layer's output differed from the wrapped layer's."""

    def __init__(self, model, layer):
        wrapper = decoder_layers(model)[layer]
        assert isinstance(wrapper, FusedSteeringField)
        self.raw, self.calls = None, []
        self.handles = [wrapper.layer.register_forward_hook(self._before),
                        wrapper.register_forward_hook(self._after)]

    @staticmethod
    def _hidden(out):
        return out[0] if isinstance(out, tuple) else out

    def _before(self, mod, args, out):
        self.raw = self._hidden(out).clone()

    def _after(self, mod, args, out):
        self.calls.append((self.raw, self._hidden(out) - self.raw))


@pytest.fixture(scope="module")
def llama():
    from helpers import char_tokenizer

    tok = char_tokenizer()
    return tiny_model("llama", vocab_size=len(tok)), tok


def test_knn_fields_end_to_end(llama):
    model, tok = llama
    layers, alphas = [1, 2], {1: 0.7, 2: 1.3}
    fields = knn_fields(model, tok, TEXTS, layers, k=4, batch_size=4)
    assert sorted(fields) == layers
    acts = last_token_activations(model, tok, TEXTS, layers, batch_size=4, progress=False)
    for j, layer in enumerate(layers):  # the training code's convention, exactly
        assert torch.equal(fields[layer].bank, acts[:, j]) and fields[layer].neighbours == 4
    enc = tok(PROMPTS, return_tensors="pt", padding=True)  # left padding
    assert (enc["attention_mask"][:, 0] == 0).any()
    with torch.no_grad():
        before = model(**enc).logits
        plain = model.generate(**enc, max_new_tokens=4, do_sample=False)
    n_new = 4
    with Steering(model, fields, alphas) as s, torch.no_grad():
        moves = {layer: _Moves(model, layer) for layer in layers}
        steered = model(**enc).logits
        out = model.generate(**enc, max_new_tokens=n_new, do_sample=False)
        assert s.attached
        for m in moves.values():  # the inner hook sits on the original layer: take it off
            for h in m.handles:
                h.remove()
    assert out.shape == plain.shape
    assert not torch.equal(steered, before)
    for layer in layers:
        calls = moves[layer].calls
        assert len(calls) == 1 + n_new  # one forward, then the generation's prompt pass + 3 steps
        for raw, delta in calls:
            moved = delta.norm(dim=-1)  # [B, T]: only the last position moves, by exactly alpha
            torch.testing.assert_close(moved[:, -1], torch.full((3,), alphas[layer]), rtol=1e-4, atol=1e-5)
            assert (moved[:, :-1] == 0).all()
        # ... towards the neighbours' centroid, as the plain computation says
        raw, delta = calls[0]
        want, _ = _reference(raw[:, -1], fields[layer].bank, 4, alphas[layer])
        torch.testing.assert_close(delta[:, -1], want - raw[:, -1], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        after = model(**enc).logits
    assert torch.equal(after, before)  # detaching restores the model bit for bit
    assert not any(isinstance(m, FusedSteeringField) for m in decoder_layers(model))
    assert not model.model._forward_pre_hooks and not any(m._forward_hooks for m in model.modules())


def test_knn_fields_errors(llama):
    model, tok = llama
    with pytest.raises(SVFArgumentError, match="positive_texts is empty"):
        knn_fields(model, tok, [], [1])
    with pytest.raises(SVFArgumentError, match="duplicates"):
        knn_fields(model, tok, TEXTS, [1, 1])
    with pytest.raises(SVFArgumentError, match="out of range"):
        knn_fields(model, tok, TEXTS, [7])
    with pytest.raises(SVFArgumentError, match="k must be"):
        knn_fields(model, tok, TEXTS, [1], k=0)
