"""The MWE A/B protocol (svf.eval.evaluate_mwe) on a tiny random model and synthetic items."""

import math

import pytest
import torch
from helpers import random_field, tiny_model

import svf.eval.evaluate_mwe as em
from svf.data import _answer_stub, render_mwe
from svf.eval.evaluate_mwe import ab_gaps, run_mwe
from svf.steering import steer
from svf.training import TrainConfig


def _items(n: int) -> list[dict]:
    out = []
    for i in range(n):
        letters = ("(A)", "(B)") if i % 2 == 0 else ("(B)", "(A)")
        out.append({"question": f"Q{i}: pick one{' please' * (i % 3)}\n (A) yes\n (B) no",
                    "answer_matching_behavior": letters[0], "answer_not_matching_behavior": letters[1]})
    return out


def _direct(model, tok, items) -> torch.Tensor:
    """One item at a time, no padding: the logit difference of the two answer letters."""
    out = []
    with torch.no_grad():
        for it in items:
            m = tok(render_mwe(it["question"], _answer_stub(it["answer_matching_behavior"]), tok),
                    add_special_tokens=False).input_ids
            o = tok(render_mwe(it["question"], _answer_stub(it["answer_not_matching_behavior"]), tok),
                    add_special_tokens=False).input_ids
            assert len(m) == len(o) and m[:-1] == o[:-1] and m[-1] != o[-1]  # char tokenizer
            logits = model(input_ids=torch.tensor([m[:-1]])).logits[0, -1]
            out.append(float(logits[m[-1]] - logits[o[-1]]))
    return torch.tensor(out)


@pytest.fixture(scope="module")
def llama(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok), layers=4), char_tok


@pytest.mark.parametrize("batch_size", [1, 3])
def test_ab_gaps_match_unbatched(tiny, batch_size):
    model, tok = tiny
    items = _items(7)
    got = ab_gaps(model, tok, items, batch_size=batch_size)
    assert got.shape == (7,)
    torch.testing.assert_close(got, _direct(model, tok, items), atol=1e-4, rtol=1e-4)


def test_ab_gaps_under_steering(llama):
    model, tok = llama
    items = _items(5)
    plain = ab_gaps(model, tok, items, batch_size=3)
    with steer(model, random_field(model, steer_layers=(1, 2)), strength=2.0):
        steered = ab_gaps(model, tok, items, batch_size=3)
        direct = _direct(model, tok, items)
    assert (steered - plain).abs().max() > 1e-3
    torch.testing.assert_close(steered, direct, atol=1e-4, rtol=1e-4)


def test_ab_gaps_errors(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="no items"):
        ab_gaps(model, tok, [])
    same_start = {"question": "Q", "answer_matching_behavior": "Yes",
                  "answer_not_matching_behavior": "Yes!"}
    with pytest.raises(ValueError, match="shared prefix"):
        ab_gaps(model, tok, [same_start])


def test_run_mwe_end_to_end(llama, monkeypatch):
    model, tok = llama
    monkeypatch.setattr(em, "load_mwe", lambda behavior: _items(40))
    cfg = TrainConfig(r=8, de=3, m=12, max_epochs=2, patience=1, fractions=(0.6, 0.2, 0.2))
    rows = run_mwe(model, tok, ["synthetic"], train_layers=(0, 1, 2, 3), steer_layers=(1, 2),
                   sweep=(0.1, 0.5), train_config=cfg)
    assert [r["method"] for r in rows] == ["caa-1", "caa-multi", "svf-1", "svf-shared"]
    assert {r["layers"] for r in rows} == {"2", "1+2"}
    base = {r["base_accuracy"] for r in rows}
    assert len(base) == 1  # the unsteered test gaps are shared
    for r in rows:
        assert r["behavior"] == "synthetic" and r["n_test"] == 20
        assert r["total_strength"] in (0.1, 0.5)
        for k in ("base_accuracy", "steered_accuracy", "steerable_rate", "anti_steerable"):
            assert 0.0 <= r[k] <= 1.0, (k, r)
        for k in ("mean_shift", "mean_slope"):
            assert math.isfinite(r[k]), (k, r)


def test_run_mwe_errors(llama, monkeypatch):
    model, tok = llama
    kw = {"train_layers": (0, 1, 2, 3), "steer_layers": (1, 2)}
    monkeypatch.setattr(em, "load_mwe", lambda behavior: [])
    with pytest.raises(ValueError, match="no items"):
        run_mwe(model, tok, ["empty"], **kw)
    monkeypatch.setattr(em, "load_mwe", lambda behavior: _items(5))
    with pytest.raises(ValueError, match="too few"):
        run_mwe(model, tok, ["small"], **kw)
    with pytest.raises(ValueError, match="sweep"):
        run_mwe(model, tok, ["small"], sweep=(0.0,), **kw)
