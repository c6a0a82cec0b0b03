"""Scorer training: separable synthetic data, the linear baseline, activation extraction."""

import random

import torch
from helpers import tiny_model

from svf.activations import last_token_activations
from svf.data import ContrastivePair
from svf.training import (
    Features,
    TrainConfig,
    linear_baseline,
    scorer_accuracy,
    train_field,
    train_scorer,
)


def _synthetic(n, L=3, d=32, seed=0):
    """Two classes separated along a random direction, plus a per-layer offset and noise."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    offsets = torch.randn(L, d, generator=g) * 3 + 5

    def draw(sign):
        noise = torch.randn(n, L, d, generator=g)
        return offsets + noise + sign * 2.0 * direction

    return Features(draw(+1), draw(-1))


def _split(feats, n_first):
    return (Features(feats.pos[:n_first], feats.neg[:n_first]),
            Features(feats.pos[n_first:], feats.neg[n_first:]))


def test_training_separates_a_separable_set():
    tr, va = _split(_synthetic(300, seed=0), 200)
    scorer, history, best = train_scorer(tr, va, [4, 5, 6], TrainConfig(r=16, m=16, seed=0, positions="last"), progress=False)
    accs = scorer_accuracy(scorer, va)
    assert min(accs) > 0.95, accs
    assert history[best]["val_loss"] == min(h["val_loss"] for h in history)  # best checkpoint kept
    assert history[best]["val_loss"] < history[0]["val_loss"]


def test_training_is_reproducible_with_a_seed():
    tr, va = _split(_synthetic(90, seed=1), 60)
    cfg = TrainConfig(r=8, m=8, seed=3, max_epochs=3, positions="last")
    a, _, _ = train_scorer(tr, va, [0, 1, 2], cfg, progress=False)
    b, _, _ = train_scorer(tr, va, [0, 1, 2], cfg, progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_linear_baseline_threshold_and_direction():
    tr, te = _split(_synthetic(200, seed=3), 100)
    out = linear_baseline(tr, te)
    for layer, (acc, direction) in enumerate(out):
        want = tr.pos[:, layer].mean(0) - tr.neg[:, layer].mean(0)
        assert torch.allclose(direction, want)
        assert acc > 0.9
    # an uninformative layer gives chance-level accuracy
    noise = Features(torch.randn(200, 1, 8), torch.randn(200, 1, 8))
    acc, _ = linear_baseline(noise, Features(torch.randn(200, 1, 8), torch.randn(200, 1, 8)))[0]
    assert 0.35 < acc < 0.65


def test_last_token_activations_are_padding_aware(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    texts = ["a short one", "a much much longer text than the first", "mid length text"]
    batched = last_token_activations(model, char_tok, texts, [1, 3], batch_size=3, progress=False)
    for i, text in enumerate(texts):
        alone = last_token_activations(model, char_tok, [text], [1, 3], batch_size=1, progress=False)
        assert torch.allclose(batched[i], alone[0], atol=1e-5)
    # equals the layer outputs of a plain forward pass at the last token
    enc = char_tok([texts[0]], return_tensors="pt")
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    assert torch.allclose(batched[0, 0], hs[2][0, -1], atol=1e-5)


def test_texts_over_max_length_keep_their_own_last_tokens(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    long = "the start is cut away but the end stays: " * 3 + "final words"
    assert len(long) > 40 and char_tok.truncation_side == "right"
    got = last_token_activations(model, char_tok, [long, "short"], [1, 3], max_length=16,
                                 progress=False)
    tail = last_token_activations(model, char_tok, [long[-16:]], [1, 3], progress=False)
    assert torch.allclose(got[0], tail[0], atol=1e-5)
    assert char_tok.truncation_side == "right"  # the tokenizer's setting comes back


def test_caa_is_the_mean_difference_over_train_and_validation(char_tok):
    model = tiny_model("llama", vocab_size=len(char_tok))
    words = ["sun", "rain", "cake", "road", "song", "tree", "game", "lamp", "boat", "milk"]
    pairs = [ContrastivePair(f"a lovely {w} {i}", f"an awful {w} {i}")
             for i, w in enumerate(words * 5)]
    config = TrainConfig(r=8, de=3, m=12, max_epochs=2, seed=4)
    field, report = train_field(model, char_tok, pairs, concept="c", train_layers=[1, 2],
                                config=config, progress=False)
    # every pair but the test split's, found from the shuffle and the sizes the report gives
    order = list(range(len(pairs)))
    random.Random(config.seed).shuffle(order)
    fit = [pairs[i] for i in order[: report.n_train + report.n_val]]
    assert report.n_val > 0 and report.n_test > 0
    pos = last_token_activations(model, char_tok, [p.positive for p in fit], [1, 2], progress=False)
    neg = last_token_activations(model, char_tok, [p.negative for p in fit], [1, 2], progress=False)
    want = pos.mean(0) - neg.mean(0)
    train_only = pos[: report.n_train].mean(0) - neg[: report.n_train].mean(0)
    error, gap = (field.caa - want).abs().max(), (train_only - want).abs().max()
    assert error < 1e-6 and gap > 1e-5  # equal to the train + val mean, unlike the train-only one
