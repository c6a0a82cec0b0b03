"""Judges: VADER, and the embedding classifier's held-out accuracy on rt-polarity."""

from __future__ import annotations

import pytest
import torch

from svf.eval import judges


def test_vader_signs():
    good, bad = judges.vader_compound(["I love this, it is wonderful.", "I hate this, it is awful."])
    assert good > 0.5 and bad < -0.5


def test_logistic_fit_is_a_stationary_point():
    """At the returned weights the regularised loss's gradient vanishes (what L-BFGS promises)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, 5, generator=gen)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.5]) + 0.3 * torch.randn(300, generator=gen) > 0).long()
    w, b = judges.fit_logistic(x, y, l2=1e-2)
    w64 = w.double().requires_grad_(True)
    b64 = b.double().requires_grad_(True)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(x.double() @ w64 + b64, y.double())
    loss = loss + 1e-2 * w64.square().sum()
    gw, gb = torch.autograd.grad(loss, (w64, b64))
    assert gw.abs().max() < 1e-4 and gb.abs() < 1e-4
    assert ((x @ w + b > 0).long() == y).float().mean() > 0.9


def test_embedding_judge_heldout_accuracy_above_floor():
    """Trained on 2,000 rt-polarity sentences, scored on 600 others it never saw."""
    judge = judges.train_embedding_judge(n_train=2000, n_heldout=600, seed=1)
    print(f"embedding judge held-out accuracy (2000 train / 600 held out): {judge.heldout_accuracy:.3f}")
    assert judge.n_train == 2000 and judge.n_heldout == 600
    assert judge.heldout_accuracy >= 0.70
    good, bad = judge.score(["A warm, funny and moving film.", "A tedious, ugly and pointless film."])
    assert -1 <= bad < 0 < good <= 1


def test_embedding_judge_is_cached(tmp_path, monkeypatch):
    calls = []

    def fake_train():
        calls.append(1)
        return judges.EmbeddingJudge(torch.arange(384.0) / 384, torch.tensor(0.25), 0.8, 10, 5)

    monkeypatch.setattr(judges, "train_embedding_judge", fake_train)
    first = judges.load_embedding_judge(tmp_path)
    second = judges.load_embedding_judge(tmp_path)
    assert len(calls) == 1
    assert torch.equal(first.weight, second.weight) and float(second.bias) == 0.25
    assert second.heldout_accuracy == 0.8 and second.n_train == 10


def test_pair_judge_separates_formality_heldout_pairs():
    """A judge fitted on the formality pairs classifies the held-out pairs' texts well."""
    from svf.concepts import load_concept

    concept = load_concept("formality")
    judge = judges.train_pair_judge(concept.pairs, heldout_fraction=0.2)
    assert judge.n_heldout == 2 * round(0.2 * len(concept.pairs))
    assert judge.n_train + judge.n_heldout == 2 * len(concept.pairs)
    print(f"formality pair judge held-out accuracy {judge.heldout_accuracy:.3f} (n={judge.n_heldout})")
    assert judge.heldout_accuracy >= 0.85
    formal, casual = judge.score(["I would be grateful for your prompt reply.", "lol ya sure whatever dude"])
    assert formal > 0 > casual


def test_pair_judge_rejects_bad_fraction():
    with pytest.raises(ValueError, match="heldout_fraction"):
        judges.train_pair_judge([], heldout_fraction=1.0)
