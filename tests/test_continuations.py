"""Sampled continuations: common random numbers across calls, cut at end of sequence, and
their token NLL against a direct unpadded computation."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import random_field, tiny_model

from svf.eval.continuations import perplexity, sample, token_nll
from svf.steering import steer

PROMPTS = ["hi", "tell me a story", "ok?"]


@pytest.fixture
def llama(char_tok):
    return tiny_model("llama", vocab_size=len(char_tok)), char_tok


def test_same_seed_same_samples_and_layout(llama):
    model, tok = llama
    a = sample(model, tok, PROMPTS, samples=2, max_new_tokens=7, seed=3, batch_size=4)
    b = sample(model, tok, PROMPTS, samples=2, max_new_tokens=7, seed=3, batch_size=4)
    c = sample(model, tok, PROMPTS, samples=2, max_new_tokens=7, seed=4, batch_size=4)
    assert a.tokens == b.tokens and a.tokens != c.tokens
    assert len(a.tokens) == 6 and a.n_prompts == 3 and all(len(t) <= 7 for t in a.tokens)
    assert a.texts == tok.batch_decode(a.tokens, skip_special_tokens=True)
    # rows are prompt-major: rows 2p and 2p+1 share prompt p's ids
    assert torch.equal(a.prompt_ids[0], a.prompt_ids[1]) and not torch.equal(a.prompt_ids[1], a.prompt_ids[2])


def test_min_new_tokens_and_end_of_sequence_cut(llama):
    model, tok = llama
    model.generation_config.eos_token_id = tok.eos_token_id
    long = sample(model, tok, PROMPTS, samples=1, max_new_tokens=9, min_new_tokens=9)
    assert all(len(t) == 9 and tok.eos_token_id not in t for t in long.tokens)
    # make end of sequence near-certain after the first token: every row stops at once
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = 50 * model.model.norm.weight.sign()
    short = sample(model, tok, PROMPTS, samples=1, max_new_tokens=9)
    assert all(len(t) <= 1 for t in short.tokens)


def test_token_nll_equals_direct(llama):
    model, tok = llama
    cont = sample(model, tok, PROMPTS, samples=2, max_new_tokens=6, seed=1)
    got = token_nll(model, cont, batch_size=4)
    for row, (nll, gen) in enumerate(zip(got, cont.tokens)):
        prompt = cont.prompt_ids[row][cont.prompt_mask[row].bool()].tolist()
        with torch.no_grad():
            lp = model(input_ids=torch.tensor([prompt + gen])).logits[0].float().log_softmax(-1)
        want = torch.stack([-lp[len(prompt) - 1 + k, t] for k, t in enumerate(gen)])
        torch.testing.assert_close(nll, want, atol=2e-5, rtol=1e-5)
    assert perplexity(got[0]) == pytest.approx(math.exp(float(got[0].mean())))
    assert math.isnan(perplexity(torch.zeros(0)))


def test_steering_changes_samples_and_detaches(llama):
    model, tok = llama
    base = sample(model, tok, PROMPTS, samples=2, max_new_tokens=8)
    with steer(model, random_field(model), strength=3.0):
        steered = sample(model, tok, PROMPTS, samples=2, max_new_tokens=8)
    assert steered.tokens != base.tokens
    assert sample(model, tok, PROMPTS, samples=2, max_new_tokens=8).tokens == base.tokens


def test_rejects_bad_arguments(llama):
    model, tok = llama
    with pytest.raises(ValueError, match="no prompts"):
        sample(model, tok, [])
    with pytest.raises(ValueError, match="samples"):
        sample(model, tok, PROMPTS, samples=0)
