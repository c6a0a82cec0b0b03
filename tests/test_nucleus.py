"""The nucleus warper keeps exactly the tokens transformers' temperature and top-p warpers keep,
and sampling through it draws what transformers' own sampling draws."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_model
from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

from svf.eval.continuations import sample
from svf.eval.nucleus import NucleusWarper
from svf.tokenization import encode_prompts, pad_id


def _transformers(scores: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    return TopPLogitsWarper(top_p)(None, TemperatureLogitsWarper(temperature)(None, scores))


@pytest.mark.parametrize("vocab", [1, 7, 300, 5003])
@pytest.mark.parametrize("spread", [0.3, 3.0, 30.0])  # flat (nucleus near the whole vocabulary) to peaked
@pytest.mark.parametrize(("temperature", "top_p"), [(0.7, 0.9), (1.0, 0.5), (1.3, 0.99), (0.7, 1.0)])
def test_keeps_the_tokens_transformers_keeps(vocab, spread, temperature, top_p):
    g = torch.Generator().manual_seed(vocab * 31 + int(spread * 10))
    # float64: both sides sum the same probabilities in different orders; in float64 that
    # cannot move a token across the threshold
    scores = torch.randn(6, vocab, generator=g, dtype=torch.float64) * spread
    scores[0, : vocab // 3] = -float("inf")  # tokens already masked (e.g. end of sequence too early)
    want = _transformers(scores, temperature, top_p)
    got = NucleusWarper(temperature, top_p, k=4)(None, scores)
    assert torch.equal(got.isinf(), want.isinf())
    torch.testing.assert_close(got[~got.isinf()], want[~want.isinf()], rtol=0, atol=0)


def test_sampling_draws_what_transformers_draws(char_tok):
    model, tok = tiny_model("llama", vocab_size=len(char_tok)), char_tok
    prompts = ["hi", "tell me a story", "ok?"]
    ours = sample(model, tok, prompts, samples=2, max_new_tokens=8, seed=2, batch_size=6)
    ids, mask = encode_prompts(tok, [p for p in prompts for _ in range(2)], None)
    torch.manual_seed(2 * 1_000_003)
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=True,
                         temperature=0.7, top_p=0.9, top_k=0, pad_token_id=pad_id(tok))
    theirs = out[:, ids.shape[1] :].tolist()
    assert [t[: len(o)] for t, o in zip(theirs, ours.tokens)] == ours.tokens
    assert sum(map(len, ours.tokens)) > 12  # the comparison covers real draws


@pytest.mark.parametrize(("args", "match"), [((0.0, 0.9), "temperature"), ((0.7, 0.0), "top_p"),
                                             ((0.7, 1.5), "top_p"), ((0.7, 0.9, 0), "k")])
def test_rejects_bad_settings(args, match):
    with pytest.raises(ValueError, match=match):
        NucleusWarper(*args)
